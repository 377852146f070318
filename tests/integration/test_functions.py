"""The OpenFaaS functions through the gateway, on the real stack.

``/function/image-upload`` must hand out an id that the Kafka/Faust pipeline completes, and
``/function/image-classifier`` must answer labels synchronously; both must refuse what the
``/v1`` API refuses, with the same codes. Requests carry the development API key when the
stack has one (``.stack/dev-api-key``), which the gateway fixture adds.
"""

from __future__ import annotations

import json
import secrets

import pytest

from app.callbacks import sign
from app.ids import is_image_id
from tests.conftest import CAT_CLASSES, ESPRESSO, jpeg_of, photo_variants

pytestmark = pytest.mark.integration

UPLOAD = "/function/image-upload"
CLASSIFY = "/function/image-classifier"


def fresh_photo() -> bytes:
    """A real photo no earlier run uploaded, so de-duplication cannot answer it at once."""
    return photo_variants(1, seed=secrets.randbits(48))[0]


def test_upload_function_returns_an_id_the_pipeline_completes(gateway) -> None:  # noqa: ANN001
    reply = gateway.post_raw(UPLOAD, fresh_photo(), "image/jpeg")
    assert reply.status == 202, reply.body[:500]
    body = reply.json()
    assert is_image_id(body["id"])
    assert body["status"] == "queued"
    assert body["links"]["self"] == f"/v1/images/{body['id']}"
    assert len(body["sha256"]) == 64

    result = gateway.wait_done(body["id"], timeout_s=90)
    assert result["status"] == "done", result
    assert result["labels"] and result["model"]["name"]


@pytest.fixture()
def webhook(receiver):  # noqa: ANN001, ANN201
    """The allow-listed receiver (tests/conftest.py); yields (url, queue of (headers, body))."""
    return receiver.url, receiver.received


def test_upload_function_takes_multipart_and_a_callback_url(gateway, settings,  # noqa: ANN001
                                                            webhook) -> None:  # noqa: ANN001
    url, received = webhook
    photo = fresh_photo()
    reply = gateway.upload(photo, path=f"{UPLOAD}?callback_url={url}")
    assert reply.status == 202, reply.body[:500]
    image_id = reply.json()["id"]
    assert gateway.wait_done(image_id, timeout_s=90)["status"] == "done"

    headers, body = received.get(timeout=30)
    assert headers["X-Imagerec-Image-Id"] == image_id
    assert headers["X-Imagerec-Signature"] == sign(body, settings.callback_secret)
    assert json.loads(body)["status"] == "done"

    # The same bytes again: answered from the earlier result, as POST /v1/images does.
    again = gateway.post_raw(UPLOAD, photo, "image/jpeg")
    assert again.status == 200, again.body[:300]
    assert again.json()["duplicate_of"] == image_id


def test_upload_function_refuses_a_bad_callback_url(gateway) -> None:  # noqa: ANN001
    reply = gateway.post_raw(UPLOAD + "?callback_url=file:///etc/passwd", fresh_photo(),
                             "image/jpeg")
    assert reply.status == 400
    assert reply.json()["error"]["code"] == "bad_callback_url"


def test_classifier_function_answers_labels_synchronously(gateway) -> None:  # noqa: ANN001
    reply = gateway.post_raw(CLASSIFY, jpeg_of("chelsea"), "image/jpeg")
    assert reply.status == 200, reply.body[:500]
    body = reply.json()
    assert body["status"] == "done"
    assert len(body["labels"]) == 5
    assert body["labels"][0]["class_id"] in CAT_CLASSES, body["labels"]
    assert {"label", "class_id", "score"} <= set(body["labels"][0])

    coffee = gateway.upload(jpeg_of("coffee"), path=CLASSIFY + "?top_k=2")
    assert coffee.status == 200, coffee.body[:500]
    labels = coffee.json()["labels"]
    assert len(labels) == 2 and labels[0]["class_id"] == ESPRESSO


def test_classifier_function_agrees_with_the_v1_api(gateway) -> None:  # noqa: ANN001
    """Same app code, same model: the function and POST /v1/classify give the same labels."""
    photo = jpeg_of("chelsea")
    via_function = gateway.post_raw(CLASSIFY + "?top_k=3", photo, "image/jpeg").json()
    via_api = gateway.post_raw("/v1/classify?top_k=3", photo, "image/jpeg").json()
    assert via_function["model"] == via_api["model"]
    assert ([lab["class_id"] for lab in via_function["labels"]]
            == [lab["class_id"] for lab in via_api["labels"]])


@pytest.mark.parametrize("path", [UPLOAD, CLASSIFY])
def test_functions_refuse_a_text_file_with_415(gateway, path) -> None:  # noqa: ANN001
    text = b"this is not an image\n" * 20
    as_jpeg = gateway.post_raw(path, text, "image/jpeg")
    assert as_jpeg.status == 415, as_jpeg.body[:300]
    assert as_jpeg.json()["error"]["code"] == "unsupported_format"

    as_text = gateway.post_raw(path, text, "text/plain")
    assert as_text.status == 415

    as_file = gateway.upload(text, path=path, filename="notes.txt", content_type="text/plain")
    assert as_file.status == 415


@pytest.mark.parametrize("path", [UPLOAD, CLASSIFY])
def test_functions_refuse_malformed_requests(gateway, path) -> None:  # noqa: ANN001
    no_file = gateway.post_raw(path, b"--x\r\nContent-Disposition: form-data; name=other\r\n\r\n"
                               b"1\r\n--x--\r\n", "multipart/form-data; boundary=x")
    assert no_file.status == 400
    assert no_file.json()["error"]["code"] == "no_file"

    wrong_method = gateway.get(path)
    assert wrong_method.status == 405


def test_classifier_function_checks_its_parameters(gateway) -> None:  # noqa: ANN001
    photo = jpeg_of("coffee")
    for query in ("top_k=abc", "top_k=1000", "min_score=2"):
        reply = gateway.post_raw(f"{CLASSIFY}?{query}", photo, "image/jpeg")
        assert reply.status == 400, (query, reply.body[:200])
        assert reply.json()["error"]["code"] == "bad_parameter"
