"""The presigned upload form (app.presign): what its policy asks storage to enforce.

That storage really enforces it is tests/integration/test_presign.py; here, the signed
policy's conditions, the request parsing and the URL choice, with no server (signing a POST
policy is local).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from app import drops, presign
from app.errors import ApiError
from app.ids import new_image_id
from app.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:  # noqa: ANN001
    return Settings(home=tmp_path, s3_access_key="AKIDEXAMPLE", s3_secret_key="s" * 40,
                    api_key_pepper="p" * 32, max_upload_bytes=5000, upload_url_expiry_s=300)


def test_the_policy_pins_key_type_size_and_expiry(settings: Settings,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from app import storage

    monkeypatch.setattr(presign, "get_store",
                        lambda: storage.ObjectStore(storage.make_minio(settings), settings))
    image_id = new_image_id()
    now = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
    form = presign.issue(presign.UploadRequest(content_type="image/png", size=1234),
                         tenant="acme", image_id=image_id, gateway_base="https://gw.example",
                         settings=settings, now=now)
    assert form["id"] == image_id and form["max_bytes"] == 1234
    assert form["url"] == "https://gw.example/storage/upload"
    assert form["expires_at"] == "2026-12-03T00:05:00Z"
    key = form["fields"]["key"]
    assert key == drops.upload_drop_key("acme", image_id, settings)
    assert drops.parse_drop_key(key, settings).issued_id == image_id
    policy = json.loads(base64.b64decode(form["fields"]["policy"]))
    assert policy["expiration"].startswith("2026-12-03T00:05:00")
    conditions = policy["conditions"]
    assert ["eq", "$bucket", settings.bucket_input] in conditions
    assert ["eq", "$key", key] in conditions
    assert ["eq", "$Content-Type", "image/png"] in conditions
    assert ["content-length-range", 1, 1234] in conditions
    assert form["fields"]["x-amz-signature"]

    unsized = presign.issue(presign.UploadRequest(content_type="image/jpeg"), tenant="acme",
                            image_id=image_id, gateway_base="http://h", settings=settings)
    assert unsized["max_bytes"] == settings.max_upload_bytes
    with pytest.raises(ApiError, match="over the upload limit"):
        presign.issue(presign.UploadRequest(content_type="image/jpeg", size=5001),
                      tenant="acme", image_id=image_id, gateway_base="http://h",
                      settings=settings)


def test_upload_url_sends_forms_straight_to_s3(settings: Settings) -> None:
    assert presign.upload_url(settings, "http://gw:8080/") == "http://gw:8080/storage/upload"
    direct = settings.model_copy(update={"upload_url": "https://s3.example.org/"})
    assert presign.upload_url(direct, "http://gw") == "https://s3.example.org/input-images"


def test_the_gateway_base_comes_from_forwarded_headers_when_sane() -> None:
    fallback = "http://127.0.0.1:8080"
    assert presign.gateway_base({"X-Forwarded-Host": "img.example:8443",
                                 "X-Forwarded-Proto": "https"}, fallback) == \
        "https://img.example:8443"
    for headers in ({}, {"X-Forwarded-Host": "evil/x"}, {"X-Forwarded-Host": "a@b"},
                    {"X-Forwarded-Host": "h", "X-Forwarded-Proto": "javascript"}):
        assert presign.gateway_base(headers, fallback) == fallback


@pytest.mark.parametrize("raw, ctype, why", [
    (b'{"content_type":"image/jpeg"}', "text/plain", "JSON body"),
    (b"{", "application/json", "body"),
    (b'{"content_type":"image/svg+xml"}', "application/json", "content_type"),
    (b'{"content_type":"image/jpeg","size":0}', "application/json", "size"),
    (b'{"content_type":"image/jpeg","size":1.0}', "application/json", "size"),
    (b'{"content_type":"image/jpeg","x":1}', "application/json", "x"),
    (b" " * 5000, "application/json", "over"),
])
def test_bad_request_bodies(raw: bytes, ctype: str, why: str) -> None:
    with pytest.raises(ApiError, match=why):
        presign.parse_request(raw, ctype)
    assert presign.parse_request(b'{"content_type":"image/webp","size":9}',
                                 "application/json").size == 9
