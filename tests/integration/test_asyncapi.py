"""The AsyncAPI document is true: messages read back from every topic of the running stack
validate against the schemas of the document the gateway serves.

One upload that is classified and asks for a webhook (its ``image-uploads``, ``image-results``
and ``image-callbacks`` messages), one event whose original does not exist (a ``failed``
result), one unreadable message (its ``image-uploads-dlq`` copy with the headers), one
presigned upload (MinIO's ``image-drops`` notification) and a re-classification job over it
(its ``image-reclassify`` message).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import jsonschema
import pytest
import urllib3

from app import results as res
from app.ids import new_image_id
from imagerec.client import Client
from tests.conftest import photo_variants
from tests.kafkatools import end_offsets, produce, read_from

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def document(settings) -> dict[str, Any]:  # noqa: ANN001
    resp = urllib3.PoolManager(retries=False).request(
        "GET", settings.gateway_url.rstrip("/") + "/v1/asyncapi.json")  # no key: open
    assert resp.status == 200, resp.data[:300]
    assert resp.headers["Content-Type"].startswith("application/json")
    doc = json.loads(resp.data)
    assert doc["asyncapi"] == "3.0.0"
    return doc


def _validate(doc: dict[str, Any], topic: str, value: Any, part: str = "payload") -> str:
    """Validate one message part against the schema of the channel with ``address`` topic;
    returns the message's name."""
    channel = next(c for c in doc["channels"].values() if c["address"] == topic)
    (ref,) = [m["$ref"] for m in channel["messages"].values()]
    message = doc["components"]["messages"][ref.rsplit("/", 1)[1]]
    schema = {**message[part], "components": doc["components"]}
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(
        value)
    return message["name"]


def _by_key(records: list[Any], *keys: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {k: [] for k in keys}
    for record in records:
        key = (record.key or b"").decode(errors="replace")
        if key in out:
            out[key].append(record)
    return out


def test_messages_on_every_topic_validate_against_the_served_document(
        document, settings, gateway, receiver) -> None:  # noqa: ANN001
    topics = {name: getattr(settings, name) for name in
              ("topic_uploads", "topic_results", "topic_callbacks", "topic_dlq")}
    start = {name: end_offsets(settings.kafka_bootstrap, topic) for name, topic in topics.items()}

    # A good upload with a webhook: image-uploads, image-results, image-callbacks.
    fields = {"file": ("p.jpg", photo_variants(1, seed=secrets.randbits(48))[0], "image/jpeg"),
              "callback_url": receiver.url}
    body, ctype = urllib3.encode_multipart_formdata(fields)
    reply = gateway.post_raw("/v1/images", body, ctype)
    assert reply.status == 202, reply.body[:300]
    good = reply.json()["id"]
    done = gateway.wait_done(good)
    assert done["status"] == "done"
    # An event whose original is not stored (of our tenant, so we may read it): failed.
    missing = res.UploadEvent(id=new_image_id(), sha256="0" * 64, format="jpeg", size=10,
                              created_at=res.now_iso(), tenant=done["tenant"])
    # Not an event at all: dead-lettered with its reason.
    garbage = b"not json " + secrets.token_hex(8).encode()
    produce(settings.kafka_bootstrap, topics["topic_uploads"],
            [(missing.id.encode(), missing.to_bytes()), (None, garbage)])
    assert gateway.wait_done(missing.id)["status"] == "failed"
    receiver.received.get(timeout=60)  # delivered, so it went through image-callbacks

    def read(name: str, until: Any) -> list[Any]:
        return read_from(settings.kafka_bootstrap, topics[name], start[name], until, 60)

    def both(records: list[Any]) -> bool:
        return all(_by_key(records, good, missing.id).values())

    uploads = _by_key(read("topic_uploads", both), good, missing.id)
    results = _by_key(read("topic_results", both), good, missing.id)
    callbacks = _by_key(read("topic_callbacks", lambda r: _by_key(r, good)[good]), good)
    dead = [r for r in read("topic_dlq", lambda rs: any(r.value == garbage for r in rs))
            if r.value == garbage]

    checked: dict[str, int] = {}
    for name, records in [("topic_uploads", uploads[good] + uploads[missing.id]),
                          ("topic_results", results[good] + results[missing.id]),
                          ("topic_callbacks", callbacks[good])]:
        assert records, f"nothing read back from {topics[name]}"
        for record in records:
            value = json.loads(record.value)
            message = _validate(document, topics[name], value)
            checked[message] = checked.get(message, 0) + 1
            assert record.key.decode() == value["id"]
    statuses = {json.loads(r.value)["status"] for r in results[good] + results[missing.id]}
    assert statuses == {"done", "failed"}
    assert json.loads(callbacks[good][0].value)["callback_url"] == receiver.url

    assert len(dead) == 1, "the unreadable message was not dead-lettered"
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert _validate(document, topics["topic_dlq"], headers, part="headers") == "dead-letter"
    assert headers["source-topic"] == topics["topic_uploads"] and "not JSON" in headers["error"]
    print(f"validated against /v1/asyncapi.json: {checked}, dead-letter: 1")
    assert set(checked) == {"upload-event", "result", "callback"}

    # The document's schemas are not vacuous: a result without its status fails them.
    broken = {k: v for k, v in json.loads(results[good][0].value).items() if k != "status"}
    with pytest.raises(jsonschema.ValidationError):
        _validate(document, topics["topic_results"], broken)


def test_drop_and_reclassify_messages_validate_against_the_served_document(
        document, settings, gateway, make_tenant_key) -> None:  # noqa: ANN001
    drops_start = end_offsets(settings.kafka_bootstrap, settings.topic_drops)
    again_start = end_offsets(settings.kafka_bootstrap, settings.topic_reclassify)
    since = res.now_iso()
    with Client(gateway.base, gateway.api_key) as client:
        form = client.upload_presigned(photo_variants(1, seed=secrets.randbits(48))[0])
        result = client.wait(form["id"], timeout=120)
    assert result["status"] == "done"
    key = form["fields"]["key"]

    def drop_of(records: list[Any]) -> list[Any]:
        return [r for r in records if key in json.loads(r.value).get("Key", "")]

    (notification,) = drop_of(read_from(settings.kafka_bootstrap, settings.topic_drops,
                                        drops_start, drop_of, 60))
    assert _validate(document, settings.topic_drops,
                     json.loads(notification.value)) == "drop-notification"

    admin = make_tenant_key("asyncapi-admin", scopes="admin")
    started = admin.gateway.post_raw("/v1/admin/reclassify", json.dumps(
        {"model": settings.default_model, "since": since, "prefix": key}).encode(),
        "application/json")
    assert started.status == 202, started.body[:300]

    def ours(records: list[Any]) -> list[Any]:
        return [r for r in records if (r.key or b"").decode() == form["id"]]

    enqueued = ours(read_from(settings.kafka_bootstrap, settings.topic_reclassify,
                              again_start, ours, 60))
    assert enqueued, "the job enqueued nothing"
    for record in enqueued:
        event = json.loads(record.value)
        assert _validate(document, settings.topic_reclassify, event) == "reclassify-event"
        assert event["job"] == started.json()["id"]
    print(f"validated: 1 drop notification, {len(enqueued)} reclassify event(s)")
