"""Presigned uploads (``POST /v1/uploads``): a client sends its image straight to storage.

For large files, or clients that should not stream through the API. The answer is an S3
**POST policy** form (URL plus form fields), not a presigned PUT URL: a presigned PUT signs a
method, a key and an expiry, but S3 cannot bound the size of its body, while a POST policy
carries conditions that the storage itself enforces: ``content-length-range`` (at most the
declared ``size``, never more than ``max_upload_bytes``), the exact ``Content-Type`` and the
exact key, until a short expiry (``upload_url_expiry_s``). A body beyond the limit is refused
by MinIO (400 ``EntityTooLarge``) before anything is stored.

Where the object goes: the drop prefix of ``input-images``, at the key ``app.drops``
defines for presigned uploads (``<drop_prefix><tenant>/_uploads/<id>.<mac>``): the tenant is
the API key's, the id is issued here and answered at once, and the MAC shows the drops agent
that this server issued that id. From there the object takes the path of every drop (MinIO's
notification, ``agents.drops``, ``app.ingest.accept``): validated like an upload through the
API, classified, its result under the issued id (404 until the object has arrived).

Which URL: by default the gateway's own ``/storage/upload`` (nginx passes that one POST
through to ``<s3>/<bucket_input>``), so clients need to reach only the gateway's host; a POST
policy's signature does not cover the host, so the proxying does not break it. With
``upload_url`` set (e.g. ``https://s3.example.org``), forms go straight to that S3 endpoint
(``<upload_url>/<bucket_input>``) instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from minio.datatypes import PostPolicy
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app import drops
from app.errors import ApiError
from app.settings import Settings, get_settings
from app.storage import get_store

GATEWAY_PATH = "/storage/upload"  # deploy/nginx.conf.tmpl proxies it to the input bucket
ContentType = Literal["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp",
                      "image/tiff"]


MAX_REQUEST_BYTES = 4096  # the JSON body is two fields


class UploadRequest(BaseModel):
    """The JSON body of ``POST /v1/uploads`` (its schema is in the OpenAPI document)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    content_type: ContentType = Field(description="the image's type; the form must send "
                                      "exactly this Content-Type")
    size: int | None = Field(None, ge=1, description="bytes; the upload may be at most this "
                             "large (default and cap: the server's upload limit)")


def parse_request(raw: bytes, content_type: str) -> UploadRequest:
    """The request body, or ``ApiError`` (400) saying what is wrong with it."""
    if content_type != "application/json":
        raise ApiError(f"send a JSON body (Content-Type: application/json), got "
                       f"{content_type!r}")
    if len(raw) > MAX_REQUEST_BYTES:
        raise ApiError(f"the body is over {MAX_REQUEST_BYTES} bytes")
    try:
        return UploadRequest.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise ApiError(f"{where}: {err['msg']}", code="bad_parameter") from exc


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def upload_url(settings: Settings, gateway_base: str) -> str:
    """Where the form is POSTed: the gateway's storage path, or ``upload_url``'s bucket."""
    if settings.upload_url:
        return f"{settings.upload_url.rstrip('/')}/{settings.bucket_input}"
    return gateway_base.rstrip("/") + GATEWAY_PATH


def issue(request: UploadRequest, *, tenant: str, image_id: str, gateway_base: str,
          settings: Settings | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The answer of ``POST /v1/uploads``: the signed form for one image of ``tenant``.

    Signing is local (no request to the store): the policy is signed with the worker's S3
    key, which may put objects into the input bucket; the conditions confine it to one key.
    """
    settings = settings or get_settings()
    if request.size is not None and request.size > settings.max_upload_bytes:
        raise ApiError(f"size {request.size} is over the upload limit of "
                       f"{settings.max_upload_bytes} bytes", code="too_large")
    limit = request.size or settings.max_upload_bytes
    expires = (now or datetime.now(UTC)) + timedelta(seconds=settings.upload_url_expiry_s)
    key = drops.upload_drop_key(tenant, image_id, settings)
    policy = PostPolicy(settings.bucket_input, expires)
    policy.add_equals_condition("key", key)
    policy.add_equals_condition("Content-Type", request.content_type)
    policy.add_content_length_range_condition(1, limit)
    signed = get_store().client.presigned_post_policy(policy)
    return {
        "id": image_id,
        "status": "awaiting_upload",
        "method": "POST",
        "url": upload_url(settings, gateway_base),
        # Send these as they are, then the image as the last part, named "file".
        "fields": {"key": key, "Content-Type": request.content_type, **signed},
        "file_field": "file",
        "content_type": request.content_type,
        "max_bytes": limit,
        "expires_at": _iso(expires),
        "links": {"self": f"/v1/images/{image_id}"},
    }


def gateway_base(headers: Any, fallback: str) -> str:
    """The gateway's URL as the client used it (``X-Forwarded-Proto`` and
    ``X-Forwarded-Host``, set by nginx), else ``fallback`` (the configured gateway URL)."""
    host = headers.get("X-Forwarded-Host", "")
    proto = headers.get("X-Forwarded-Proto", "http")
    if not host or any(c in host for c in "/\\ @?#") or proto not in ("http", "https"):
        return fallback
    return f"{proto}://{host}"
