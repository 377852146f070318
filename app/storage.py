"""Object storage over plain S3, so any S3 server can replace MinIO.

Two clients, one job each. The busy path (an upload's original, a batch's model inputs and
results, reads of single objects) and the reconciler's listing use ``obstore``'s async API:
its requests run on a Rust runtime and resolve on the event loop, at 0.26-0.31 ms of client
CPU per 40 KB PUT against 0.63-0.78 ms for ``minio`` in a thread pool (``bench/s3_client.py``)
and 4 against 44 us per listed key, without worker threads contending for the GIL.
Everything else (stat with user metadata, the small prefix listings of API keys and models,
delete, buckets, IAM, the CLI) stays on the ``minio`` client and its blocking calls.

Object keys are built only from server-generated ids (see ``app.keys``), never from
client-supplied names.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache

import obstore
import urllib3
from minio import Minio
from minio.error import S3Error
from obstore.exceptions import NotFoundError
from obstore.store import S3Store

from app.errors import DependencyDown
from app.settings import Settings, get_settings


class ObjectMissing(KeyError):
    """The object does not exist; distinct from the store being unreachable."""


def make_minio(settings: Settings, *, access_key: str | None = None,
               secret_key: str | None = None, timeout_s: float = 10.0) -> Minio:
    """A client with short timeouts and few retries: a down store must fail fast (503)."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(3.0, timeout_s), read=timeout_s),
        maxsize=32,
        retries=urllib3.Retry(total=1, backoff_factor=0.1,
                              status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        settings.s3_endpoint,
        access_key=access_key if access_key is not None else settings.s3_access_key,
        secret_key=secret_key if secret_key is not None else settings.s3_secret_key,
        secure=settings.s3_secure,
        region=settings.s3_region,
        http_client=http,
    )


_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound")


@contextmanager
def _translated(bucket: str, key: str) -> Iterator[None]:
    """S3 answers in imagerec's terms, in one place for both clients: a missing object is
    ``ObjectMissing`` (a ``KeyError``); anything else (refused connection, timeout, 5xx,
    access denied) is ``DependencyDown``, which callers retry (the pipeline) or answer 503
    with (the API)."""
    try:
        yield
    except S3Error as exc:
        if exc.code in _MISSING:
            raise ObjectMissing(f"{bucket}/{key}") from exc
        raise DependencyDown("minio", exc.code) from exc
    except (NotFoundError, FileNotFoundError) as exc:  # obstore raises the builtin
        raise ObjectMissing(f"{bucket}/{key}") from exc
    except Exception as exc:
        raise DependencyDown("minio", type(exc).__name__) from exc


def _async_bucket(settings: Settings, bucket: str, timeout_s: float) -> S3Store:
    """An obstore client for one bucket, failing as fast as ``make_minio``'s."""
    scheme = "https" if settings.s3_secure else "http"
    return S3Store(
        bucket,
        endpoint=f"{scheme}://{settings.s3_endpoint}",
        access_key_id=settings.s3_access_key,
        secret_access_key=settings.s3_secret_key,
        region=settings.s3_region,
        virtual_hosted_style_request=False,
        client_options={"allow_http": not settings.s3_secure,
                        "connect_timeout": timedelta(seconds=min(3.0, timeout_s)),
                        "timeout": timedelta(seconds=timeout_s)},
        retry_config={"max_retries": 1,
                      "backoff": {"init_backoff": timedelta(milliseconds=100),
                                  "max_backoff": timedelta(seconds=1), "base": 2},
                      "retry_timeout": timedelta(seconds=timeout_s)},
    )


class ObjectStore:
    """The few operations imagerec needs: async ones for the busy path, blocking ones (run
    them in an executor) for the rest."""

    def __init__(self, client: Minio, settings: Settings | None = None,
                 timeout_s: float = 10.0) -> None:
        self.client = client
        self._settings = settings or get_settings()
        self._timeout_s = timeout_s
        self._buckets: dict[str, S3Store] = {}

    def _bucket(self, bucket: str) -> S3Store:
        store = self._buckets.get(bucket)
        if store is None:
            store = self._buckets[bucket] = _async_bucket(self._settings, bucket,
                                                          self._timeout_s)
        return store

    async def put(self, bucket: str, key: str, data: bytes,
                  content_type: str = "application/octet-stream",
                  metadata: dict[str, str] | None = None) -> None:
        """PUT one object; user metadata becomes ``x-amz-meta-*`` as with ``put_bytes``."""
        attributes = {"Content-Type": content_type, **(metadata or {})}
        with _translated(bucket, key):
            await obstore.put_async(self._bucket(bucket), key, data, attributes=attributes,
                                    use_multipart=False)

    async def get(self, bucket: str, key: str) -> bytes:
        with _translated(bucket, key):
            found = await obstore.get_async(self._bucket(bucket), key)
            return bytes(await found.bytes_async())

    async def has(self, bucket: str, key: str) -> bool:
        try:
            with _translated(bucket, key):
                await obstore.head_async(self._bucket(bucket), key)
            return True
        except ObjectMissing:
            return False

    async def keys_between(self, bucket: str, start: str, stop: str
                           ) -> AsyncIterator[list[str]]:
        """Keys with ``start < key < stop``, in key order, a page at a time; the listing
        stops at ``stop`` instead of running to the end of the bucket."""
        pages = obstore.list(self._bucket(bucket), offset=start, chunk_size=1000)
        while True:
            with _translated(bucket, start):
                try:
                    page = await anext(pages)
                except StopAsyncIteration:
                    return
            keys = [meta["path"] for meta in page]
            inside = [key for key in keys if key < stop]
            if inside:
                yield inside
            if len(inside) < len(keys):
                return

    def put_bytes(self, bucket: str, key: str, data: bytes,
                  content_type: str = "application/octet-stream",
                  metadata: dict[str, str] | None = None) -> None:
        with _translated(bucket, key):
            self.client.put_object(bucket, key, io.BytesIO(data), len(data),
                                   content_type=content_type, metadata=metadata)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with _translated(bucket, key):
            resp = self.client.get_object(bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

    def metadata(self, bucket: str, key: str) -> dict[str, str]:
        """One object's user metadata, names lower-cased without ``x-amz-meta-``."""
        with _translated(bucket, key):
            stat = self.client.stat_object(bucket, key)
        prefix = "x-amz-meta-"
        return {k.lower()[len(prefix):]: v for k, v in (stat.metadata or {}).items()
                if k.lower().startswith(prefix)}

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        with _translated(bucket, prefix):
            return [o.object_name for o in self.client.list_objects(bucket, prefix=prefix,
                                                                    recursive=True)]

    def delete(self, bucket: str, key: str) -> None:
        with _translated(bucket, key):
            self.client.remove_object(bucket, key)


@lru_cache(maxsize=1)
def get_store() -> ObjectStore:
    """The process-wide store with the configured credentials."""
    return ObjectStore(make_minio(get_settings()))
