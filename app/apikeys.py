"""API keys: creation, hashing, revocation, and the fast check the gateway relies on.

Storage. One small JSON object per key under ``_auth/api-keys/<name>.json`` in the ``models``
bucket (a prefix the model registry never lists). S3, not Redis: Redis is a cache that may be
flushed, and keys must survive that and be shared by every worker. One object per key, not
one document for all, so two admins creating keys at once cannot overwrite each other.

Hashing. Only ``HMAC-SHA256(pepper, key)`` is stored. Keys are 256-bit random strings, so a
slow password hash would buy nothing (there is no dictionary to guess from) and would cost
CPU on every request; the pepper (``IMAGEREC_API_KEY_PEPPER``, kept outside the bucket) means a
leaked bucket alone does not even allow checking a candidate key offline.

Tenants and scopes. Every key belongs to a tenant (default: the key's own name) and carries
scopes: ``upload``, ``read`` and ``admin`` (default ``upload,read``). A tenant sees only its own
images; ``admin`` sees every tenant and may use the operator endpoints. Records written
before tenants existed (``v`` 1) read as ``upload,read`` in a tenant named after the key, so
existing keys keep working unchanged. An optional expiry makes a key stop working by itself.

Checking. Workers hold every key's hash in memory (``KeyCache``) and re-read the store every
``CACHE_TTL_S`` seconds, so a check is a dict lookup and a revocation takes effect within a few
seconds everywhere. An unknown key re-reads it at most every ``MISS_REFRESH_S`` (so a new key
works at once), which bounds what a flood of made-up keys can cost the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from app.logs import get_logger
from app.results import now_iso
from app.settings import Settings, get_settings

log = get_logger(__name__)

KEY_PREFIX = "irk_"  # recognisable by secret scanners and in support tickets
STORE_PREFIX = "_auth/api-keys/"
CACHE_TTL_S = 3.0  # a revocation takes effect on every worker within this
MISS_REFRESH_S = 0.5  # an unknown key re-reads the store at most this often (new keys)
DEV_KEY_NAME = "dev"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SCOPES = ("upload", "read", "admin")
DEFAULT_SCOPES = ("upload", "read")
ADMIN_SCOPES = SCOPES  # an admin may do everything a tenant may, in every tenant
# What a key can look like: our own keys are irk_ + 43 URL-safe chars. Anything far outside
# that is refused before hashing, so a huge header costs nothing.
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-.~+/=]{16,256}$")


class ApiKeyError(Exception):
    """An admin-facing problem with a key operation; the message says what to do."""


class StoreUnavailable(RuntimeError):
    """The key store cannot be read and nothing is cached yet: the check must answer 503."""


class StoreLike(Protocol):
    """The part of ``app.storage.ObjectStore`` this module uses (tests pass a dict-backed one)."""

    def put_bytes(self, bucket: str, key: str, data: bytes,
                  content_type: str = ..., metadata: dict[str, str] | None = ...) -> None: ...

    def get_bytes(self, bucket: str, key: str) -> bytes: ...

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]: ...

    def delete(self, bucket: str, key: str) -> None: ...


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time (``Z`` or an offset; a bare date is midnight UTC), or None."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiKeyError(f"invalid time {value!r}: use ISO 8601, e.g. 2027-01-31T00:00:00Z"
                          ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _rate(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiKeyError(f"rate limit must be a positive whole number per second, not "
                          f"{value!r}")
    return value


def parse_scopes(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"upload,read"`` (or a list) as a tuple in canonical order; unknown scopes refused."""
    if value is None:
        return DEFAULT_SCOPES
    items = value.split(",") if isinstance(value, str) else list(value)
    wanted = {s.strip().lower() for s in items if s.strip()}
    if not wanted:
        raise ApiKeyError("a key needs at least one scope: upload, read or admin")
    if unknown := sorted(wanted - set(SCOPES)):
        raise ApiKeyError(f"unknown scope(s) {', '.join(unknown)}: use upload, read, admin")
    if "admin" in wanted:
        return ADMIN_SCOPES
    return tuple(s for s in SCOPES if s in wanted)


@dataclass(frozen=True)
class KeyRecord:
    """What is stored per key: never the key itself.

    ``tenant`` empty means the key's own name (records from before tenants existed)."""

    name: str
    hash: str
    created: str
    revoked: str | None = None
    tenant: str = ""
    scopes: tuple[str, ...] = field(default=DEFAULT_SCOPES)
    expires: str | None = None
    # Requests per second for this key, on top of the gateway's limit for every key;
    # None: only the gateway's (IMAGEREC_RATE_LIMIT_RPS).
    rate_limit: int | None = None
    v: int = 2

    def __post_init__(self) -> None:
        if not self.tenant:
            object.__setattr__(self, "tenant", self.name)
        object.__setattr__(self, "scopes", tuple(self.scopes))

    @property
    def active(self) -> bool:
        return self.revoked is None

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def expired(self, now: datetime | None = None) -> bool:
        """True once the expiry passed; a malformed stored expiry counts as expired."""
        if not self.expires:
            return False
        try:
            when = parse_time(self.expires)
        except ApiKeyError:
            return True
        return when is not None and (now or datetime.now(UTC)) >= when

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeyRecord:
        """Parse a stored record; anything malformed is a ValueError (never a KeyError).

        A version-1 record (no tenant, no scopes) becomes ``upload,read`` in the tenant of
        its own name: the migration is done on read, so no stored object needs rewriting."""
        try:
            data = json.loads(raw)
            name = str(data["name"])
            scopes = data.get("scopes")
            if scopes is not None and (not isinstance(scopes, list)
                                       or not all(isinstance(s, str) for s in scopes)):
                raise TypeError("scopes is not a list of strings")
            return cls(name=name, hash=str(data["hash"]),
                       created=str(data.get("created", "")), revoked=data.get("revoked"),
                       tenant=str(data.get("tenant") or name),
                       scopes=parse_scopes(scopes) if scopes is not None else DEFAULT_SCOPES,
                       expires=data.get("expires"),
                       rate_limit=_rate(data.get("rate_limit")), v=int(data.get("v", 1)))
        except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError,
                ApiKeyError) as exc:
            raise ValueError(f"malformed API key record: {exc!r}") from exc


Snapshot = dict[str, tuple[str | None, KeyRecord]]

# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe, so it fits headers and query strings as is."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _pepper_bytes(pepper: str) -> bytes:
    if not pepper:
        raise ApiKeyError("IMAGEREC_API_KEY_PEPPER is not set; run `make up` (it generates "
                        ".stack/secrets.env) or set it in the environment")
    return pepper.encode()


def hash_key(key: str, pepper: str) -> str:
    """The stored form of ``key``: hex HMAC-SHA256 keyed with the server's pepper."""
    return hmac.new(_pepper_bytes(pepper), key.encode(), hashlib.sha256).hexdigest()


def plausible_key(key: str | None) -> bool:
    """Cheap shape check done before hashing; it rejects empty and absurd values."""
    return key is not None and _KEY_RE.match(key) is not None


def check_name(name: str) -> str:
    """Names become object keys, so they are restricted to a safe, readable alphabet."""
    if not NAME_RE.match(name or ""):
        raise ApiKeyError(f"invalid key name {name!r}: use 1-63 of a-z 0-9 . _ - "
                        "(starting with a letter or digit)")
    return name


def check_tenant(tenant: str) -> str:
    """Tenants are compared and stored as given: the same safe alphabet as key names."""
    if not NAME_RE.match(tenant or ""):
        raise ApiKeyError(f"invalid tenant {tenant!r}: use 1-63 of a-z 0-9 . _ - "
                          "(starting with a letter or digit)")
    return tenant


# Which scope each request needs, by method and path (checked by the gateway's auth call,
# so the Faust views and the functions are covered alike). First match wins.
_SCOPE_RULES: tuple[tuple[str, str, str], ...] = (
    ("POST", "/v1/images", "upload"),
    ("POST", "/v1/classify", "upload"),
    ("POST", "/v1/uploads", "upload"),
    ("*", "/function/", "upload"),
    ("*", "/v1/admin/", "admin"),
    ("*", "/v1/", "read"),
)


def required_scope(method: str, uri: str) -> str:
    """The scope a request needs; anything not listed needs ``admin`` (deny by default)."""
    path = uri.split("?", 1)[0]
    method = method.upper()
    for rule_method, prefix, scope in _SCOPE_RULES:
        if rule_method not in ("*", method):
            continue
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return scope
    return "admin"


def object_key(name: str) -> str:
    return f"{STORE_PREFIX}{check_name(name)}.json"


def extract_key(authorization: str | None, x_api_key: str | None,
                query_key: str | None = None) -> str | None:
    """The key a request carries: ``Authorization: Bearer``, then ``X-API-Key``, then query.

    Callers pass ``query_key`` only where a header is impossible (EventSource), so keys do
    not end up in URLs, logs and browser history elsewhere.
    """
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    if query_key and query_key.strip():
        return query_key.strip()
    return None


# --------------------------------------------------------------------------------------------
# The store (admin operations; blocking, like app.storage)
# --------------------------------------------------------------------------------------------


class KeyStore:
    """Create, list and revoke keys in the object store."""

    def __init__(self, store: StoreLike | None = None, *, settings: Settings | None = None,
                 bucket: str | None = None) -> None:
        self.settings = settings or get_settings()
        if store is None:
            from app.storage import get_store

            store = get_store()
        self.store = store
        self.bucket = bucket or self.settings.bucket_models

    def get(self, name: str) -> KeyRecord | None:
        try:
            raw = self.store.get_bytes(self.bucket, object_key(name))
        except KeyError:  # app.storage.ObjectMissing is a KeyError; S3 failures are not
            return None
        return KeyRecord.from_bytes(raw)

    def _put(self, record: KeyRecord) -> None:
        self.store.put_bytes(self.bucket, object_key(record.name), record.to_bytes(),
                             "application/json")

    def create(self, name: str, *, replace_active: bool = False, tenant: str | None = None,
               scopes: str | Iterable[str] | None = None, expires: str | None = None,
               rate_limit: int | None = None) -> str:
        """Store a new key under ``name`` and return the key (the only time it is seen).

        A revoked name may be reused; an active one only with ``replace_active`` (rotation:
        the old key stops working within ``CACHE_TTL_S``). ``tenant`` defaults to ``name``,
        ``scopes`` to ``upload,read``; ``expires`` is an ISO 8601 time; ``rate_limit`` is
        this key's own limit in requests per second (``web.auth`` enforces it).
        """
        check_name(name)
        tenant = check_tenant(tenant or name)
        scope_tuple = parse_scopes(scopes)
        when = parse_time(expires)
        rate = _rate(rate_limit)
        expires_iso = (when.astimezone(UTC).isoformat(timespec="seconds").replace(
            "+00:00", "Z") if when else None)
        existing = self.get(name)
        if existing is not None and existing.active and not replace_active:
            raise ApiKeyError(f"a key named {name!r} already exists; revoke it first or pick "
                            "another name")
        key = new_key()
        self._put(KeyRecord(name=name, hash=hash_key(key, self.settings.api_key_pepper),
                            created=now_iso(), tenant=tenant, scopes=scope_tuple,
                            expires=expires_iso, rate_limit=rate))
        return key

    def revoke(self, name: str) -> KeyRecord:
        record = self.get(name)
        if record is None:
            raise ApiKeyError(f"no key named {name!r}")
        if not record.active:
            return record
        record = replace(record, revoked=now_iso())
        self._put(record)
        return record

    def delete(self, name: str) -> None:
        """Forget a key entirely (tests clean up with this); ``revoke`` keeps the record."""
        self.store.delete(self.bucket, object_key(name))

    def _listing(self) -> list[tuple[str, str | None]]:
        """(object name, ETag) under the prefix; ETag None where the store cannot say."""
        client = getattr(self.store, "client", None)
        if client is not None and hasattr(client, "list_objects"):
            return [(o.object_name, o.etag) for o in
                    client.list_objects(self.bucket, prefix=STORE_PREFIX, recursive=True)]
        return [(obj, None) for obj in self.store.list_keys(self.bucket, STORE_PREFIX)]

    def snapshot(self, previous: Snapshot | None = None) -> Snapshot:
        """Every record by object name, with its ETag.

        Objects whose ETag is unchanged since ``previous`` are not read again, so a worker's
        periodic refresh costs one LIST plus a GET per key that actually changed.
        """
        previous = previous or {}
        out: Snapshot = {}
        for obj, etag in self._listing():
            old = previous.get(obj)
            if etag is not None and old is not None and old[0] == etag:
                out[obj] = old
                continue
            try:
                out[obj] = (etag, KeyRecord.from_bytes(self.store.get_bytes(self.bucket, obj)))
            except KeyError:  # deleted between list and get
                continue
            except ValueError as exc:
                log.warning("unreadable api key record skipped", object=obj, error=repr(exc))
        return out

    def records(self) -> list[KeyRecord]:
        return sorted((rec for _, rec in self.snapshot().values()),
                      key=lambda r: (r.created, r.name))

    def verify(self, key: str) -> KeyRecord | None:
        """A direct (uncached) check; for the CLI and tests, not for the request path."""
        if not plausible_key(key):
            return None
        digest = hash_key(key, self.settings.api_key_pepper)
        return next((r for r in self.records() if r.active and not r.expired() and
                     hmac.compare_digest(r.hash, digest)), None)


# --------------------------------------------------------------------------------------------
# The request-path check (workers)
# --------------------------------------------------------------------------------------------


class KeyCache:
    """Every active key's hash in memory, re-read from the store every ``ttl_s`` seconds.

    An unknown key may also trigger a re-read, at most every ``miss_refresh_s``, so a key
    created a moment ago works at once on every worker, while a flood of made-up keys still
    costs the store only one LIST per interval.
    """

    def __init__(self, keystore_factory: Any = KeyStore, ttl_s: float = CACHE_TTL_S,
                 miss_refresh_s: float = MISS_REFRESH_S) -> None:
        self._factory = keystore_factory
        self._keystore: KeyStore | None = None
        self.ttl_s = ttl_s
        self.miss_refresh_s = miss_refresh_s
        self._by_hash: dict[str, KeyRecord] = {}
        self._snapshot: Snapshot = {}
        self._loaded_at: float | None = None
        self._retry_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def keystore(self) -> KeyStore:
        if self._keystore is None:
            self._keystore = self._factory()
        return self._keystore

    def _load(self) -> tuple[Snapshot, dict[str, KeyRecord]]:
        snapshot = self.keystore.snapshot(self._snapshot)
        return snapshot, {rec.hash: rec for _, rec in snapshot.values() if rec.active}

    async def _ensure_fresh(self, max_age_s: float) -> None:
        now = time.monotonic()
        if self._loaded_at is not None and now - self._loaded_at < max_age_s:
            return
        if self._loaded_at is not None and now < self._retry_at:
            return  # the store failed a moment ago: keep serving what we have
        async with self._lock:
            now = time.monotonic()
            if self._loaded_at is not None and now - self._loaded_at < max_age_s:
                return
            try:
                snapshot, table = await asyncio.to_thread(self._load)
            except Exception as exc:  # noqa: BLE001 - S3 down, timeouts, bad credentials
                if self._loaded_at is None:
                    raise StoreUnavailable(f"cannot read API keys: {exc!r}"[:300]) from exc
                # Known keys keep working through a store outage (no revocation can be
                # written meanwhile either); retry soon rather than on every request.
                log.warning("api key refresh failed; using cached keys", error=repr(exc))
                self._retry_at = now + 1.0
                return
            self._snapshot, self._by_hash = snapshot, table
            self._loaded_at = time.monotonic()

    async def verify(self, key: str | None) -> KeyRecord | None:
        """The record of an active key, or None. Raises ``StoreUnavailable`` (answer 503).

        An expired key's record is returned too (the caller answers 401 "expired"), so that
        the client learns why; check ``record.expired()``."""
        if key is None or not plausible_key(key):
            return None
        await self._ensure_fresh(self.ttl_s)
        # The lookup is by an HMAC the caller cannot compute without the pepper, so dict
        # timing reveals nothing usable; no constant-time scan over all keys is needed.
        digest = hash_key(key, self.keystore.settings.api_key_pepper)
        record = self._by_hash.get(digest)
        if record is None and self.miss_refresh_s < self.ttl_s:
            # Maybe a key created a moment ago: look again, but at most every
            # miss_refresh_s, so a flood of made-up keys costs one LIST per interval.
            await self._ensure_fresh(self.miss_refresh_s)
            record = self._by_hash.get(digest)
        return record


# --------------------------------------------------------------------------------------------
# The development key (``make up``)
# --------------------------------------------------------------------------------------------


def dev_key_path(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return Path(settings.home) / "dev-api-key"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    os.chmod(path, 0o600)


def ensure_dev_key(settings: Settings | None = None,
                   keystore: KeyStore | None = None) -> tuple[Path, bool]:
    """Make sure ``$IMAGEREC_HOME/dev-api-key`` holds an active key named ``dev``.

    Returns ``(path, created)``. An existing file whose key still verifies is kept; if the
    file is missing or its key is unknown (data wiped, key revoked) the ``dev`` key is
    (re)issued, since a stored hash cannot be turned back into the key.
    """
    settings = settings or get_settings()
    keystore = keystore or KeyStore(settings=settings)
    path = dev_key_path(settings)
    if path.exists():
        current = path.read_text().strip()
        record = keystore.verify(current)
        if record is not None:
            os.chmod(path, 0o600)
            return path, False
    key = keystore.create(DEV_KEY_NAME, replace_active=True)
    _write_private(path, key + "\n")
    return path, True


def format_records(records: Iterable[KeyRecord]) -> list[dict[str, Any]]:
    """What ``keys list`` shows: never the hash, never the key."""
    return [{"name": r.name, "tenant": r.tenant, "scopes": ",".join(r.scopes),
             "rate_limit": r.rate_limit,
             "created": r.created, "expires": r.expires, "revoked": r.revoked,
             "active": r.active and not r.expired()} for r in records]
