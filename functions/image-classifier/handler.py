"""OpenFaaS function ``image-classifier``: the serverless twin of ``POST /v1/classify``.

Body: the raw image (``Content-Type: image/*``) or multipart/form-data with one field
``file``. Query: ``top_k`` (0..25, default 5), ``min_score`` (0..1). Answers 200 with
``{status, model, labels: [{label, class_id, score}], timings}`` synchronously: no queue,
nothing stored. Same code path as the Faust view (``app.pipeline.classify_now`` with the
process's ``app.runtime`` classifier), so the same model gives the same labels.

The model is loaded when the function starts, not on the first request, and then follows
the registry's default like the workers do. Runs with the ``classifier`` MinIO key
(``app.stack.iam``): it can read the ``models`` bucket and nothing else.
"""

from __future__ import annotations

import asyncio
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
    "imagerec-classifier-s3-access-key": "IMAGEREC_S3_ACCESS_KEY",
    "imagerec-classifier-s3-secret-key": "IMAGEREC_S3_SECRET_KEY",
})

from app.errors import DependencyDown  # noqa: E402
from app.logs import get_logger  # noqa: E402
from app.pipeline import classify_now  # noqa: E402
from app.results import STORED_LABELS  # noqa: E402
from app.runtime import get_classifier  # noqa: E402
from app.settings import get_settings  # noqa: E402

support.setup_logging("fn-image-classifier")
log = get_logger(__name__)
LOOP = support.BackgroundLoop("image-classifier")
LOAD_RETRY_S = 5.0


async def _classify(data: bytes, top_k: int, min_score: float) -> dict[str, Any]:
    try:
        classifier = await get_classifier()
    except Exception as exc:  # the model store is unreachable: the client retries (503)
        raise DependencyDown("model", f"the model cannot be loaded: {type(exc).__name__}"
                             ) from exc
    return await classify_now(data, classifier, top_k, min_score)


async def _load_and_follow_default() -> None:
    """Load the model now (a cold first request would wait for it), then switch when an admin
    changes the default. A failed load (store down) is retried; requests retry it too."""
    while True:
        try:
            classifier = await get_classifier()
            break
        except Exception as exc:  # noqa: BLE001 - keep trying; the function stays up
            log.warning("model load failed; retrying", error=repr(exc)[:300],
                        retry_in_s=LOAD_RETRY_S)
            await asyncio.sleep(LOAD_RETRY_S)
    log.info("model ready", model=classifier.model.ref)
    await classifier.watch_default()


_follower = LOOP.submit(_load_and_follow_default())


def handle(event: Any, context: Any) -> dict[str, Any]:
    """Classify one image and answer with its labels."""
    if event.method != "POST":
        return support.method_not_allowed("POST")
    try:
        top_k = support.int_param(event.query, "top_k", 5, 0, STORED_LABELS)
        min_score = support.float_param(event.query, "min_score", 0.0, 0.0, 1.0)
        data, _ = support.read_image(event, get_settings().max_upload_bytes)
        body = LOOP.run(_classify(data, top_k, min_score),
                        request_id=support.request_id(event))
    except Exception as exc:  # noqa: BLE001 - every failure becomes the API's JSON error
        return support.error_response(exc)
    return support.json_response(200, body)
