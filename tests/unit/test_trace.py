"""One image's journey (app.trace), the log trail (app.logtrail) and the console's pure parts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from app import console, params, results
from app import trace as tr
from app.errors import ApiError
from app.logtrail import lines_about, log_files, render

ID = "01M8WJWSAQ4MV0FTCBT14G7P91"


def test_gateway_received_is_msec_minus_request_time() -> None:
    assert tr.gateway_received_ms("t=1796255671.617", "0.004") == pytest.approx(1796255671613)
    assert tr.gateway_received_ms("1796255671.617", "0.000") == pytest.approx(1796255671617)
    for start, spent in ((None, None), ("t=abc", "0"), ("t=1", "-5"), ("t=0", "0"),
                         ("t=1e20", "0")):
        assert tr.gateway_received_ms(start, spent) is None


def test_upload_stamps_skip_a_missing_or_future_gateway_time() -> None:
    stamps = tr.upload_stamps({}.get)
    assert set(stamps) == {"accepted"}
    headers = {"X-Request-Start": "t=9999999999.000", "X-Request-Elapsed": "0"}
    assert "received" not in tr.upload_stamps(headers.get)  # after "accepted": not believed
    headers = {"X-Request-Start": f"t={tr.now_ms() / 1000 - 0.01:.3f}",
               "X-Request-Elapsed": "0.002"}
    stamps = tr.upload_stamps(headers.get)
    assert stamps["received"] <= stamps["accepted"]


def test_clean_stamps_keeps_known_stages_with_sane_times() -> None:
    raw = {"received": 1.5e12, "bogus": 2e12, "accepted": "x", "stored": True,
           "cached": -1, "sent": 2e12}
    assert tr.clean_stamps(raw) == {"received": 1.5e12, "sent": 2e12}
    assert tr.clean_stamps(["received"]) == {}


def test_headers_round_trip() -> None:
    headers = tr.headers_for({"stored": 1.5e12 + 0.25, "sent": 1.5e12 + 1, "inferred": 1.0})
    assert [k for k, _ in headers] == ["trace-stored", "trace-sent"]
    back = tr.stamps_from_headers([(k, v) for k, v in headers] + [("error", b"x"),
                                                                  ("trace-sent2", b"oops")])
    assert back == {"stored": 1.5e12 + 0.25, "sent": 1.5e12 + 1}
    assert tr.stamps_from_headers({"trace-cached": b"nan?"}) == {}


def test_waterfall_orders_stages_and_adds_up() -> None:
    base = 1.8e12
    stamps = {name: base + 10 * i for i, name in enumerate(tr.STAGE_NAMES)}
    stamps["sent"] = stamps["stored"] - 3  # a clock step: no negative bar
    result = {"request_id": "rid", "trace": {"stamps": stamps, "partition": 2, "offset": 7}}
    out = tr.waterfall(result)
    assert [s["stage"] for s in out["stages"]] == list(tr.STAGE_NAMES)
    assert out["complete"] and out["request_id"] == "rid" and out["partition"] == 2
    assert all(s["ms"] >= 0 for s in out["stages"])
    assert sum(s["ms"] for s in out["stages"]) == pytest.approx(out["total_ms"])
    assert out["total_ms"] == pytest.approx(80)
    assert out["stages"][0]["at"].endswith("Z")


def test_waterfall_of_a_partial_or_missing_trace() -> None:
    partial = tr.waterfall({"trace": {"stamps": {"batch_started": 2e12, "inferred": 2e12 + 5}}})
    assert [s["stage"] for s in partial["stages"]] == ["batch_started", "inferred"]
    assert not partial["complete"] and partial["total_ms"] == 5
    empty = tr.waterfall({"id": ID, "status": "queued"})
    assert empty == {"request_id": "", "stages": [], "total_ms": 0.0, "complete": False}


def _event(**extra: object) -> bytes:
    doc = {"id": ID, "sha256": "0" * 64, "format": "jpeg", "size": 1,
           "created_at": "2026-12-02T00:00:00.000Z", **extra}
    return json.dumps(doc).encode()


def test_upload_event_carries_its_trace_and_never_fails_on_it() -> None:
    event = results.UploadEvent.from_bytes(_event(trace={"accepted": 2e12, "junk": 1}))
    assert event.trace == {"accepted": 2e12}
    assert results.UploadEvent.from_bytes(_event(trace="nonsense")).trace == {}
    assert results.UploadEvent.from_bytes(event.to_bytes()).trace == {"accepted": 2e12}
    result = results.queued(event)
    assert result["trace"] == {"stamps": {"accepted": 2e12}}
    assert "trace" not in results.view(result)
    assert results.view(result, trace=True)["trace"]["stages"][0]["stage"] == "accepted"


def test_bool_param() -> None:
    assert params.bool_param({"trace": "1"}, "trace") is True
    assert params.bool_param({"trace": "false"}, "trace") is False
    assert params.bool_param({}, "trace") is False
    with pytest.raises(ApiError):
        params.bool_param({"trace": "maybe"}, "trace")


def test_chart_series_names() -> None:
    assert console._series_name("p{quantile}", {"quantile": "0.95"}) == "p95"
    assert console._series_name("{topic}/{partition}", {"topic": "t", "partition": "3"}) == "t/3"
    assert console._series_name("{reason}", {}) == "{reason}"


def test_an_unknown_chart_is_refused_before_prometheus(settings) -> None:  # noqa: ANN001
    with pytest.raises(console.ConsoleError) as info:
        asyncio.run(console.chart(settings, "up", 900, 15))
    assert info.value.status == 404


def test_messages_only_of_our_topics(settings) -> None:  # noqa: ANN001
    with pytest.raises(console.ConsoleError) as info:
        asyncio.run(console.last_messages(settings, "__consumer_offsets", 5))
    assert info.value.status == 404


def _write(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n")


def test_logs_about_an_image_follow_its_request_id(tmp_path: Path) -> None:
    _write(tmp_path / "worker-1.log.1", [
        {"timestamp": "2026-12-02T23:54:31.600Z", "event": "auth", "request_id": "r1"},
    ])
    _write(tmp_path / "worker-1.log", [
        {"timestamp": "2026-12-02T23:54:31.650Z", "event": "image accepted", "image_id": ID,
         "request_id": "r1"},
        {"timestamp": "2026-12-02T23:54:31.700Z", "event": "other", "image_id": "X" * 26},
    ])
    _write(tmp_path / "worker-2.log", [
        {"timestamp": "2026-12-02T23:54:31.750Z", "event": "batch classified",
         "image_ids": ["A", ID]},
    ])
    _write(tmp_path / "gateway-access.log", [
        {"time": "2026-12-02T23:54:31+00:00", "request_id": "r1", "method": "POST",
         "uri": "/v1/images", "status": 202},
        {"time": "2026-12-02T23:54:32+00:00", "request_id": "r9", "method": "GET",
         "uri": f"/v1/images/{ID}?trace=1", "status": 200},
        {"time": "2026-12-02T23:54:33+00:00", "request_id": "r8", "method": "GET",
         "uri": "/v1/images", "status": 200},
    ])
    assert [p.name for p in log_files(tmp_path)][:3] == ["gateway-access.log",
                                                         "worker-1.log.1", "worker-1.log"]
    found = lines_about(ID, tmp_path)
    events = [line.fields.get("event") or line.fields["uri"] for line in found]
    assert events == ["/v1/images", "auth", "image accepted", "batch classified",
                      f"/v1/images/{ID}?trace=1"]
    assert "POST /v1/images -> 202" in render(found[0])
    assert lines_about("01ARZ3NDEKTSV4RRFFQ69G5FAV", tmp_path) == []
