"""The OpenAPI 3.1 description of ``/v1``, served at ``GET /v1/openapi.json`` (no key needed).

Built in Python rather than kept as a static file so that the limits it states (body size,
rate limit, ``top_k`` bounds) come from the same settings and constants the service enforces.
``tests/integration/test_openapi.py`` runs schemathesis against it through the gateway, so a
view that drifts from this document fails the build.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aiohttp import web
from faust.web import View

from app import results as res
from app import trace as tr
from app.faust_app import app
from app.settings import Settings, get_settings

ULID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"
SOURCES = ["redis", "table", "storage", "event", "queued", "processing"]
IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
               "application/octet-stream"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _json(schema: dict[str, Any], description: str,
          headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _resp(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _schemas() -> dict[str, Any]:
    label = {
        "type": "object",
        "required": ["label", "class_id", "score"],
        "properties": {
            "label": {"type": "string"},
            "class_id": {"type": "integer", "minimum": 0},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }
    model_ref = {
        "type": "object",
        "required": ["name", "version"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string", "description": "the variant's own version"},
            "variant": {"type": "string", "description": "fp32 or int8"},
            "engine": {"type": "string",
                       "description": "the engine that ran it, e.g. litert-int8"},
        },
    }
    error_body = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "stable, machine-readable"},
            "message": {"type": "string", "description": "for humans; may change"},
        },
    }
    result = {
        "type": "object",
        "description": "One image's status and result. Fields other than id, status, labels "
                       "and links are absent while the image is only known by its stored "
                       "original (status queued or processing).",
        "required": ["id", "status", "labels", "links"],
        "properties": {
            "id": {"type": "string", "pattern": ULID_PATTERN},
            "status": {"type": "string", "enum": ["queued", "processing", "done", "failed"]},
            "sha256": {"type": "string", "pattern": "^([0-9a-f]{64})?$",
                       "description": "of the original; empty for a dropped object that "
                                      "failed before its bytes were read"},
            "source_key": {"type": "string",
                           "description": "for an image dropped straight into storage: "
                                          "the object key under the drop prefix it came "
                                          "from (GET /v1/images?source_key= finds it)"},
            "model": _nullable(_ref("ModelRef")),
            "labels": {"type": "array", "items": _ref("Label"),
                       "description": "best first, cut to top_k and min_score"},
            "error": _nullable(_ref("ErrorBody")),
            "created_at": {"type": "string", "format": "date-time"},
            "completed_at": _nullable({"type": "string", "format": "date-time"}),
            "timings": {"type": "object", "additionalProperties": {"type": "number"},
                        "description": "milliseconds per stage (queue_ms, fetch_ms, "
                                       "decode_ms, inference_ms, total_ms) and batch_size"},
            "request_id": {"type": "string"},
            "tenant": {"type": "string",
                       "description": "the uploader's tenant (the API key's); a key only "
                                      "ever sees its own tenant's images, admins every one"},
            "delivery": {
                "type": "object",
                "description": "the webhook's delivery state, when the upload set a "
                               "callback_url",
                "properties": {
                    "state": {"type": "string",
                              "enum": ["waiting_for_result", "queued", "pending",
                                       "delivered", "refused", "blocked", "gave_up",
                                       "unknown"]},
                    "attempts": _nullable({"type": "integer", "minimum": 0}),
                    "last_status": _nullable({"type": "integer"}),
                    "last_error": _nullable({"type": "string"}),
                    "last_attempt_at": _nullable({"type": "string", "format": "date-time"}),
                    "next_attempt_at": _nullable({"type": "string", "format": "date-time"}),
                    "signature": {"type": "string",
                                  "description": "X-Imagerec-Signature of the body"},
                }},
            "v": {"type": "integer", "description": "result schema version"},
            "links": {"type": "object",
                      "properties": {
                          "self": {"type": "string"},
                          "input": {"type": "string",
                                    "description": "the JPEG the model classified "
                                                   "(GET it with the API key); present "
                                                   "once status is done"},
                      }},
            "history": {
                "type": "array",
                "description": "every model version that classified this image, oldest "
                               "first (present once an image was re-classified); the "
                               "document is the newest done answer, ?model= reads another",
                "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"},
                    "variant": _nullable({"type": "string"}),
                    "engine": _nullable({"type": "string"}),
                    "status": {"type": "string", "enum": ["done", "failed"]},
                    "completed_at": _nullable({"type": "string", "format": "date-time"}),
                }}},
            "reclassify_job": {"type": "string",
                               "description": "the re-classification job that produced "
                                              "this answer"},
            "source": {"type": "string", "enum": SOURCES,
                       "description": "which tier answered"},
            "duplicate_of": {"type": "string", "pattern": ULID_PATTERN,
                             "description": "set when identical bytes were already "
                                            "classified by the current model version"},
            "trace": {**_ref("Trace"), "description": "only with ?trace=1"},
        },
    }
    stage_names = list(tr.STAGE_NAMES)
    trace = {
        "type": "object",
        "description": "Where the time went: each stage the image has passed so far, in "
                       "path order, stamped when it ended. Stages: "
                       + "; ".join(f"`{name}`: {what}" for name, what in tr.STAGES)
                       + ". A result read from storage (after the cache expired) ends at "
                         "`inferred`.",
        "required": ["request_id", "stages", "total_ms", "complete"],
        "properties": {
            "request_id": {"type": "string",
                           "description": "the upload's X-Request-ID: the gateway's and the "
                                          "workers' log lines carry it"},
            "stages": {"type": "array", "items": {
                "type": "object",
                "required": ["stage", "at", "offset_ms", "ms"],
                "properties": {
                    "stage": {"type": "string", "enum": stage_names},
                    "at": {"type": "string", "format": "date-time"},
                    "offset_ms": {"type": "number", "minimum": 0,
                                  "description": "since the first stage"},
                    "ms": {"type": "number", "minimum": 0,
                           "description": "this stage's own time: since the previous one"},
                    "what": {"type": "string"},
                }}},
            "total_ms": {"type": "number", "minimum": 0,
                         "description": "first to last stage; the sum of the stages' ms"},
            "complete": {"type": "boolean", "description": "every stage is there"},
            "partition": {"type": "integer", "minimum": 0,
                          "description": "the upload event's partition on image-uploads"},
            "offset": {"type": "integer", "minimum": 0,
                       "description": "the upload event's offset on image-uploads"},
            "worker": {"type": "integer", "description": "the worker that classified it"},
            "batch_size": {"type": "integer", "minimum": 1},
        },
    }
    return {
        "Label": label,
        "ModelRef": model_ref,
        "ErrorBody": error_body,
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": _ref("ErrorBody")}},
        "Result": result,
        "Trace": trace,
        "FileError": {
            "type": "object",
            "description": "One file of a multi-file upload that was refused.",
            "required": ["filename", "error"],
            "properties": {"filename": {"type": "string"}, "error": _ref("ErrorBody")},
        },
        "UploadItems": {"type": "array",
                        "items": {"anyOf": [_ref("Result"), _ref("FileError")]}},
        "ResultList": {"type": "object", "required": ["images"],
                       "properties": {"images": {"type": "array", "items": _ref("Result")}}},
        "Classification": {
            "type": "object",
            "required": ["status", "model", "labels", "timings"],
            "properties": {
                "status": {"const": "done"},
                "model": _ref("ModelRef"),
                "labels": {"type": "array", "items": _ref("Label")},
                "timings": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        },
        "ModelEntry": {
            "type": "object",
            "required": ["name", "version", "available", "default"],
            "properties": {
                "name": {"type": "string"},
                "version": _nullable({"type": "string"}),
                "architecture": {"type": "string"},
                "source": {"type": "string"},
                "available": {"type": "boolean"},
                "default": {"type": "boolean"},
                "note": {"type": "string"},
                "created": {"type": "string"},
            },
        },
        "UploadForm": {
            "type": "object",
            "description": "A signed form for one image sent straight to storage: POST "
                           "`fields` and then the image as the part named `file_field` "
                           "(multipart/form-data) to `url` before `expires_at`. Storage "
                           "refuses a body over `max_bytes` (400 EntityTooLarge), another "
                           "Content-Type or key (403). The image is then classified like "
                           "any upload; GET links.self answers 404 until it has arrived.",
            "required": ["id", "status", "method", "url", "fields", "file_field",
                         "content_type", "max_bytes", "expires_at", "links"],
            "properties": {
                "id": {"type": "string", "pattern": ULID_PATTERN},
                "status": {"const": "awaiting_upload"},
                "method": {"const": "POST"},
                "url": {"type": "string", "format": "uri",
                        "description": "the gateway's /storage/upload, or the S3 bucket "
                                       "URL when the server sets upload_url"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"},
                           "description": "form fields to send as they are (key, "
                                          "Content-Type, policy, signature ...)"},
                "file_field": {"const": "file"},
                "content_type": {"type": "string"},
                "max_bytes": {"type": "integer", "minimum": 1},
                "expires_at": {"type": "string", "format": "date-time"},
                "links": {"type": "object", "required": ["self"],
                          "properties": {"self": {"type": "string"}}},
            },
        },
        "Models": {
            "type": "object",
            "required": ["default", "serving", "models"],
            "properties": {
                "default": _nullable({"type": "string"}),
                "serving": _nullable(_ref("ModelRef")),
                "models": {"type": "array", "items": _ref("ModelEntry")},
            },
        },
    }


def _upload_request_schema(settings: Settings) -> dict[str, Any]:
    """``app.presign.UploadRequest``'s own JSON Schema, with the size cap of ``settings``."""
    from app.presign import UploadRequest

    schema = UploadRequest.model_json_schema()
    schema.pop("title", None)
    schema["description"] = "What will be uploaded."
    for branch in schema["properties"]["size"]["anyOf"]:
        if branch.get("type") == "integer":
            branch["maximum"] = settings.max_upload_bytes
    return schema


def _responses(settings: Settings) -> dict[str, Any]:
    retry_after = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return {
        "BadRequest": _error("Malformed request or parameter (codes: bad_request, "
                             "bad_parameter, no_file, too_many_files, one_image_only, "
                             "bad_callback_url)."),
        "Unauthorized": _error("No API key, or an unknown, revoked or expired one (code: "
                               "unauthorized)."),
        "Forbidden": _error("The key lacks the scope this operation needs: upload for "
                            "POST /v1/images, /v1/uploads, /v1/classify and the functions, "
                            "read for the rest, admin for operator endpoints (code: forbidden)."),
        "NotFound": _error("No image with this id (code: not_found)."),
        "TooLarge": _error(f"Body over {settings.max_upload_bytes} bytes per image (code: "
                           "too_large); answered by the gateway before the body is read."),
        "Unsupported": _error("Not an image, or a format outside JPEG, PNG, WEBP, GIF, BMP, "
                              "TIFF (code: unsupported_format)."),
        "Unprocessable": _error(f"Undecodable, over {settings.max_pixels} pixels, or under "
                                f"{settings.min_side_px} px on a side (codes: undecodable, "
                                "too_many_pixels, too_small)."),
        "RateLimited": _json(_ref("Error"), "Over this key's rate limit (code: "
                             "rate_limited); retry after Retry-After seconds.", retry_after),
        "Unavailable": _json(_ref("Error"), "A dependency (Kafka, S3, Redis) or every "
                             "worker is down (codes: dependency_unavailable, unavailable); "
                             "retry after Retry-After seconds.", retry_after),
    }


def _param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _upload_body(multi: bool) -> dict[str, Any]:
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    multipart: dict[str, Any] = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": ({"type": "array", "items": file_schema, "minItems": 1, "maxItems": 100}
                     if multi else file_schema),
        },
    }
    if multi:
        multipart["properties"]["callback_url"] = {"type": "string", "format": "uri"}
    content: dict[str, Any] = {"multipart/form-data": {"schema": multipart}}
    for ctype in IMAGE_TYPES:
        content[ctype] = {"schema": {"type": "string", "format": "binary"}}
    return {"required": True, "content": content,
            "description": "multipart/form-data with field `file`"
                           + (" (repeatable)" if multi else "")
                           + ", or the image itself as the body. The format is taken from "
                             "the bytes, never from the file name or Content-Type."}


def build_spec(settings: Settings | None = None) -> dict[str, Any]:
    """The whole document, as a dict (also handy for tests and for generating clients)."""
    settings = settings or get_settings()
    top_k = _param("top_k", {"type": "integer", "minimum": 0, "maximum": res.STORED_LABELS,
                             "default": 5}, "how many labels to return, best first")
    min_score = _param("min_score", {"type": "number", "minimum": 0, "maximum": 1,
                                     "default": 0}, "drop labels scoring below this")
    common = {"401": _resp("Unauthorized"), "403": _resp("Forbidden"),
              "429": _resp("RateLimited"), "503": _resp("Unavailable")}
    upload_errors = {"400": _resp("BadRequest"), "413": _resp("TooLarge"),
                     "415": _resp("Unsupported"), "422": _resp("Unprocessable")}
    paths: dict[str, Any] = {
        "/v1/images": {
            "post": {
                "operationId": "uploadImages",
                "summary": "Upload one or many images for asynchronous classification",
                "parameters": [_param("callback_url", {"type": "string", "format": "uri"},
                                      "absolute http(s) URL POSTed the result when done; "
                                      "its host must not be or resolve to a loopback, "
                                      "private, link-local, multicast or unspecified "
                                      "address (400 bad_callback_url)")],
                "requestBody": _upload_body(multi=True),
                "responses": {
                    "200": _json(_ref("Result"), "These bytes were already classified by "
                                 "the current model version for this tenant: the earlier "
                                 "result, with duplicate_of."),
                    "202": {
                        "description": "Accepted: stored and queued. One file: its Result "
                                       "(status queued). Several: one item per file, a "
                                       "Result or a FileError.",
                        "content": {"application/json": {"schema": {
                            "anyOf": [_ref("Result"), _ref("UploadItems")]}}},
                        "links": {"GetImage": {
                            "operationId": "getImage",
                            "parameters": {"image_id": "$response.body#/id"}}},
                    },
                    **upload_errors, **common,
                    "503": {
                        "description": "A dependency is down; nothing was queued. One "
                                       "file: an Error. Several: an Error item per file.",
                        "headers": {"Retry-After": {"$ref": "#/components/headers/"
                                                            "RetryAfter"}},
                        "content": {"application/json": {"schema": {
                            "anyOf": [_ref("Error"), _ref("UploadItems")]}}},
                    },
                },
            },
            "get": {
                "operationId": "listImages",
                "summary": "The most recently finished results, newest first",
                "parameters": [
                    _param("limit", {"type": "integer", "minimum": 1, "maximum": 200,
                                     "default": 50}, "how many results"),
                    top_k,
                    _param("source_key", {"type": "string", "minLength": 1,
                                          "maxLength": 1024},
                           "instead of the recent results: the images made from this "
                           "object key of the drop prefix, newest first (a key written "
                           "twice made two images)"),
                ],
                "responses": {"200": _json(_ref("ResultList"), "Recent results."),
                              "400": _resp("BadRequest"), **common},
            },
        },
        "/v1/uploads": {
            "post": {
                "operationId": "createUpload",
                "summary": "A presigned form for sending one image straight to storage",
                "description": "For large files or clients that should not stream through "
                               "the API. Needs the upload scope. The image's id is known at "
                               "once; the result comes as for any upload once the object "
                               f"has arrived. The form expires after "
                               f"{settings.upload_url_expiry_s} s.",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _upload_request_schema(settings)}}},
                "responses": {
                    "201": {**_json(_ref("UploadForm"), "The signed form.",
                                    {"Location": {"description": "the image's URL",
                                                  "schema": {"type": "string"}}}),
                            "links": {"GetImage": {
                                "operationId": "getImage",
                                "parameters": {"image_id": "$response.body#/id"}}}},
                    "400": _resp("BadRequest"), **common,
                },
            },
        },
        "/v1/images/{image_id}": {
            "get": {
                "operationId": "getImage",
                "summary": "One image's status and result",
                "parameters": [
                    {"name": "image_id", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": ULID_PATTERN},
                     "description": "the id returned by the upload"},
                    top_k, min_score,
                    _param("wait", {"type": "number", "minimum": 0, "maximum": 60,
                                    "default": 0},
                           "long-poll: wait up to this many seconds for a final result"),
                    _param("model", {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_.-]"
                                     r"{0,63}(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$"},
                           "the answer of this model (NAME: its newest version, or "
                           "NAME:VERSION) instead of the newest answer; 404 model_not_found "
                           "when that model never classified the image"),
                    _param("trace", {"type": "boolean", "default": False},
                           "add `trace`: the stages the image went through, with times "
                           "(a waterfall of where the time went)"),
                ],
                "responses": {
                    "200": {**_json(_ref("Result"), "Known image; status says how far it "
                                    "got.",
                                    {"X-Imagerec-Source": {
                                        "description": "the tier that answered",
                                        "schema": {"type": "string"}}}),
                            "links": {"GetImageInput": {
                                "operationId": "getImageInput",
                                "parameters": {"image_id": "$response.body#/id"}}}},
                    "400": _resp("BadRequest"), "404": _resp("NotFound"), **common,
                },
            },
        },
        "/v1/images/{image_id}/input": {
            "get": {
                "operationId": "getImageInput",
                "summary": "The JPEG the model classified (a thumbnail)",
                "description": "What the model saw: the image decoded, center-cropped and "
                               "resized to the model's input size (224x224 for the default "
                               "model), stored as JPEG. Available once "
                               "the result is done (the result's `links.input`). It never "
                               "changes, so clients may cache it.",
                "parameters": [
                    {"name": "image_id", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": ULID_PATTERN},
                     "description": "the id returned by the upload"},
                ],
                "responses": {
                    "200": {
                        "description": "The JPEG.",
                        "headers": {"Cache-Control": {
                            "description": "private, max-age=86400",
                            "schema": {"type": "string"}}},
                        "content": {"image/jpeg": {"schema": {"type": "string",
                                                              "format": "binary"}}},
                    },
                    "404": _error("No image with this id, or none classified yet (code: "
                                  "not_found)."),
                    **common,
                },
            },
        },
        "/v1/classify": {
            "post": {
                "operationId": "classify",
                "summary": "Classify one image synchronously (nothing is stored or queued)",
                "parameters": [top_k, min_score],
                "requestBody": _upload_body(multi=False),
                "responses": {"200": _json(_ref("Classification"), "Labels, best first."),
                              **upload_errors, **common},
            },
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "Models available, the default and the one being served",
                "responses": {"200": _json(_ref("Models"), "Models."), **common},
            },
        },
        "/v1/events": {
            "get": {
                "operationId": "events",
                "summary": "Server-Sent Events: every finished result as it is stored",
                "description": "An endless text/event-stream. Each event is `event: result`, "
                               "`id: <image id>`, `data: <Result JSON>`; comment lines keep "
                               "the connection alive every 15 s. Browsers' EventSource "
                               "cannot send headers, so this path also accepts the key as "
                               "`?api_key=`. A client reconnecting with `Last-Event-ID` "
                               "first receives the results it missed (from the last 500).",
                "security": [{"bearer": []}, {"apiKeyHeader": []}, {"apiKeyQuery": []}],
                "responses": {
                    "200": {"description": "The stream.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "401": _resp("Unauthorized"), "403": _resp("Forbidden"),
                    "429": _resp("RateLimited"), "503": _resp("Unavailable"),
                },
            },
        },
        "/v1/asyncapi.json": {
            "get": {
                "operationId": "asyncapi",
                "summary": "The AsyncAPI 3.0 document of the Kafka topics and their messages",
                "security": [],
                "responses": {
                    "200": {"description": "AsyncAPI 3.0 document (docs/asyncapi.json).",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    "429": _resp("RateLimited"), "503": _resp("Unavailable"),
                },
            },
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    "429": _resp("RateLimited"), "503": _resp("Unavailable"),
                },
            },
        },
    }
    rate = f"{settings.rate_limit_rps:g}"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imagerec API",
            "version": _version(),
            "description": (
                "Self-hosted image recognition. Every request except this document needs an "
                "API key (`Authorization: Bearer KEY` or `X-API-Key: KEY`; create one with "
                "`imagerec keys create --name NAME`). "
                f"Limits: {rate} requests/s per key with bursts of {settings.rate_limit_burst}"
                f" (429 with Retry-After above that); request bodies up to "
                f"{settings.max_upload_bytes} bytes per image (413 above that, before the "
                "body is read). Errors are always `{\"error\": {\"code\", \"message\"}}`. "
                "Every response carries `X-Request-ID` (yours if you sent a sane one)."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "security": [{"bearer": []}, {"apiKeyHeader": []}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "responses": _responses(settings),
            "headers": {
                "RetryAfter": {"description": "seconds to wait before retrying",
                               "required": True,
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "Authorization: Bearer KEY"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key",
                                "description": "only for /v1/events"},
            },
        },
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagerec")
    except PackageNotFoundError:
        return "0.0.0"


@lru_cache(maxsize=1)
def _spec_response_body() -> bytes:
    import json

    return json.dumps(build_spec(), separators=(",", ":")).encode()


@lru_cache(maxsize=1)
def _asyncapi_response_body() -> bytes:
    import json

    from app import asyncapi

    return json.dumps(asyncapi.build(get_settings()), separators=(",", ":")).encode()


_DOC_HEADERS = {"Cache-Control": "public, max-age=300"}


@app.page("/v1/openapi.json")
class OpenApiDocument(View):
    async def get(self, request: web.Request) -> web.Response:
        return web.Response(body=_spec_response_body(), content_type="application/json",
                            headers=_DOC_HEADERS)


@app.page("/v1/asyncapi.json")
class AsyncApiDocument(View):
    """The topics' document (app.asyncapi), built from the running settings' topic names."""

    async def get(self, request: web.Request) -> web.Response:
        return web.Response(body=_asyncapi_response_body(), content_type="application/json",
                            headers=_DOC_HEADERS)
