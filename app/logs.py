"""Structured JSON logs (structlog) for every imagerec process.

Context such as ``image_id`` and ``request_id`` is bound with structlog's contextvars so it
appears on every line logged while handling that image or request.
"""

from __future__ import annotations

import logging
import sys

import structlog

from app.settings import get_settings


def configure_logging(component: str) -> None:
    """Route stdlib logging (Faust, aiokafka) and structlog through one JSON renderer."""
    settings = get_settings()
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    renderer = (structlog.processors.JSONRenderer() if settings.log_json
                else structlog.dev.ConsoleRenderer(colors=False))
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer,
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    structlog.contextvars.bind_contextvars(component=component)
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
