"""Object storage over plain S3 (the ``minio`` client), so any S3 server can replace MinIO.

Object keys are built only from server-generated ids (see ``app.keys``), never from
client-supplied names.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import urllib3
from minio import Minio
from minio.error import S3Error

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
    """S3 answers in imagerec's terms, in one place: a missing object is ``ObjectMissing``
    (a ``KeyError``); anything else (refused connection, timeout, 5xx, access denied) is
    ``DependencyDown``, which callers retry (the pipeline) or answer 503 with (the API)."""
    try:
        yield
    except S3Error as exc:
        if exc.code in _MISSING:
            raise ObjectMissing(f"{bucket}/{key}") from exc
        raise DependencyDown("minio", exc.code) from exc
    except Exception as exc:
        raise DependencyDown("minio", type(exc).__name__) from exc


class ObjectStore:
    """The few operations imagerec needs, as blocking calls (run them in an executor)."""

    def __init__(self, client: Minio) -> None:
        self.client = client

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

    def exists(self, bucket: str, key: str) -> bool:
        try:
            with _translated(bucket, key):
                self.client.stat_object(bucket, key)
            return True
        except ObjectMissing:
            return False

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
