"""Errors the API maps to status codes; every one carries a stable ``code`` for clients."""

from __future__ import annotations


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
