"""Re-classification logic without servers: the token bucket, job ids, the history merge.
The real path is tests/integration/test_reclassify.py."""

from __future__ import annotations

import pytest

from app import reclassify
from app.reclassify import JobSpec, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_token_bucket_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.wait_s() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.wait_s() == pytest.approx(0.1)
    clock.now = 0.05
    assert bucket.wait_s() == pytest.approx(0.05)
    clock.now = 0.1
    assert bucket.wait_s() == 0.0
    clock.now = 100.0  # a long pause saves up no more than the burst
    assert [bucket.wait_s() for _ in range(4)][-1] > 0
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


def test_the_same_request_is_the_same_job() -> None:
    a = JobSpec("efficientnet_lite0:v1", "2026-11-01", "incoming/acme/")
    assert a.job_id == JobSpec("efficientnet_lite0:v1", "2026-11-01", "incoming/acme/").job_id
    assert a.job_id != JobSpec("efficientnet_lite0:v1", "2026-11-02", "incoming/acme/").job_id
    assert reclassify.parse_since("2026-11-01") == 1793491200.0
    assert reclassify.parse_since("2026-11-01T01:00:00+01:00") == 1793491200.0
    with pytest.raises(reclassify.JobError):
        reclassify.parse_since("last tuesday")


def _result(version: str, status: str = "done", at: str = "2026-12-01T00:00:00.000Z",
            label: int = 281) -> dict:
    return {"id": "01JF0000000000000000000000", "status": status, "sha256": "ab" * 32,
            "model": {"name": "m", "version": version, "variant": "fp32", "engine": "e"},
            "labels": [{"label": "x", "class_id": label, "score": 0.9}] if status == "done"
            else [], "error": None, "created_at": "2026-11-01T00:00:00.000Z",
            "completed_at": at, "timings": {}, "request_id": "r1",
            "callback_url": "https://example.com/hook", "tenant": "acme", "v": 1}


def test_a_new_answer_becomes_the_newest_and_both_stay_in_the_history() -> None:
    prev, new = _result("v1"), _result("v2", at="2026-12-02T00:00:00.000Z", label=282)
    new["created_at"], new["callback_url"] = "2026-12-02T00:00:00.000Z", None
    current = reclassify.merge(prev, new, "job1")
    assert current["model"]["version"] == "v2" and current["labels"][0]["class_id"] == 282
    assert [(h["version"], h["status"]) for h in current["history"]] == \
        [("v1", "done"), ("v2", "done")]
    # the image's record stays the image's: its upload time, request id, webhook, tenant
    assert current["created_at"] == prev["created_at"]
    assert current["callback_url"] == prev["callback_url"]
    assert current["reclassify_job"] == "job1"  # so the webhook is not called again
    assert reclassify.has_answer(current, "m", "v1") and reclassify.has_answer(current, "m", "v2")
    assert not reclassify.has_answer(prev, "m", "v2")
    # the same version again replaces its entry instead of adding one
    again = reclassify.merge(current, _result("v2", at="2026-12-03T00:00:00.000Z"), "job2")
    assert [h["version"] for h in again["history"]] == ["v1", "v2"]
    assert reclassify.version_doc(again).find(b"history") == -1


def test_a_failed_re_classification_does_not_replace_a_done_answer() -> None:
    prev = _result("v1")
    failed = _result("v2", status="failed")
    current = reclassify.merge(prev, failed, "job1")
    assert current["status"] == "done" and current["model"]["version"] == "v1"
    assert [(h["version"], h["status"]) for h in current["history"]] == \
        [("v1", "done"), ("v2", "failed")]
    assert not reclassify.has_answer(current, "m", "v2")  # a later job tries it again


def test_reclassify_events_are_checked() -> None:
    raw = reclassify.encode_event("01JF0000000000000000000000", "m:v2", "job1")
    event = reclassify.ReclassifyEvent.from_bytes(raw)
    assert (event.id, event.model, event.job) == ("01JF0000000000000000000000", "m:v2", "job1")
    from app.results import BadEvent

    for bad in (b"", b"{}", b'{"id": "../x", "model": "m", "job": "j"}'):
        with pytest.raises(BadEvent):
            reclassify.ReclassifyEvent.from_bytes(bad)
