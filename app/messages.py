"""Every message imagerec puts on a Kafka topic, as typed models: the one definition.

The same classes validate what consumers read (``UploadEvent.from_bytes``), build what
producers write (``app.results`` fills ``ResultMessage``), and generate the AsyncAPI document
(``app.asyncapi``, served at ``GET /v1/asyncapi.json`` and committed as docs/asyncapi.json),
so the document cannot drift from the code.

Versions. Every JSON message carries ``v``, the major version of its schema. Adding an
optional field does not change it (consumers ignore fields they do not know); removing,
renaming or retyping a field, or changing what one means, does. A consumer that meets a ``v``
higher than it knows must not guess: imagerec's classify agent dead-letters such an upload
event (``error: unsupported message version N``) so it can be re-driven after the upgrade,
and its results agent skips such a result with an error log (the result document stays in
the ``classification-results`` bucket). Upgrade consumers before producers. A message
without ``v`` is version 1. docs/ARCHITECTURE.md ("Topics and messages") says the same for
people writing consumers.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.trace import clean_stamps

SCHEMA_VERSION = 1  # the highest message version this code reads and the one it writes
ULID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"

ImageId = Annotated[str, Field(pattern=ULID_PATTERN, description="the image id (a ULID)")]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"},
                                 description="UTC, ISO 8601 with milliseconds and Z")]
Version = Annotated[int, Field(ge=1, description="major version of this message's schema; "
                                                 "see the document's description")]


class Message(BaseModel):
    """Common settings: types are checked strictly (a JSON ``"1"`` is not a size), unknown
    fields are ignored (a newer producer may add optional ones), instances are immutable."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class BadEvent(ValueError):
    """A message on ``image-uploads`` that cannot be processed at all (goes to the DLQ)."""


def _bad_event(exc: ValidationError, data: Any) -> BadEvent:
    """One short, stable reason per message, in the words operators grep the DLQ for."""
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "json_invalid":
        return BadEvent(f"not JSON: {err['msg']}")
    if err["type"] in ("model_type", "model_attributes_type"):
        return BadEvent("not a JSON object")
    missing = [".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "missing"]
    if missing:
        return BadEvent(f"missing fields: {', '.join(missing)}")
    if loc in ("id", "reuse_of"):
        name = "image id" if loc == "id" else "reuse_of"
        return BadEvent(f"invalid {name} {data.get(loc) if isinstance(data, dict) else ''!r}")
    return BadEvent(f"field {loc!r}: {err['msg']}")


class UploadEvent(Message):
    """``image-uploads``: an image was stored in ``input-images`` and waits to be classified.

    Key: the image id. Written by the gateway's upload views, the ``image-upload`` function
    and the reconciler; read by the classify agent. Everything else about the image (its
    bytes, their format) is in the object store under the id."""

    topic_setting: ClassVar[str] = "topic_uploads"

    id: ImageId
    sha256: str = Field(description="hex SHA-256 of the original's bytes (empty when the "
                                    "reconciler re-enqueued an original without it)")
    format: str = Field(description="jpeg, png, webp, gif, bmp or tiff (from the bytes)")
    size: int = Field(ge=0, description="bytes")
    created_at: Timestamp
    request_id: str = Field("", description="the upload request's X-Request-ID")
    callback_url: str | None = Field(None, description="webhook to POST the result to")
    width: int = Field(0, ge=0, description="pixels; 0 when unknown")
    height: int = Field(0, ge=0, description="pixels; 0 when unknown")
    reconciled: bool = Field(False, description="re-enqueued by the reconciler")
    tenant: str = Field("", description="the uploader's tenant; empty only for events from "
                                        "before tenants existed")
    reuse_of: ImageId | None = Field(None, description="an earlier image with the same bytes "
                                     "and a finished result: its labels are copied instead "
                                     "of classifying again")
    source_key: str | None = Field(None, description="for an image written straight to "
                                   "storage: the object key under the drop prefix it came "
                                   "from; absent for uploads through the API")
    trace: dict[str, float] = Field(default_factory=dict, description="stage stamps taken "
                                    "before the event was produced (app.trace: received, "
                                    "accepted, original_stored, enqueued), epoch ms")
    v: Version = SCHEMA_VERSION

    @field_validator("trace", mode="before")
    @classmethod
    def _sane_stamps(cls, raw: Any) -> dict[str, float]:
        """A trace is information, never a reason to refuse an image: keep what is sane."""
        return clean_stamps(raw)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> UploadEvent:
        """Parse and validate one message; ``BadEvent`` (with a reason) if it cannot be
        processed, including a version newer than this code knows."""
        return _parse_event(cls, raw)


class Label(Message):
    """One ImageNet class and its score."""

    label: str
    class_id: int = Field(ge=0)
    score: float = Field(ge=0, le=1)


class ModelRef(Message):
    """Which model produced a result."""

    name: str
    version: str = Field(description="the variant's own version")
    variant: str | None = Field(None, description="fp32 or int8")
    engine: str | None = Field(None, description="the engine that ran it, e.g. litert-int8")


class ErrorBody(Message):
    """Why an image failed: a stable code and a message for humans."""

    code: str = Field(description="stable, machine-readable")
    message: str = Field(description="for humans; may change")




class HistoryEntry(Message):
    """One model version's answer for an image, as re-classification keeps them."""

    name: str | None
    version: str | None
    variant: str | None = None
    engine: str | None = None
    status: Literal["done", "failed"] | None
    completed_at: Timestamp | None = None


class ResultMessage(Message):
    """``image-results``: one image's finished result (``done`` or ``failed``).

    Key: the image id. Written by the classify agent after the result is stored in
    ``classification-results``; read by the results agent (table, Redis, webhooks) and by
    any other consumer. The same bytes are the stored result document; the HTTP API shows
    them without ``callback_url`` and with ``links``."""

    topic_setting: ClassVar[str] = "topic_results"

    id: ImageId
    status: Literal["done", "failed"] = Field(description="only final results are sent")
    sha256: str = Field(description="hex SHA-256 of the original's bytes")
    model: ModelRef | None = None
    labels: list[Label] = Field(default_factory=list,
                                description="best first, at most 25")
    error: ErrorBody | None = None
    created_at: Timestamp
    completed_at: Timestamp | None = None
    timings: dict[str, float] = Field(default_factory=dict,
                                      description="milliseconds per stage (queue_ms, "
                                                  "fetch_ms, decode_ms, inference_ms, "
                                                  "total_ms) and batch_size")
    request_id: str = ""
    callback_url: str | None = Field(None, description="the webhook, if the upload set one")
    tenant: str = ""
    source_key: str | None = Field(None, description="the drop key it came from, for an "
                                   "image written straight to storage")
    history: list[HistoryEntry] | None = Field(None, description="every model version that "
                                               "classified the image, oldest first; present "
                                               "once it was re-classified")
    reclassify_job: str | None = Field(None, description="the re-classification job that "
                                       "produced this answer (its webhook is not called "
                                       "again)")
    v: Version = SCHEMA_VERSION


class CallbackMessage(ResultMessage):
    """``image-callbacks``: a finished result whose upload asked for a webhook, queued for
    durable delivery. Exactly the bytes of its ``image-results`` message; key: the image id.
    Written by the results agent, read by the callbacks agent (``app.callbacks``)."""

    topic_setting: ClassVar[str] = "topic_callbacks"

    callback_url: str = Field(description="where the webhook goes")  # type: ignore[assignment]


class ReclassifyEvent(Message):
    """``image-reclassify``: a stored original to classify again with a job's model.

    Key: the image id. Written by a re-classification job's runner (``app.reclassify``),
    through its token bucket; read by the reclassify agent, which sends the merged result
    (with ``history``) to ``image-results``."""

    topic_setting: ClassVar[str] = "topic_reclassify"

    id: ImageId
    model: str = Field(description="the model to run, NAME:VERSION")
    job: str = Field(description="the job's id")
    enqueued_at: Timestamp | None = None
    v: Version = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> ReclassifyEvent:
        """Parse and validate; ``BadEvent`` (the message goes to the DLQ) if unusable."""
        return _parse_event(cls, raw)


class DropObject(Message):
    """The object of a bucket notification record (S3's event message structure)."""

    key: str = Field(description="URL-encoded, as S3 event messages carry it")
    size: int = Field(0, ge=0)
    eTag: str = ""  # noqa: N815 - S3's own field names
    sequencer: str = ""


class DropBucket(Message):
    name: str


class DropS3(Message):
    bucket: DropBucket
    object: DropObject


class DropRecord(Message):
    """One record: an object was created (or removed) under the drop prefix."""

    eventName: str = Field(description="e.g. s3:ObjectCreated:Put")  # noqa: N815
    eventTime: Timestamp  # noqa: N815
    s3: DropS3


class DropNotification(Message):
    """``image-drops``: MinIO's bucket notification for an object written under the drop
    prefix of ``input-images`` (S3's event message structure; only the fields imagerec
    reads are listed, others are ignored). Written by MinIO itself (its Kafka target,
    configured by provisioning), read by the drops agent (``app.drops``), which turns it
    into an ordinary upload event. Key: ``<bucket>/<object key>``. It carries no ``v``:
    its format is MinIO's."""

    topic_setting: ClassVar[str] = "topic_drops"

    model_config = ConfigDict(strict=False, extra="ignore", frozen=True)
    EventName: str | None = None  # noqa: N815
    Key: str | None = None  # noqa: N815
    Records: list[DropRecord]  # noqa: N815


class DeadLetterHeaders(Message):
    """``image-uploads-dlq`` headers: why and when a message was dead-lettered. The value is
    the rejected message's bytes, unchanged (not necessarily JSON); re-drive it to
    ``source-topic`` once the cause is fixed."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True,
                              populate_by_name=True)
    topic_setting: ClassVar[str] = "topic_dlq"

    error: str = Field(description="the reason, e.g. 'not JSON: ...', 'unsupported "
                                   "message version 2 ...'")
    source_topic: str = Field(alias="source-topic", description="where it was read "
                              "(image-uploads, image-reclassify or image-drops)")
    failed_at: Timestamp = Field(alias="failed-at")
    # Header values are strings on the wire, so these are decimal strings.
    source_partition: str | None = Field(default=None, alias="source-partition",
                                         pattern=r"^[0-9]+$",
                                         description="partition it was read from, where known")
    source_offset: str | None = Field(default=None, alias="source-offset",
                                      pattern=r"^[0-9]+$",
                                      description="its offset there (the console shows both)")

    def to_headers(self) -> dict[str, bytes]:
        """Kafka headers (values capped: a header is not a place for a whole stack trace)."""
        return {k: v.encode()[:1000]
                for k, v in self.model_dump(by_alias=True, exclude_none=True).items()}


# Every topic's message, for the AsyncAPI document and for tests; a new topic adds a line.
TOPIC_MESSAGES: tuple[type[Message], ...] = (UploadEvent, ResultMessage, CallbackMessage,
                                             DeadLetterHeaders, ReclassifyEvent,
                                             DropNotification)


def known_version(message: dict[str, Any]) -> bool:
    """Whether this code may read a decoded message: ``v`` absent (1) or not above ours."""
    version = message.get("v", 1)
    return not isinstance(version, int) or isinstance(version, bool) \
        or version <= SCHEMA_VERSION


_Event = TypeVar("_Event", bound="Message")


def _parse_event(cls: type[_Event], raw: bytes | None) -> _Event:
    """The one way an agent reads a JSON event: ``BadEvent`` with a reason (the message goes
    to the DLQ) for empty, non-JSON, non-object, newer-version or invalid messages."""
    if not raw:
        raise BadEvent("empty message")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadEvent(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadEvent("not a JSON object")
    if not known_version(data):
        raise BadEvent(f"unsupported message version {data['v']} (this worker reads up "
                       f"to {SCHEMA_VERSION})")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _bad_event(exc, data) from exc
