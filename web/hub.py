"""Per-worker fan-out of finished results to SSE clients and long-polling requests.

Every worker subscribes once to the Redis channel the results agents publish on, so a client
connected to any worker sees every result, whichever worker produced it.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from app import cache, names
from app import results as res
from app.logs import get_logger

log = get_logger(__name__)
QUEUE_MAX = 1000


class Hub:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue] = set()
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._task: asyncio.Task | None = None

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            # A fresh context: the first caller's request_id must not tag the listener's logs.
            self._task = asyncio.get_running_loop().create_task(
                self._listen(), context=contextvars.Context())

    async def _listen(self) -> None:
        """Reconnects forever: Redis restarts must not silence the event stream."""
        delay = 0.5
        while True:
            try:
                pubsub = cache.get_redis().pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(names.REDIS_CHANNEL)
                delay = 0.5
                async for message in pubsub.listen():
                    # Decoding every result costs CPU on every worker; skip it while no
                    # client of this worker is listening or waiting.
                    if message.get("type") == "message" and (self._subscribers
                                                             or self._waiters):
                        self.publish(res.decode(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("result subscription lost; reconnecting", error=repr(exc)[:200],
                            retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def publish(self, result: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            if queue.qsize() < QUEUE_MAX:
                queue.put_nowait(result)
        for fut in self._waiters.pop(result.get("id", ""), []):
            if not fut.done():
                fut.set_result(result)

    def subscribe(self) -> asyncio.Queue:
        self._ensure_running()
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    async def wait_for(self, image_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The result if it finishes within ``timeout_s``; re-checks Redis to close the race."""
        self._ensure_running()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(image_id, []).append(fut)
        try:
            try:
                found = await cache.get_result(image_id)
                if res.is_final(found):
                    return found
            except Exception:  # noqa: BLE001 - fall back to waiting for the event
                pass
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(image_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(image_id, None)


_hub: Hub | None = None


def get_hub() -> Hub:
    global _hub
    if _hub is None:
        _hub = Hub()
    return _hub
