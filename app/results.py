"""The result document: building, encoding and filtering it.

Its schema, and the upload event's, are the models in ``app.messages`` (the AsyncAPI
document is generated from them). Results stay plain JSON dicts here, not model instances,
so that the table, Redis, the ``classification-results`` bucket, the ``image-results`` topic,
SSE and the HTTP API all carry byte-for-byte the same document, and so that nothing on the
classify agent's path can raise on a field a borrowed earlier result lacks; unit tests and
the topic tests (tests/integration/test_asyncapi.py) hold these dicts to the models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from app import trace as tr

# Re-exported: the agents and the ingest code know them as res.UploadEvent, res.BadEvent.
from app.messages import SCHEMA_VERSION, BadEvent, UploadEvent  # noqa: F401

STORED_LABELS = 25  # how many labels a result keeps; `top_k` can ask for up to this many
PRIVATE_FIELDS = ("callback_url",)  # stored with the result, never shown to clients
# Stored with the result, shown only when asked for (``?trace=1``): it is for operators.
TRACE_FIELD = "trace"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_in(seconds: float) -> str:
    """``now_iso()`` ``seconds`` from now (when the next webhook attempt is due)."""
    from datetime import timedelta

    when = datetime.now(UTC) + timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Timings:
    """Milliseconds spent in each stage, recorded in every finished result."""

    queue_ms: float = 0.0
    fetch_ms: float = 0.0
    decode_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float]:
        out = {k: round(v, 2) for k, v in asdict(self).items() if k != "extra"}
        out.update({k: round(v, 2) for k, v in self.extra.items()})
        return out


def _base(event: UploadEvent, status: str) -> dict[str, Any]:
    return {
        "id": event.id,
        "status": status,
        "sha256": event.sha256,
        "model": None,
        "labels": [],
        "error": None,
        "created_at": event.created_at,
        "completed_at": None,
        "timings": {},
        "request_id": event.request_id,
        "callback_url": event.callback_url,
        "tenant": event.tenant,
        "trace": {"stamps": dict(event.trace)},
        "v": SCHEMA_VERSION,
    } | ({"source_key": event.source_key} if event.source_key is not None else {})


def queued(event: UploadEvent, status: str = "queued") -> dict[str, Any]:
    return _base(event, status)


def done(event: UploadEvent, model: dict[str, str], labels: list[dict[str, Any]],
         timings: Timings) -> dict[str, Any]:
    result = _base(event, "done")
    result.update(model=model, labels=labels[:STORED_LABELS], completed_at=now_iso(),
                  timings=timings.to_dict())
    return result


def failed(event: UploadEvent, code: str, message: str, timings: Timings,
           model: dict[str, str] | None = None) -> dict[str, Any]:
    result = _base(event, "failed")
    result.update(model=model, error={"code": code, "message": message},
                  completed_at=now_iso(), timings=timings.to_dict())
    return result


def encode(result: dict[str, Any]) -> bytes:
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()


def decode(raw: bytes | str) -> dict[str, Any]:
    return json.loads(raw)


def is_final(result: dict[str, Any] | None) -> bool:
    return bool(result) and result.get("status") in ("done", "failed")


def view(result: dict[str, Any], *, top_k: int = 5, min_score: float = 0.0,
         source: str | None = None, trace: bool = False) -> dict[str, Any]:
    """What a client sees: labels cut to ``top_k`` and ``min_score``, plus links and source;
    with ``trace``, the stages the image went through (app.trace.waterfall)."""
    out = {k: v for k, v in result.items() if k not in PRIVATE_FIELDS and k != TRACE_FIELD}
    if trace:
        out[TRACE_FIELD] = tr.waterfall(result)
    out["labels"] = [lab for lab in result.get("labels", []) if lab["score"] >= min_score][:top_k]
    out["links"] = {"self": f"/v1/images/{result['id']}"} if result.get("id") else {}
    # Only a classified image surely has a stored model input (a failed one may have
    # failed before decoding), so clients never get a link that is bound to 404.
    if out["links"] and result.get("status") == "done":
        out["links"]["input"] = f"/v1/images/{result['id']}/input"
    if source:
        out["source"] = source
    return out
