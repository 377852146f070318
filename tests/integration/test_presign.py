"""Presigned uploads on the real stack: ``POST /v1/uploads`` signs a form, storage enforces it.

The storage (MinIO), not imagerec, refuses a body over the form's size, another Content-Type,
another key and an expired form; one within the form is stored under the drop prefix and
classified under the id the API answered at once, through the gateway's ``/storage/upload``
as well as straight to S3.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import urllib3

from app import presign
from app.storage import make_minio
from tests.conftest import photo_variants

pytestmark = pytest.mark.integration

http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=60))


def _photo() -> bytes:
    return photo_variants(1, seed=secrets.randbits(48))[0]


def _ticket(gateway, body: Any, content_type: str = "application/json"):  # noqa: ANN001, ANN202
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return gateway.post_raw("/v1/uploads", raw, content_type)


def _send(form: dict[str, Any], data: bytes, *, url: str | None = None,
          **override: str) -> urllib3.BaseHTTPResponse:
    fields = {**form["fields"], **override}
    parts = [*fields.items(), (form["file_field"], ("photo", data, fields["Content-Type"]))]
    return http.request("POST", url or form["url"], fields=parts)


def _stored(settings, key: str) -> bool:  # noqa: ANN001
    try:
        make_minio(settings).stat_object(settings.bucket_input, key)
        return True
    except Exception:  # noqa: BLE001 - NoSuchKey: not stored
        return False


def test_a_form_within_its_limit_is_stored_and_classified_under_the_issued_id(
        gateway, settings) -> None:  # noqa: ANN001
    data = _photo()
    reply = _ticket(gateway, {"content_type": "image/jpeg", "size": len(data)})
    assert reply.status == 201, reply.body[:300]
    form = reply.json()
    assert form["url"] == settings.gateway_url.rstrip("/") + presign.GATEWAY_PATH
    assert reply.headers["Location"] == form["links"]["self"] == f"/v1/images/{form['id']}"
    assert form["max_bytes"] == len(data) and form["fields"]["Content-Type"] == "image/jpeg"
    expires = datetime.fromisoformat(form["expires_at"].replace("Z", "+00:00"))
    assert timedelta(0) < expires - datetime.now(UTC) <= timedelta(
        seconds=settings.upload_url_expiry_s)
    assert gateway.get(form["links"]["self"]).status == 404  # known only once it arrived
    started = time.monotonic()
    sent = _send(form, data)
    assert sent.status == 204, sent.data[:300]
    result = gateway.wait_done(form["id"])
    took = time.monotonic() - started
    assert result["status"] == "done" and result["labels"], result
    assert result["source_key"] == form["fields"]["key"]
    assert result["sha256"] and result["tenant"]
    print(f"presigned upload through the gateway: stored and classified in {took:.2f} s")


def test_a_form_works_straight_against_s3_too(gateway, settings) -> None:  # noqa: ANN001
    data = _photo()
    form = _ticket(gateway, {"content_type": "image/jpeg"}).json()
    direct = f"http://{settings.s3_endpoint}/{settings.bucket_input}"
    assert form["max_bytes"] == settings.max_upload_bytes  # no size: the server's limit
    sent = _send(form, data, url=direct)
    assert sent.status == 204, sent.data[:300]
    assert gateway.wait_done(form["id"])["status"] == "done"


@pytest.mark.parametrize("via", ["gateway", "s3"])
def test_storage_refuses_what_the_form_does_not_allow(gateway, settings, via: str) -> None:  # noqa: ANN001
    data = _photo()
    url = None if via == "gateway" else f"http://{settings.s3_endpoint}/{settings.bucket_input}"

    small = _ticket(gateway, {"content_type": "image/jpeg", "size": 1000}).json()
    too_big = _send(small, data, url=url)
    assert too_big.status == 400 and b"EntityTooLarge" in too_big.data, too_big.data[:300]
    assert not _stored(settings, small["fields"]["key"])

    form = _ticket(gateway, {"content_type": "image/jpeg"}).json()
    other_type = _send(form, data, url=url, **{"Content-Type": "image/png"})
    assert other_type.status == 403, other_type.data[:300]
    other_key = _send(form, data, url=url, key=form["fields"]["key"] + "x")
    assert other_key.status == 403, other_key.data[:300]
    assert not _stored(settings, form["fields"]["key"])

    # An expired form (signed here as the worker signs it, two minutes ago).
    old = presign.issue(presign.UploadRequest(content_type="image/jpeg"), tenant="dev",
                        image_id=form["id"], gateway_base=settings.gateway_url,
                        settings=settings,
                        now=datetime.now(UTC) - timedelta(seconds=settings.upload_url_expiry_s
                                                          + 120))
    expired = _send(old, data, url=url)
    assert expired.status == 403 and b"xpired" in expired.data, expired.data[:300]


def test_bad_requests_are_400_and_the_scope_is_upload(gateway, settings,
                                                     make_tenant_key) -> None:  # noqa: ANN001
    for body, why in [({"content_type": "text/plain"}, "content_type"),
                      ({"content_type": "image/jpeg", "size": 0}, "size"),
                      ({"content_type": "image/jpeg", "size": "10"}, "size"),
                      ({"content_type": "image/jpeg", "size": settings.max_upload_bytes + 1},
                       "limit"),
                      ({"content_type": "image/jpeg", "extra": 1}, "extra"),
                      ({}, "content_type"), (b"{not json", "JSON"), ([1], "")]:
        reply = _ticket(gateway, body)
        assert reply.status == 400, (body, reply.status, reply.body[:200])
        assert why in reply.json()["error"]["message"], (body, reply.json())
    assert _ticket(gateway, b"content_type=image/jpeg", "text/plain").status == 400
    reader = make_tenant_key("presign-reader", scopes="read")
    assert reader.gateway.post_raw("/v1/uploads", b'{"content_type":"image/png"}',
                                   "application/json").status == 403
