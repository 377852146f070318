"""The topics' message models and the AsyncAPI document generated from them.

The committed docs/asyncapi.json must be what the code generates, and a valid AsyncAPI 3.0
document by the specification's own JSON Schema (from the npm package @asyncapi/specs,
installed by scripts/install.sh). The messages imagerec builds must validate against the
document's schemas; what the topic tests read back from a running stack is checked the same
way in tests/integration/test_asyncapi.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from app import asyncapi
from app import messages as msg
from app import results as res
from app.ids import new_image_id
from app.settings import get_settings

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "asyncapi.json"


def _event(**kw: object) -> msg.UploadEvent:
    fields: dict = dict(id=new_image_id(), sha256="a" * 64, format="jpeg", size=10,
                        created_at=res.now_iso(), tenant="t1")
    fields.update(kw)
    return msg.UploadEvent(**fields)


def test_committed_document_is_the_generated_one() -> None:
    assert DOC.read_text() == asyncapi.render(), \
        "docs/asyncapi.json is stale: run `python -m app.asyncapi > docs/asyncapi.json`"


def test_document_is_valid_asyncapi_3() -> None:
    schemas = get_settings().home / "npm" / "asyncapi-specs" / "schemas"
    spec = json.loads((schemas / "3.0.0-without-$id.json").read_text())
    validator = jsonschema.Draft7Validator(spec)
    doc = asyncapi.build()
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(doc)]
    assert not errors
    broken = json.loads(json.dumps(doc))
    broken["operations"]["sendImageUploads"]["action"] = "publish"  # AsyncAPI 2's word
    assert list(validator.iter_errors(broken)), "the specification's schema checks nothing"


def test_document_covers_every_topic_with_the_served_names() -> None:
    settings = get_settings().model_copy(update={"topic_results": "r2"})
    doc = asyncapi.build(settings)
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == set(settings.topics)  # every topic the stack creates
    assert "r2" in addresses and "image-results" not in addresses
    for channel in doc["channels"].values():
        assert channel["bindings"]["kafka"]["topic"] == channel["address"]
    assert {m.__name__ for m in msg.TOPIC_MESSAGES} <= set(doc["components"]["schemas"])


def _validator(doc: dict, message: str) -> jsonschema.Draft202012Validator:
    """A validator for one message's payload, resolving $refs inside the document."""
    payload = doc["components"]["messages"][message]["payload"]
    return jsonschema.Draft202012Validator({**payload, "components": doc["components"]})


def test_what_imagerec_builds_validates_against_the_document() -> None:
    doc = asyncapi.build()
    event = _event(callback_url="http://127.0.0.2:9/hook")
    _validator(doc, "UploadEvent").validate(json.loads(event.to_bytes()))
    labels = [{"label": "tabby", "class_id": 281, "score": 0.9}]
    model = {"name": "m", "version": "1", "variant": "int8", "engine": "litert-int8"}
    timings = res.Timings(fetch_ms=1.5, extra={"batch_size": 3.0})
    done = json.loads(res.encode(res.done(event, model, labels, timings)))
    failed = json.loads(res.encode(res.failed(event, "undecodable", "bad", res.Timings())))
    for result in (done, failed):
        _validator(doc, "Result").validate(result)
        _validator(doc, "Callback").validate(result)  # it has a callback_url
        assert msg.ResultMessage.model_validate(result).id == event.id
    no_hook = json.loads(res.encode(res.done(_event(), model, labels, timings)))
    _validator(doc, "Result").validate(no_hook)
    with pytest.raises(jsonschema.ValidationError):
        _validator(doc, "Callback").validate(no_hook)
    with pytest.raises(jsonschema.ValidationError):  # queued results never go on the topic
        _validator(doc, "Result").validate(json.loads(res.encode(res.queued(event))))
    headers = msg.DeadLetterHeaders(error="not JSON", source_topic="image-uploads",
                                    failed_at=res.now_iso()).to_headers()
    head_schema = doc["components"]["messages"]["DeadLetter"]["headers"]
    jsonschema.Draft202012Validator({**head_schema, "components": doc["components"]}).validate(
        {k: v.decode() for k, v in headers.items()})


def test_event_round_trip_ignores_unknown_fields_and_refuses_newer_versions() -> None:
    event = _event()
    data = json.loads(event.to_bytes())
    assert msg.UploadEvent.from_bytes(json.dumps({**data, "added_later": 1}).encode()) == event
    legacy = {k: v for k, v in data.items() if k != "v"}  # no v: version 1
    assert msg.UploadEvent.from_bytes(json.dumps(legacy).encode()) == event
    with pytest.raises(msg.BadEvent, match="unsupported message version 2"):
        msg.UploadEvent.from_bytes(json.dumps({**data, "v": 2}).encode())
    for bad_version in (0, "1", True):
        with pytest.raises(msg.BadEvent):
            msg.UploadEvent.from_bytes(json.dumps({**data, "v": bad_version}).encode())
    assert msg.known_version({"v": 1}) and msg.known_version({})
    assert not msg.known_version({"v": msg.SCHEMA_VERSION + 1})


def test_an_invalid_event_cannot_even_be_built() -> None:
    with pytest.raises(ValueError, match="id"):
        _event(id="../../x")
    with pytest.raises(ValueError, match="size"):
        _event(size=-1)


def test_reclassify_events_and_drop_notifications_validate_against_the_document() -> None:
    from app import reclassify

    doc = asyncapi.build()
    raw = reclassify.encode_event(new_image_id(), "efficientnet_lite0:1", "job1")
    _validator(doc, "ReclassifyEvent").validate(json.loads(raw))
    assert msg.ReclassifyEvent.from_bytes(raw).job == "job1"
    with pytest.raises(msg.BadEvent, match="unsupported message version"):
        msg.ReclassifyEvent.from_bytes(raw.replace(b'"v":1', b'"v":9'))
    notification = {  # what MinIO sends, trimmed (tests/integration reads real ones)
        "EventName": "s3:ObjectCreated:Put", "Key": "input-images/incoming/dev/a.jpg",
        "Records": [{"eventVersion": "2.0", "eventSource": "minio:s3",
                     "eventName": "s3:ObjectCreated:Put",
                     "eventTime": "2026-12-03T00:00:00.123Z",
                     "s3": {"bucket": {"name": "input-images"},
                            "object": {"key": "incoming%2Fdev%2Fa.jpg", "size": 10,
                                       "eTag": "abc", "sequencer": "18ED"}}}]}
    _validator(doc, "DropNotification").validate(notification)
    with pytest.raises(jsonschema.ValidationError):
        _validator(doc, "DropNotification").validate({"Records": [{"eventName": "x"}]})
