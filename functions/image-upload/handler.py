"""OpenFaaS function ``image-upload``: the serverless twin of ``POST /v1/images`` (one image).

Body: the raw image (``Content-Type: image/*``) or multipart/form-data with one field
``file``; optional ``callback_url`` as a query parameter or multipart field. Answers 202 with
``{id, status, sha256, links}`` once the original is stored and Kafka acknowledged the event,
or 200 with the earlier result of identical bytes, exactly like the Faust view: both call
``app.ingest.accept``. Errors: 400, 413, 415, 422, and 503 with Retry-After.

The image belongs to the caller's tenant, which the gateway's key check sets in
``X-Api-Tenant`` (``app.tenancy``); a request without it (one that did not pass the gateway)
is a 401.

Runs with the ``uploader`` MinIO key (``app.stack.iam``): it can add originals, not read,
list or delete them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# In an OpenFaaS image faas-cli copies app/ and functions/common/ next to this file
# (stack.yml `configuration.copy`); locally the repository root is already on sys.path.
_HERE = Path(__file__).resolve().parent
if (_HERE / "app").is_dir() and str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from functions.common import support  # noqa: E402

support.load_openfaas_secrets({
    "imagerec-uploader-s3-access-key": "IMAGEREC_S3_ACCESS_KEY",
    "imagerec-uploader-s3-secret-key": "IMAGEREC_S3_SECRET_KEY",
    "imagerec-redis-url": "IMAGEREC_REDIS_URL",
})

from app import ingest, metrics, trace  # noqa: E402
from app.broker import get_publisher  # noqa: E402
from app.runtime import current_model_ref  # noqa: E402
from app.settings import get_settings  # noqa: E402
from app.tenancy import from_headers  # noqa: E402

support.setup_logging("fn-image-upload")
LOOP = support.BackgroundLoop("image-upload")
LOOP.at_exit(lambda: get_publisher().stop())


def handle(event: Any, context: Any) -> dict[str, Any]:
    """Accept one image for asynchronous classification."""
    if event.method != "POST":
        return support.method_not_allowed("POST")
    who = from_headers(event.headers)
    if who is None:
        return support.error_body(401, "unauthorized", "missing API key: call this function "
                                  "through the gateway with Authorization: Bearer KEY")
    stamps = trace.upload_stamps(lambda name: support.header(event, name))
    try:
        data, fields = support.read_image(event, get_settings().max_upload_bytes)
        callback_url = fields.get("callback_url") or event.query.get("callback_url")
        rid = support.request_id(event)
        status, body = LOOP.run(ingest.accept(
            data, tenant=who.tenant, request_id=rid, callback_url=callback_url,
            model_ref=current_model_ref, stamps=stamps),
            request_id=rid)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the API's JSON error
        return support.error_response(exc)
    if status == 202:  # counted like the API's uploads: one uploads rate for both ways in
        metrics.IMAGES_RECEIVED.labels(via="function").inc()
    return support.json_response(status, body)
