"""One JSON error shape for every HTTP answer: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

JSON_DUMPS_KW: dict[str, Any] = {"ensure_ascii": False}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}},
                             status=status, headers=headers)
