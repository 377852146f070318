"""API keys: hashing, verification, revocation and the workers' cache, on an in-memory store."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest

from app import apikeys
from app.apikeys import ApiKeyError, KeyCache, KeyRecord, KeyStore, StoreUnavailable
from app.settings import Settings


class MemoryStore:
    """The three ObjectStore calls KeyStore makes, over a dict; counts reads."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.gets = 0
        self.fail = False

    def put_bytes(self, bucket: str, key: str, data: bytes,
                  content_type: str = "application/octet-stream",
                  metadata: dict[str, str] | None = None) -> None:
        self.objects[(bucket, key)] = data

    def get_bytes(self, bucket: str, key: str) -> bytes:
        if self.fail:
            raise ConnectionError("store down")
        self.gets += 1
        try:
            return self.objects[(bucket, key)]
        except KeyError:
            from app.storage import ObjectMissing

            raise ObjectMissing(f"{bucket}/{key}") from None

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        if self.fail:
            raise ConnectionError("store down")
        return sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix))

    def delete(self, bucket: str, key: str) -> None:
        self.objects.pop((bucket, key), None)


@pytest.fixture
def settings(tmp_path) -> Settings:  # noqa: ANN001
    return Settings(home=tmp_path, api_key_pepper="unit-test-pepper")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def keystore(store: MemoryStore, settings: Settings) -> KeyStore:
    return KeyStore(store, settings=settings)


def test_keys_are_random_prefixed_and_url_safe() -> None:
    keys = {apikeys.new_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith("irk_") and len(key) == 4 + 43
        assert apikeys.plausible_key(key)
        assert all(c.isalnum() or c in "-_" for c in key)


def test_hash_is_hmac_sha256_with_the_pepper() -> None:
    import hashlib
    import hmac

    key = "irk_" + "a" * 43
    expected = hmac.new(b"p1", key.encode(), hashlib.sha256).hexdigest()
    assert apikeys.hash_key(key, "p1") == expected
    assert apikeys.hash_key(key, "p2") != expected  # the pepper matters
    assert len(expected) == 64


def test_hashing_refuses_an_empty_pepper() -> None:
    with pytest.raises(ApiKeyError, match="PEPPER"):
        apikeys.hash_key("irk_whatever_long_enough", "")


def test_store_keeps_only_the_hash(keystore: KeyStore, store: MemoryStore) -> None:
    key = keystore.create("alice")
    [(bucket, obj)] = store.objects
    assert bucket == "models" and obj == "_auth/api-keys/alice.json"
    raw = store.objects[(bucket, obj)]
    assert key.encode() not in raw
    doc = json.loads(raw)
    assert doc["name"] == "alice" and doc["revoked"] is None
    assert doc["hash"] == apikeys.hash_key(key, "unit-test-pepper")


def test_verify_accepts_the_key_and_nothing_else(keystore: KeyStore) -> None:
    key = keystore.create("alice")
    assert keystore.verify(key).name == "alice"  # type: ignore[union-attr]
    assert keystore.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert keystore.verify("") is None
    assert keystore.verify("x" * 5000) is None


def test_a_different_pepper_does_not_verify(store: MemoryStore, settings: Settings) -> None:
    key = KeyStore(store, settings=settings).create("alice")
    other = Settings(home=settings.home, api_key_pepper="another-pepper")
    assert KeyStore(store, settings=other).verify(key) is None


def test_revoke_makes_the_key_invalid(keystore: KeyStore) -> None:
    key = keystore.create("bob")
    record = keystore.revoke("bob")
    assert record.revoked and not record.active
    assert keystore.verify(key) is None
    assert keystore.revoke("bob").revoked == record.revoked  # idempotent
    with pytest.raises(ApiKeyError, match="no key named"):
        keystore.revoke("nobody")


def test_names_are_unique_while_active_and_reusable_after_revoke(keystore: KeyStore) -> None:
    old = keystore.create("carol")
    with pytest.raises(ApiKeyError, match="already exists"):
        keystore.create("carol")
    keystore.revoke("carol")
    new = keystore.create("carol")
    assert keystore.verify(new) is not None and keystore.verify(old) is None


def test_rotation_replaces_an_active_key(keystore: KeyStore) -> None:
    old = keystore.create("svc")
    new = keystore.create("svc", replace_active=True)
    assert keystore.verify(old) is None and keystore.verify(new).name == "svc"  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["", "Alice", "../etc", "a b", "a/b", "-x", "x" * 64])
def test_unsafe_names_are_refused(keystore: KeyStore, name: str) -> None:
    with pytest.raises(ApiKeyError, match="invalid key name"):
        keystore.create(name)


def test_records_list_never_exposes_hash_or_key(keystore: KeyStore) -> None:
    keystore.create("a1")
    keystore.create("b2")
    keystore.revoke("a1")
    rows = apikeys.format_records(keystore.records())
    assert [r["name"] for r in rows] == ["a1", "b2"]
    assert rows[0]["active"] is False and rows[1]["active"] is True
    assert all(set(r) == {"name", "tenant", "scopes", "rate_limit", "created", "expires",
                          "revoked", "active"} for r in rows)


def test_delete_forgets_the_record(keystore: KeyStore) -> None:
    key = keystore.create("gone")
    keystore.delete("gone")
    assert keystore.get("gone") is None and keystore.verify(key) is None
    keystore.delete("gone")  # idempotent


def test_malformed_records_are_skipped(keystore: KeyStore, store: MemoryStore) -> None:
    keystore.create("good")
    store.objects[("models", "_auth/api-keys/bad.json")] = b"{not json"
    store.objects[("models", "_auth/api-keys/partial.json")] = b'{"name": "partial"}'
    assert [r.name for r in keystore.records()] == ["good"]


def test_record_round_trip() -> None:
    rec = KeyRecord(name="n", hash="h" * 64, created="2026-01-01T00:00:00.000Z")
    assert KeyRecord.from_bytes(rec.to_bytes()) == rec
    with pytest.raises(ValueError):
        KeyRecord.from_bytes(b"[]")


@pytest.mark.parametrize(("auth", "header", "query", "expected"), [
    ("Bearer k1", None, None, "k1"),
    ("bearer   k1  ", "k2", "k3", "k1"),
    ("Basic abc", "k2", None, "k2"),
    (None, " k2 ", "k3", "k2"),
    (None, None, "k3", "k3"),
    ("Bearer ", "", "", None),
    (None, None, None, None),
])
def test_extract_key_precedence(auth: str | None, header: str | None, query: str | None,
                                expected: str | None) -> None:
    assert apikeys.extract_key(auth, header, query) == expected


# --- the workers' cache ---------------------------------------------------------------------


def _cache(keystore: KeyStore, ttl_s: float = 60.0, miss_refresh_s: float = 60.0) -> KeyCache:
    return KeyCache(lambda: keystore, ttl_s=ttl_s, miss_refresh_s=miss_refresh_s)


def test_cache_verifies_without_touching_the_store_per_request(
        keystore: KeyStore, store: MemoryStore) -> None:
    key = keystore.create("alice")
    cache = _cache(keystore)

    async def run() -> None:
        assert (await cache.verify(key)).name == "alice"  # type: ignore[union-attr]
        reads = store.gets
        for _ in range(100):
            assert await cache.verify(key) is not None
            assert await cache.verify(apikeys.new_key()) is None  # made-up keys: no S3 read
        assert store.gets == reads

    asyncio.run(run())


def test_an_unknown_key_rereads_the_store_at_most_every_interval(
        keystore: KeyStore, store: MemoryStore) -> None:
    cache = _cache(keystore, ttl_s=60.0, miss_refresh_s=0.2)

    async def run() -> None:
        assert await cache.verify(apikeys.new_key()) is None  # first load
        key = keystore.create("late")
        await asyncio.sleep(0.25)
        assert (await cache.verify(key)).name == "late"  # type: ignore[union-attr]
        reads = store.gets
        for _ in range(50):  # a burst of misses within one interval: no further reads
            assert await cache.verify(apikeys.new_key()) is None
        assert store.gets == reads

    asyncio.run(run())


def test_cache_sees_revocation_after_ttl(keystore: KeyStore) -> None:
    key = keystore.create("alice")
    cache = _cache(keystore, ttl_s=0.05)

    async def run() -> None:
        assert await cache.verify(key) is not None
        keystore.revoke("alice")
        await asyncio.sleep(0.1)
        assert await cache.verify(key) is None

    asyncio.run(run())


def test_cache_survives_a_store_outage_once_loaded(keystore: KeyStore,
                                                   store: MemoryStore) -> None:
    key = keystore.create("alice")
    cache = _cache(keystore, ttl_s=0.01)

    async def run() -> None:
        assert await cache.verify(key) is not None
        store.fail = True
        await asyncio.sleep(0.02)
        assert await cache.verify(key) is not None  # known keys keep working

    asyncio.run(run())


def test_cache_without_data_reports_the_store_unavailable(keystore: KeyStore,
                                                          store: MemoryStore) -> None:
    store.fail = True
    cache = _cache(keystore)
    with pytest.raises(StoreUnavailable):
        asyncio.run(cache.verify(apikeys.new_key()))


# --- the development key --------------------------------------------------------------------


def test_ensure_dev_key_creates_once_with_private_file(keystore: KeyStore,
                                                       settings: Settings) -> None:
    path, created = apikeys.ensure_dev_key(settings, keystore)
    assert created and path == settings.home / "dev-api-key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = path.read_text().strip()
    assert keystore.verify(key).name == "dev"  # type: ignore[union-attr]
    assert apikeys.ensure_dev_key(settings, keystore) == (path, False)
    assert path.read_text().strip() == key


def test_ensure_dev_key_reissues_a_revoked_or_unknown_key(keystore: KeyStore,
                                                          settings: Settings) -> None:
    path, _ = apikeys.ensure_dev_key(settings, keystore)
    first = path.read_text().strip()
    keystore.revoke("dev")
    _, created = apikeys.ensure_dev_key(settings, keystore)
    second = path.read_text().strip()
    assert created and second != first and keystore.verify(second) is not None
    path.unlink()
    _, created = apikeys.ensure_dev_key(settings, keystore)
    assert created and keystore.verify(second) is None  # the lost key was rotated out


class EtagStore(MemoryStore):
    """Also lists with ETags, like the real store's ``client.list_objects``."""

    def __init__(self) -> None:
        super().__init__()
        self.client = self

    def list_objects(self, bucket: str, prefix: str = "", recursive: bool = True) -> list:
        import hashlib
        from types import SimpleNamespace

        return [SimpleNamespace(object_name=k, etag=hashlib.md5(v).hexdigest())
                for (b, k), v in sorted(self.objects.items())
                if b == bucket and k.startswith(prefix)]


def test_cache_refresh_rereads_only_changed_records(settings: Settings) -> None:
    store = EtagStore()
    keystore = KeyStore(store, settings=settings)
    keys = {name: keystore.create(name) for name in ("k1", "k2", "k3")}
    cache = _cache(keystore, ttl_s=0.0)
    start = store.gets

    async def run() -> None:
        assert await cache.verify(keys["k1"]) is not None
        assert store.gets == start + 3
        assert await cache.verify(keys["k2"]) is not None  # refresh (ttl 0): nothing changed
        assert store.gets == start + 3
        keystore.revoke("k3")  # one GET inside revoke, then one on refresh
        gets = store.gets
        assert await cache.verify(keys["k3"]) is None
        assert store.gets == gets + 1

    asyncio.run(run())
