"""imagerec.client against the running stack, beyond the documented examples
(tests/integration/test_client_docs.py): the blocking client's stream, and each error class
with the server's own status and code.
"""

from __future__ import annotations

import secrets
import threading

import pytest

from imagerec.client import AsyncClient, Client, KeyRejected, NotFound, Refused, WaitTimeout
from tests.conftest import photo_variants

pytestmark = pytest.mark.integration


def test_the_blocking_stream_yields_what_finishes_while_it_is_open(gateway) -> None:  # noqa: ANN001
    data = photo_variants(1, seed=secrets.randbits(48))[0]
    opened = threading.Event()
    with Client(gateway.base, gateway.api_key) as client:
        uploaded: dict = {}

        def upload_once_open() -> None:
            opened.wait(30)
            with Client(gateway.base, gateway.api_key) as other:
                uploaded.update(other.upload(data))

        thread = threading.Thread(target=upload_once_open)
        thread.start()
        seen: dict[str, dict] = {}
        for result in client.stream(on_connect=opened.set):  # the callback: client's thread
            seen[result["id"]] = result
            # The 202 reaches the thread ~100 ms before its result can; checking every id
            # seen so far covers the (theoretical) other order too.
            if uploaded.get("id") in seen:
                break
            assert len(seen) < 200, "our upload never came through the stream"
        thread.join()
        ours = seen[uploaded["id"]]
        assert ours["status"] == "done" and ours["labels"]


def test_errors_carry_the_servers_status_and_code(gateway) -> None:  # noqa: ANN001
    with Client(gateway.base, gateway.api_key) as client:
        with pytest.raises(Refused) as refused:
            client.upload(b"plain text, not an image", filename="notes.txt")
        assert (refused.value.status, refused.value.code) == (415, "unsupported_format")
        assert "allowed format" in refused.value.detail
        with pytest.raises(NotFound) as missing:
            client.get("01JD8Z6Q3V4W6S2M5N7P8R9T0A")
        assert missing.value.status == 404
        with pytest.raises(NotFound):  # unknown past the grace: not waited on for long
            client.wait("01JD8Z6Q3V4W6S2M5N7P8R9T0A", timeout=30, not_found_grace=1)
        form = client.create_upload("image/png", size=10)
        with pytest.raises(WaitTimeout):  # issued, never uploaded: 404 until the timeout
            client.wait(form["id"], timeout=3, not_found_grace=60)
        with pytest.raises(Refused) as bad:
            client.create_upload("image/svg+xml")
        assert (bad.value.status, bad.value.code) == (400, "bad_parameter")
        with pytest.raises(KeyRejected) as admin_only:
            client.reclassify_job("0123456789abcdef")
        assert admin_only.value.status == 403
    with Client(gateway.base, "not-a-key") as stranger, pytest.raises(KeyRejected) as rejected:
        stranger.models()
    assert rejected.value.status == 401


async def test_the_async_client_uploads_many_at_once(gateway) -> None:  # noqa: ANN001
    import asyncio

    photos = photo_variants(8, seed=secrets.randbits(48))
    async with AsyncClient(gateway.base, gateway.api_key) as client:
        queued = await asyncio.gather(*(client.upload(p) for p in photos))
        done = await asyncio.gather(*(client.wait(q["id"], timeout=120) for q in queued))
    assert [d["status"] for d in done] == ["done"] * len(photos)
    assert len({d["id"] for d in done}) == len(photos)
