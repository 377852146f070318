"""One image's journey: the stages it passed, each stamped with the wall-clock time it ended.

Every process on the path stamps the stage it owns into the upload event or the result
(epoch milliseconds under ``trace.stamps``), so one document tells where the time went from
the gateway to the cache, and ``GET /v1/images/{id}?trace=1``, ``imagerec trace ID`` and the
web page all draw the same waterfall from :func:`waterfall`.

Where each stamp is taken (the stage ends at its stamp; its duration is the gap since the
previous stamp):

- ``received``: Nginx read the request line (``$msec - $request_time``, forwarded in
  ``X-Request-Start``), so body upload, the key check and proxying count in ``accepted``.
- ``accepted``, ``original_stored``, ``enqueued``: the upload view (app.ingest), before the
  event is produced, so they travel in the event itself. ``enqueued`` is then replaced by
  the broker's append time, which ``image-uploads`` records (LogAppendTime,
  app.stack.provision), so producing (linger, the broker's write) shows as its own stage.
- ``batch_started``, ``inferred``: the classify agent (with the event's partition and offset
  on ``image-uploads``), so they are in the result as stored in MinIO.
- ``stored``, ``sent``: the classify agent once the result is in MinIO and when the batch's
  results are handed to Kafka; they ride in the ``image-results`` message's headers because
  the message body is the stored document, byte for byte.
- ``cached``: the results agent, just before it writes the table and Redis, so the copies
  there (which answer almost every GET) hold the whole journey. The MinIO copy ends at
  ``inferred``.

All stamps come from one machine's clock in the local stack; across machines the gaps
between stages on different hosts include their clock offset (NTP keeps it to a few ms).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

# (stage, what happened when it ended): the one list the API, its OpenAPI schema, the CLI
# and the page share.
STAGES: tuple[tuple[str, str], ...] = (
    ("received", "the gateway (Nginx) started reading the request"),
    ("accepted", "a worker's upload view got the request (body, key check, proxying)"),
    ("original_stored", "the original is in the input-images bucket"),
    ("enqueued", "the upload event is in Kafka's log (image-uploads; the broker's append "
                 "time, or when it was handed to Kafka on an older topic)"),
    ("batch_started", "the classify agent took the event in a batch (Kafka, batch window, "
                      "previous batch)"),
    ("inferred", "fetched, decoded and classified with the rest of its batch"),
    ("stored", "model input and result are in MinIO"),
    ("sent", "the batch's results were handed to Kafka (image-results)"),
    ("cached", "the results agent got the result and writes the table and Redis"),
)
STAGE_NAMES: tuple[str, ...] = tuple(name for name, _ in STAGES)
# Stamps that ride in the image-results message's headers (see the module docstring).
HEADER_PREFIX = "trace-"
HEADER_STAGES = ("stored", "sent")
MAX_STAMP_MS = 1e14  # year 5138: anything larger is garbage, not a time


def now_ms() -> float:
    """Wall-clock time in epoch milliseconds (stages are compared across processes)."""
    return round(time.time() * 1000, 3)


def gateway_received_ms(request_start: str | None, elapsed: str | None) -> float | None:
    """When Nginx started reading the request, from the two headers the gateway sets:
    ``X-Request-Start`` (``$msec`` when it proxied) and ``X-Request-Elapsed``
    (``$request_time``, seconds since it read the first bytes). None when absent or odd
    (a request that did not come through the gateway)."""
    try:
        start = float((request_start or "").removeprefix("t="))
        spent = float(elapsed or "0")
    except ValueError:
        return None
    received = (start - spent) * 1000
    if not 0 < received < MAX_STAMP_MS or spent < 0:
        return None
    return round(received, 3)


REQUEST_START_HEADER = "X-Request-Start"
REQUEST_ELAPSED_HEADER = "X-Request-Elapsed"


def upload_stamps(header: Any) -> dict[str, float]:
    """The first two stamps of an upload: ``received`` (the gateway's headers, read with
    ``header(name)``) when it came through the gateway, and ``accepted`` (now)."""
    stamps = {"accepted": now_ms()}
    received = gateway_received_ms(header(REQUEST_START_HEADER),
                                   header(REQUEST_ELAPSED_HEADER))
    if received is not None and received <= stamps["accepted"]:
        stamps["received"] = received
    return stamps


def clean_stamps(raw: Any) -> dict[str, float]:
    """Only known stages with plausible numeric times (events come from a topic anyone
    with access can write to)."""
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, float] = {}
    for name, value in raw.items():
        if name in STAGE_NAMES and isinstance(value, int | float) \
                and not isinstance(value, bool) and 0 < value < MAX_STAMP_MS:
            out[name] = float(value)
    return out


def headers_for(stamps: Mapping[str, float]) -> list[tuple[str, bytes]]:
    """The ``stored``/``sent`` stamps as Kafka headers of the result message."""
    return [(HEADER_PREFIX + name, f"{stamps[name]:.3f}".encode())
            for name in HEADER_STAGES if name in stamps]


def stamps_from_headers(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None
                        ) -> dict[str, float]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    found: dict[str, Any] = {}
    for key, value in items:
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name.startswith(HEADER_PREFIX):
            try:
                found[name[len(HEADER_PREFIX):]] = float(value)
            except (TypeError, ValueError):
                continue
    return clean_stamps(found)


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def waterfall(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result's trace as clients see it: the stages it has, in path order, each with
    its time, its offset from the first stage and its own duration (the gap since the
    previous stage), plus the total from the first to the last stage and the ids that tie
    it to the log lines (``imagerec logs --image ID``).

    Stages run in this order by construction; a stamp earlier than the one before it (clock
    steps between hosts) gets a duration of 0 rather than a negative bar."""
    trace = result.get("trace") if isinstance(result.get("trace"), Mapping) else {}
    stamps = clean_stamps(trace.get("stamps"))
    stages: list[dict[str, Any]] = []
    first = previous = None
    for name, description in STAGES:
        at = stamps.get(name)
        if at is None:
            continue
        if first is None:
            first = previous = at
        stages.append({"stage": name, "at": _iso(at), "offset_ms": round(at - first, 2),
                       "ms": round(max(0.0, at - previous), 2), "what": description})
        previous = max(previous, at)
    total = round(previous - first, 2) if first is not None and previous is not None else 0.0
    out: dict[str, Any] = {
        "request_id": result.get("request_id") or trace.get("request_id") or "",
        "stages": stages,
        "total_ms": total,
        "complete": [s["stage"] for s in stages] == list(STAGE_NAMES),
    }
    for key in ("partition", "offset", "worker", "batch_size"):
        if trace.get(key) is not None:
            out[key] = trace[key]
    return out
