"""Pure logic of the result schema, ids, keys and upload-event parsing."""

from __future__ import annotations

import time

import pytest

from app import names
from app import results as res
from app.errors import ApiError
from app.ids import is_image_id, new_image_id
from app.ingest import check_callback_url


def _event(**kw) -> res.UploadEvent:
    base = dict(id=new_image_id(), sha256="a" * 64, format="jpeg", size=10,
                created_at=res.now_iso(), callback_url="http://127.0.0.1:9/hook")
    base.update(kw)
    return res.UploadEvent(**base)


def test_ids_are_unique_sortable_and_validated() -> None:
    first = new_image_id()
    time.sleep(0.002)
    second = new_image_id()
    assert first < second and is_image_id(first) and is_image_id(second)
    for bad in ("", "../etc/passwd", first.lower() + "x", first[:-1], "I" * 26):
        assert not is_image_id(bad)


def test_event_round_trip_and_rejections() -> None:
    event = _event()
    assert res.UploadEvent.from_bytes(event.to_bytes()) == event
    bad_id = event.to_bytes().replace(event.id.encode(), b"../../x")
    for raw, why in [(b"", "empty"), (b"\xff\x00", "not JSON"), (b"[1]", "not a JSON object"),
                     (b'{"id": "x"}', "missing"),
                     (bad_id, "invalid image id")]:
        with pytest.raises(res.BadEvent, match=why):
            res.UploadEvent.from_bytes(raw)


def test_view_filters_labels_and_hides_private_fields() -> None:
    labels = [{"label": f"c{i}", "class_id": i, "score": s}
              for i, s in enumerate([0.5, 0.3, 0.1, 0.05, 0.03, 0.02])]
    result = res.done(_event(), {"name": "m", "version": "1"}, labels, res.Timings())
    assert "callback_url" in result  # stored for the webhook ...
    shown = res.view(result, top_k=3, min_score=0.2, source="redis")
    assert "callback_url" not in shown  # ... but never shown
    assert [lab["class_id"] for lab in shown["labels"]] == [0, 1]
    assert shown["source"] == "redis" and shown["links"]["self"].endswith(result["id"])
    assert res.is_final(result) and not res.is_final(res.queued(_event()))


def test_failed_result_carries_reason() -> None:
    result = res.failed(_event(), "undecodable", "bad bytes", res.Timings(decode_ms=1.234))
    assert result["status"] == "failed" and result["error"]["code"] == "undecodable"
    assert result["timings"]["decode_ms"] == 1.23
    assert res.decode(res.encode(result)) == result


def test_keys_never_contain_anything_but_the_id() -> None:
    image_id = new_image_id()
    assert names.original_key(image_id) == image_id
    assert names.result_key(image_id) == f"{image_id}.json"
    assert names.processed_key(image_id) == f"{image_id}.jpg"
    assert names.redis_dedup("f" * 64, "m", "v1") != names.redis_dedup("f" * 64, "m", "v2")


@pytest.mark.parametrize("url", ["ftp://x/y", "javascript:alert(1)", "/relative", "http://"])
def test_callback_url_must_be_absolute_http(url: str) -> None:
    with pytest.raises(ApiError):
        check_callback_url(url)


def test_callback_url_accepted() -> None:
    assert check_callback_url("https://example.test/hook") == "https://example.test/hook"
    assert check_callback_url(None) is None


def test_query_parameters_are_bounded() -> None:
    from app.params import float_param, int_param

    assert int_param({"top_k": "3"}, "top_k", 5, 0, 25) == 3
    assert int_param({}, "top_k", 5, 0, 25) == 5
    assert float_param({"min_score": "0.5"}, "min_score", 0.0, 0.0, 1.0) == 0.5
    for query in ({"top_k": "x"}, {"top_k": "26"}, {"top_k": "-1"}):
        with pytest.raises(ApiError, match="top_k"):
            int_param(query, "top_k", 5, 0, 25)
    for raw in ("nan", "1.5", "abc"):
        with pytest.raises(ApiError, match="min_score"):
            float_param({"min_score": raw}, "min_score", 0.0, 0.0, 1.0)
