"""The Kafka client's repeated lines are collapsed; our own and other libraries' are not."""

from __future__ import annotations

import logging

from app.logs import RepeatFilter


def _record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_kafka_client_lines_pass_once_per_window(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("app.logs.time.monotonic", lambda: clock[0])
    flt = RepeatFilter(window_s=30)
    template = "Unable connect to node with id %s: %s"
    passed = [flt.filter(_record("aiokafka.conn", template, n, "refused")) for n in range(50)]
    assert passed == [True] + [False] * 49
    other = _record("aiokafka.consumer.fetcher", "Failed fetch messages from %s", 1)
    assert flt.filter(other)  # another template is another line
    clock[0] += 31
    later = _record("aiokafka.conn", template, 3, "refused")
    assert flt.filter(later)
    assert "49 more like it" in later.getMessage()
    assert "id 3" in later.getMessage()


def test_other_loggers_are_never_collapsed() -> None:
    flt = RepeatFilter(window_s=30)
    assert all(flt.filter(_record("faust.worker", "same line")) for _ in range(5))
    assert all(flt.filter(_record("imagerec", "same line")) for _ in range(5))
