"""Webhooks on the real stack: SSRF refusals, the allow-listed receiver, durable delivery.

No test here sends a packet to a refused address: refused URLs are answered 400 from the
address check alone (literal addresses are never connected to; ``localhost`` is resolved from
/etc/hosts only). The one loopback receiver is on 127.0.0.2, which the test stack allows.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from typing import Any

import pytest
import urllib3

from app.callbacks import sign
from app.stack.layout import Layout
from app.stack.manage import rpc
from app.storage import make_minio
from tests.conftest import RECEIVER_HOST, Receiver, photo_variants

pytestmark = pytest.mark.integration

REFUSED = [
    "http://127.0.0.1:8080/hook",
    "http://[::1]:8080/hook",
    "http://10.0.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0:8080/hook",
    "http://localhost:8080/hook",  # a name that resolves to loopback
    "http://2130706433/hook",  # 127.0.0.1 written as one number
    "http://[::ffff:127.0.0.1]/hook",
]


def fresh() -> bytes:
    return photo_variants(1, seed=secrets.randbits(48))[0]


def _upload_with_callback(gateway, url: str, path: str = "/v1/images") -> Any:  # noqa: ANN001
    fields = {"file": ("p.jpg", fresh(), "image/jpeg"), "callback_url": url}
    body, ctype = urllib3.encode_multipart_formdata(fields)
    return gateway.post_raw(path, body, ctype)


def _input_count(settings) -> int:  # noqa: ANN001
    client = make_minio(settings)
    return sum(1 for _ in client.list_objects(settings.bucket_input, recursive=True))


@pytest.mark.parametrize("path", ["/v1/images", "/function/image-upload"])
def test_callbacks_to_refused_addresses_are_400_before_anything_is_stored(
        gateway, settings, path: str) -> None:  # noqa: ANN001
    before = _input_count(settings)
    for url in REFUSED:
        reply = _upload_with_callback(gateway, url, path)
        assert reply.status == 400, (url, reply.status, reply.body[:300])
        error = reply.json()["error"]
        assert error["code"] == "bad_callback_url", (url, error)
    # The same through the query string.
    raw = gateway.post_raw(f"{path}?callback_url=http://169.254.169.254/", fresh(), "image/jpeg")
    assert raw.status == 400
    assert _input_count(settings) == before, "a refused upload stored its original"


def test_the_allow_listed_receiver_gets_the_signed_callback_and_the_state_shows_it(
        gateway, settings, receiver) -> None:  # noqa: ANN001
    reply = _upload_with_callback(gateway, receiver.url)
    assert reply.status == 202, reply.body[:300]
    image_id = reply.json()["id"]
    headers, body = receiver.received.get(timeout=60)
    assert headers["X-Imagerec-Image-Id"] == image_id
    assert headers["X-Imagerec-Signature"] == sign(body, settings.callback_secret)
    assert json.loads(body)["status"] == "done"
    delivery = _delivery(gateway, image_id, lambda d: d.get("state") == "delivered")
    assert delivery["attempts"] == 1 and delivery["last_status"] == 204
    assert delivery["signature"] == headers["X-Imagerec-Signature"]


def _delivery(gateway, image_id: str, until, timeout_s: float = 60.0) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    while time.monotonic() < deadline:
        reply = gateway.get(f"/v1/images/{image_id}")
        if reply.status == 200:
            last = reply.json().get("delivery") or {}
            if until(last):
                return last
        time.sleep(0.2)
    raise AssertionError(f"delivery state of {image_id} never matched: {last}")


def _worker_pids(settings) -> dict[str, int]:  # noqa: ANN001
    infos = rpc(Layout.from_settings(settings)).supervisor.getAllProcessInfo()
    return {p["name"]: p["pid"] for p in infos
            if p["name"].startswith("worker-") and p["statename"] == "RUNNING"}


def test_a_pending_webhook_survives_its_worker_being_killed(gateway, settings) -> None:  # noqa: ANN001
    """Receiver down, every worker SIGKILLed during the backoff, receiver back: it arrives."""
    if RECEIVER_HOST not in settings.callback_allow_nets:
        pytest.fail("start the stack with IMAGEREC_CALLBACK_ALLOW_NETS=127.0.0.2/32")
    hook = Receiver().start()  # only to reserve a port; down until the workers are dead
    hook.stop()
    reply = _upload_with_callback(gateway, hook.url)
    assert reply.status == 202, reply.body[:300]
    image_id = reply.json()["id"]
    pending = _delivery(gateway, image_id,
                        lambda d: d.get("state") == "pending" and d.get("attempts", 0) >= 1,
                        timeout_s=90)
    assert pending["last_status"] is None and pending["last_error"]
    before = _worker_pids(settings)
    assert before, "no worker is running"
    for pid in before.values():
        os.kill(pid, signal.SIGKILL)  # supervisord restarts them
    hook.start()
    try:
        headers, body = hook.received.get(timeout=180)
        assert headers["X-Imagerec-Image-Id"] == image_id
        assert headers["X-Imagerec-Signature"] == pending["signature"]
        assert headers["X-Imagerec-Signature"] == sign(body, settings.callback_secret)
        after = _worker_pids(settings)
        assert set(after.values()).isdisjoint(before.values()), "the workers were not replaced"
        delivered = _delivery(gateway, image_id, lambda d: d.get("state") == "delivered")
        assert delivered["attempts"] > pending["attempts"]
    finally:
        hook.stop()
    deadline = time.monotonic() + 120
    while gateway.get("/readyz", key=False).status != 200:
        assert time.monotonic() < deadline, "the stack did not recover"
        time.sleep(0.5)


def test_two_workers_holding_the_same_webhook_send_it_once(settings, receiver) -> None:  # noqa: ANN001
    """After a rebalance two workers may hold one pending message: the Redis lease lets one
    deliver while the other waits for the outcome (real Redis, real receiver)."""
    import asyncio

    from app import callbacks
    from app import results as res
    from app.cache import get_redis
    from app.ids import new_image_id

    event = res.UploadEvent(id=new_image_id(), sha256="0" * 64, format="jpeg", size=1,
                            created_at=res.now_iso(), callback_url=receiver.url, tenant="t")
    result = res.done(event, {"name": "m", "version": "1"}, [], res.Timings())

    async def both() -> list[str]:
        try:
            return list(await asyncio.gather(callbacks.deliver(result, wait_s=0.1),
                                             callbacks.deliver(result, wait_s=0.1)))
        finally:
            await get_redis().aclose()

    get_redis.cache_clear()
    assert asyncio.run(both()) == ["delivered", "delivered"]
    get_redis.cache_clear()
    time.sleep(1.0)
    assert receiver.received.qsize() == 1
