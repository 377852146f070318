"""Errors the API maps to status codes; every one carries a stable ``code`` for clients."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with an HTTP status, a machine code and a human message."""

    http_status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if http_status:
            self.http_status = http_status


class DependencyDown(ApiError):
    """Kafka, S3 or Redis cannot be reached: 503 with Retry-After; the client retries."""

    http_status = 503
    code = "dependency_unavailable"

    def __init__(self, service: str, detail: str = "") -> None:
        super().__init__(f"{service} is unavailable; retry shortly" + (f" ({detail})" if detail
                                                                       else ""))
        self.service = service


RETRY_AFTER_S = "5"


def http_error(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """``(status, body, headers)`` for an error a client caused or can retry, ``None`` for a
    bug. The one mapping behind the Faust views and the functions, so both answer alike."""
    from app.imaging import ImageError  # imaging's errors carry the same three attributes

    if not isinstance(exc, ApiError | ImageError):
        return None
    headers = {"Retry-After": RETRY_AFTER_S} if exc.http_status in (503, 504) else {}
    return exc.http_status, {"error": {"code": exc.code, "message": exc.message}}, headers
