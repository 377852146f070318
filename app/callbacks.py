"""Webhooks: POST the finished result to the client's ``callback_url``, signed and retried.

The body is the public result JSON; ``X-Imagerec-Signature: sha256=<hex>`` is the HMAC-SHA256
of the body with ``IMAGEREC_CALLBACK_SECRET`` so receivers can check it came from us.
Delivery is best effort with exponential backoff; outcomes are counted in metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import aiohttp

from app import metrics
from app import results as res
from app.logs import get_logger
from app.settings import get_settings

log = get_logger(__name__)
_tasks: set[asyncio.Task] = set()


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def deliver(result: dict[str, Any], *, base_delay_s: float = 1.0) -> bool:
    settings = get_settings()
    url = result["callback_url"]
    body = res.encode(res.view(result, top_k=res.STORED_LABELS))
    headers = {"Content-Type": "application/json",
               "X-Imagerec-Signature": sign(body, settings.callback_secret),
               "X-Imagerec-Image-Id": result["id"]}
    delay = base_delay_s
    timeout = aiohttp.ClientTimeout(total=10)
    for attempt in range(1, settings.callback_attempts + 1):
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(url, data=body, headers=headers) as resp:
                    if resp.status < 300:
                        metrics.CALLBACKS.labels(outcome="delivered").inc()
                        return True
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        log.warning("callback refused", image_id=result["id"],
                                    status=resp.status)
                        metrics.CALLBACKS.labels(outcome="refused").inc()
                        return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("callback attempt failed", image_id=result["id"], attempt=attempt,
                     error=repr(exc)[:200])
        await asyncio.sleep(delay)
        delay *= 2
    metrics.CALLBACKS.labels(outcome="gave_up").inc()
    log.warning("callback gave up", image_id=result["id"])
    return False


def deliver_later(result: dict[str, Any]) -> None:
    """Fire and forget, but keep a reference so the task is not garbage-collected."""
    task = asyncio.get_running_loop().create_task(deliver(result))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
