"""Structured JSON logs (structlog) for every imagerec process.

Context such as ``image_id`` and ``request_id`` is bound with structlog's contextvars so it
appears on every line logged while handling that image or request.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

from app.settings import get_settings


class RepeatFilter(logging.Filter):
    """Kafka client lines pass once per ``window_s`` per message template.

    While a broker is down aiokafka logs the same connection error several times a second in
    every process (a 15-second broker outage left about 2,800 such lines across three
    workers); the first line says what happened, the next one after the window says how many
    were left out."""

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka", "kafka"),
                 window_s: float = 30.0) -> None:
        super().__init__()
        self.prefixes, self.window_s = prefixes, window_s
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last, left_out = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.window_s:
            self._seen[key] = (last, left_out + 1)
            return False
        self._seen[key] = (now, 0)
        if left_out:
            record.msg = f"{record.msg} [{left_out} more like it in the last " \
                         f"{self.window_s:.0f}s left out]"
        return True


def _component_only(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Library lines get the process's component, not the request or image a background
    task happened to inherit its context from (aiokafka's sender runs in the context of
    the request that started the producer)."""
    component = structlog.contextvars.get_contextvars().get("component")
    if component:
        event.setdefault("component", component)
    return event


def configure_logging(component: str) -> None:
    """Our own lines go straight from structlog to stdout; stdlib logging (Faust, aiokafka)
    goes through the same renderer via ``ProcessorFormatter``.

    Our lines skip stdlib logging on purpose: its record, caller lookup and handler lock cost
    about 0.4 ms per line, which was 2% of a worker's CPU per image under load (py-spy).
    """
    settings = get_settings()
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    renderer: Any = (structlog.processors.JSONRenderer() if settings.log_json
                     else structlog.dev.ConsoleRenderer(colors=False))
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer,
        foreign_pre_chain=[_component_only, *shared[1:], structlog.stdlib.ExtraAdder()],
    ))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    structlog.contextvars.bind_contextvars(component=component)
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
