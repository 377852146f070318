"""The AsyncAPI 3.0 document of imagerec's Kafka topics, generated from ``app.messages``.

Served at ``GET /v1/asyncapi.json`` (web/openapi.py) and committed as docs/asyncapi.json
(``python -m app.asyncapi > docs/asyncapi.json`` rewrites it; a unit test fails when the committed
file differs from what the code generates). Payload schemas are the models' JSON Schemas,
lifted into ``components.schemas``; pydantic writes nothing that AsyncAPI's Schema Object (a
JSON Schema draft-07 superset) does not know.

Settings-dependent values (topic names, partitions, the broker) come from the defaults in the
committed document, so it is the same on every machine; the served one is built from the
running settings, so it names the topics the stack really uses.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import models_json_schema

from app import messages as msg
from app.settings import Settings

REF = "#/components/schemas/{model}"
KAFKA_BINDING = "0.5.0"


def _channel_id(topic: str) -> str:
    """``image-uploads-dlq`` -> ``imageUploadsDlq``: AsyncAPI ids are plain identifiers."""
    first, *rest = topic.split("-")
    return first + "".join(part.capitalize() for part in rest)


def _schemas() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every model's schema under components.schemas, and each model's own $ref."""
    keyed, defs = models_json_schema([(model, "validation") for model in msg.TOPIC_MESSAGES],
                                     ref_template=REF)
    refs = {model.__name__: keyed[(model, "validation")] for model in msg.TOPIC_MESSAGES}
    return defs.get("$defs", {}), refs


def _kafka_key() -> dict[str, Any]:
    return {"kafka": {"key": {"type": "string", "pattern": msg.ULID_PATTERN,
                              "description": "the image id"},
                      "bindingVersion": KAFKA_BINDING}}


def build(settings: Settings | None = None) -> dict[str, Any]:
    """The whole document as a dict, with keys in a stable order."""
    settings = settings or Settings.model_construct()  # the defaults: no env, no files
    schemas, refs = _schemas()

    def json_message(model: type[msg.Message], name: str, summary: str) -> dict[str, Any]:
        return {"name": name, "title": model.__name__, "summary": summary,
                "contentType": "application/json", "payload": refs[model.__name__],
                "bindings": _kafka_key()}

    messages = {
        "UploadEvent": json_message(msg.UploadEvent, "upload-event",
                                    "An image was stored and waits to be classified."),
        "Result": json_message(msg.ResultMessage, "result",
                               "An image's final result (done or failed)."),
        "Callback": json_message(msg.CallbackMessage, "callback",
                                 "A final result whose webhook is to be delivered."),
        "ReclassifyEvent": json_message(msg.ReclassifyEvent, "reclassify-event",
                                        "A stored image to classify again with a model."),
        "DropNotification": {
            **json_message(msg.DropNotification, "drop-notification",
                           "An object was written under the drop prefix (by MinIO)."),
            "bindings": {"kafka": {"key": {"type": "string",
                                           "description": "<bucket>/<object key>"},
                                   "bindingVersion": KAFKA_BINDING}},
        },
        "DeadLetter": {
            "name": "dead-letter", "title": "DeadLetter",
            "summary": "A message that could not be processed, unchanged.",
            "contentType": "application/octet-stream",
            "headers": refs["DeadLetterHeaders"],
            "payload": {"description": "the rejected message's bytes, exactly as read "
                                       "(possibly not JSON, possibly empty)"},
            "bindings": {"kafka": {"key": {"description": "none: the key is not kept"},
                                   "bindingVersion": KAFKA_BINDING}},
        },
    }
    topics = [  # (topic, message, description)
        (settings.topic_uploads, "UploadEvent",
         "Stored uploads waiting for classification. Written by the gateway's upload views, "
         "the image-upload function and the reconciler; read by the classify agent."),
        (settings.topic_results, "Result",
         "Final results. Written by the classify agent once the result is stored; read by "
         "the results agent (table, Redis, SSE, webhooks) and by any other consumer."),
        (settings.topic_callbacks, "Callback",
         "Webhooks waiting for delivery; acked only when delivery ended. Written by the "
         "results agent, read by the callbacks agent."),
        (settings.topic_reclassify, "ReclassifyEvent",
         "Stored originals to classify again with a job's model, paced by the job's token "
         "bucket. Written by a re-classification job's runner (imagerec reclassify, POST "
         "/v1/admin/reclassify); read by the reclassify agent, which sends the merged "
         "result (with history) to image-results."),
        (settings.topic_drops, "DropNotification",
         "MinIO's bucket notifications for objects written under the drop prefix of "
         "input-images (its format, not imagerec's). Written by MinIO; read by the drops "
         "agent, which turns each into an upload event."),
        (settings.topic_dlq, "DeadLetter",
         "Messages of image-uploads, image-reclassify and image-drops that cannot be "
         "processed (not JSON, missing or mistyped fields, an unsupported version). Written "
         "by the agent that read them; read by operators, who re-drive them to "
         "source-topic."),
    ]
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic, message, description in topics:
        cid = _channel_id(topic)
        channels[cid] = {
            "address": topic,
            "description": description,
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            "bindings": {"kafka": {"topic": topic, "partitions": settings.topic_partitions,
                                   "bindingVersion": KAFKA_BINDING}},
        }
        for action in ("send", "receive"):
            operations[f"{action}{cid[0].upper()}{cid[1:]}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{cid}"},
                "messages": [{"$ref": f"#/channels/{cid}/messages/{message}"}],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "imagerec topics",
            "version": f"{msg.SCHEMA_VERSION}",
            "description": (
                "The Kafka topics of imagerec: what each message is, who writes and reads "
                "it. Values are JSON except on the dead-letter topic; keys are image ids. "
                "Every JSON message carries `v`, the major version of its schema: adding "
                "an optional field does not change it (ignore fields you do not know), "
                "removing, renaming or retyping one does. A consumer meeting a `v` higher "
                "than it knows must not guess: park the message (imagerec dead-letters "
                "such an upload event and skips such a result) and upgrade; upgrade "
                "consumers before producers. A message without `v` is version 1. "
                "info.version is the highest message version this document describes."),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {"host": settings.kafka_bootstrap, "protocol": "kafka",
                      "description": "the stack's broker(s) (IMAGEREC_KAFKA_BOOTSTRAP); "
                                     "plaintext on the local stack"},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def render(settings: Settings | None = None) -> str:
    """The document as committed in docs/asyncapi.json: indented, ending in a newline."""
    return json.dumps(build(settings), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
