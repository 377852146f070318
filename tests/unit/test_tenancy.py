"""Tenants and scopes on keys: migration of old records, scope rules, expiry, visibility."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from app import apikeys
from app import results as res
from app.apikeys import ApiKeyError, KeyRecord, KeyStore
from app.ids import new_image_id
from app.settings import Settings
from app.tenancy import Principal, auth_headers, from_headers
from tests.unit.test_apikeys import MemoryStore


@pytest.fixture
def keystore(tmp_path) -> KeyStore:  # noqa: ANN001
    return KeyStore(MemoryStore(), settings=Settings(home=tmp_path, api_key_pepper="p"))


def test_a_version_1_record_migrates_to_upload_read_in_its_own_tenant(keystore) -> None:  # noqa: ANN001
    """A key stored before tenants existed keeps working, as upload,read in tenant = name."""
    key = apikeys.new_key()
    old = {"name": "legacy", "hash": apikeys.hash_key(key, "p"),
           "created": "2026-01-01T00:00:00.000Z", "revoked": None, "v": 1}
    keystore.store.put_bytes(keystore.bucket, apikeys.object_key("legacy"),
                             json.dumps(old).encode())
    record = keystore.verify(key)
    assert record is not None
    assert record.tenant == "legacy"
    assert record.scopes == ("upload", "read")
    assert not record.admin and not record.expired()
    assert record.v == 1  # read as is: nothing was rewritten


def test_create_defaults_and_round_trip(keystore) -> None:  # noqa: ANN001
    key = keystore.create("alice")
    record = keystore.verify(key)
    assert (record.tenant, record.scopes, record.expires) == ("alice", ("upload", "read"), None)
    key2 = keystore.create("ci", tenant="alice", scopes="read", expires="2099-01-31")
    record2 = keystore.verify(key2)
    assert (record2.tenant, record2.scopes, record2.expires) == (
        "alice", ("read",), "2099-01-31T00:00:00Z")
    assert KeyRecord.from_bytes(record2.to_bytes()) == record2


def test_admin_scope_implies_every_scope(keystore) -> None:  # noqa: ANN001
    record = keystore.verify(keystore.create("ops", scopes="admin"))
    assert record.admin and set(record.scopes) == {"upload", "read", "admin"}


@pytest.mark.parametrize("scopes", ["", "write", "read,root", " , "])
def test_unknown_or_empty_scopes_are_refused(keystore, scopes: str) -> None:  # noqa: ANN001
    with pytest.raises(ApiKeyError):
        keystore.create("x", scopes=scopes)


@pytest.mark.parametrize("tenant", ["Bad", "../x", "a b", "-x", "x" * 64])
def test_tenant_names_are_restricted(keystore, tenant: str) -> None:  # noqa: ANN001
    with pytest.raises(ApiKeyError):
        keystore.create("x", tenant=tenant)


def test_expired_keys_do_not_verify_and_report_expired(keystore) -> None:  # noqa: ANN001
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    key = keystore.create("old", expires=past)
    assert keystore.verify(key) is None
    record = keystore.get("old")
    assert record.expired() and not record.expired(datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(ApiKeyError):
        keystore.create("y", expires="next tuesday")


def test_the_cache_returns_an_expired_record_so_the_gateway_can_say_why(keystore) -> None:  # noqa: ANN001
    import asyncio

    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    key = keystore.create("gone", expires=past)
    cache = apikeys.KeyCache(lambda: keystore)
    record = asyncio.run(cache.verify(key))
    assert record is not None and record.expired()


@pytest.mark.parametrize(("method", "uri", "scope"), [
    ("POST", "/v1/images", "upload"),
    ("POST", "/v1/images?callback_url=x", "upload"),
    ("GET", "/v1/images", "read"),
    ("GET", "/v1/images/01ABC", "read"),
    ("GET", "/v1/images/01ABC/input", "read"),
    ("GET", "/v1/events?api_key=k", "read"),
    ("GET", "/v1/models", "read"),
    ("POST", "/v1/classify", "upload"),
    ("POST", "/function/image-upload", "upload"),
    ("POST", "/function/image-classifier", "upload"),
    ("POST", "/v1/admin/dlq/replay", "admin"),
    ("GET", "/v1/admin/console", "admin"),
    ("GET", "/somewhere/else", "admin"),
    ("POST", "/v1/imagesX", "read"),
])
def test_required_scope(method: str, uri: str, scope: str) -> None:
    assert apikeys.required_scope(method, uri) == scope


def test_principal_from_gateway_headers() -> None:
    assert from_headers({}) is None
    who = from_headers(auth_headers("alice", ("upload", "read")))
    assert who == Principal("alice", frozenset({"upload", "read"}))
    assert who.sees("alice") and not who.sees("bob")
    assert not who.sees("") and not who.sees(None)  # pre-tenant images: admins only
    assert who.sees_result({"tenant": "alice"}) and not who.sees_result({"tenant": "bob"})
    assert not who.sees_result(None)
    admin = from_headers(auth_headers("ops", ("upload", "read", "admin")))
    assert admin.admin and admin.sees("bob") and admin.sees("")


def test_events_and_results_carry_the_tenant() -> None:
    event = res.UploadEvent(id=new_image_id(), sha256="a" * 64, format="jpeg", size=1,
                            created_at=res.now_iso(), tenant="alice")
    parsed = res.UploadEvent.from_bytes(event.to_bytes())
    assert parsed.tenant == "alice" and parsed.reuse_of is None
    assert res.queued(parsed)["tenant"] == "alice"
    assert res.view(res.queued(parsed))["tenant"] == "alice"


@pytest.mark.parametrize("patch", [
    {"tenant": 5}, {"reuse_of": "../etc"}, {"size": -1}, {"size": "1"}, {"width": True},
    {"callback_url": ["x"]}, {"sha256": None},
])
def test_malformed_upload_events_are_bad_events(patch: dict) -> None:
    data = {"id": new_image_id(), "sha256": "a" * 64, "format": "jpeg", "size": 1,
            "created_at": res.now_iso(), **patch}
    with pytest.raises(res.BadEvent):
        res.UploadEvent.from_bytes(json.dumps(data).encode())


def test_a_key_may_carry_its_own_rate_limit(keystore) -> None:  # noqa: ANN001
    record = keystore.verify(keystore.create("limited", rate_limit=5))
    assert record.rate_limit == 5
    assert KeyRecord.from_bytes(record.to_bytes()).rate_limit == 5
    assert keystore.verify(keystore.create("free")).rate_limit is None
    for bad in (0, -1, 2.5, "5", True):
        with pytest.raises(ApiKeyError):
            keystore.create(f"bad-{len(str(bad))}", rate_limit=bad)  # type: ignore[arg-type]
