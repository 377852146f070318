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
LIVE_WAIT_S = 2.0


class Hub:
    def __init__(self, channel: str = names.REDIS_CHANNEL) -> None:
        self._channel = channel
        self._subscribers: set[asyncio.Queue] = set()
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._task: asyncio.Task | None = None
        self._live = asyncio.Event()  # set while the Redis subscription is in place

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
                pubsub = cache.get_redis().pubsub()
                await pubsub.subscribe(self._channel)
                delay = 0.5
                async for message in pubsub.listen():
                    kind = message.get("type")
                    # Decoding every result costs CPU on every worker; skip it while no
                    # client of this worker is listening or waiting.
                    if kind == "message" and (self._subscribers or self._waiters):
                        self.publish(res.decode(message["data"]))
                    elif kind == "subscribe":  # Redis's confirmation, not just the request
                        self._live.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._live.clear()
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

    async def _until_live(self, limit_s: float = LIVE_WAIT_S) -> None:
        """Returns once the Redis subscription is in place, so that whatever a caller reads
        next from Redis and what is published from then on leave no gap between them. While
        Redis is down it gives up after ``limit_s`` (the listener logs the outage)."""
        self._ensure_running()
        if self._live.is_set():  # the usual case: no timer per long-poll
            return
        try:
            async with asyncio.timeout(limit_s):
                await self._live.wait()
        except TimeoutError:
            pass

    async def subscribe(self) -> asyncio.Queue:
        await self._until_live()
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.add(queue)  # no await since the wait: no message falls in between
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    async def wait_for(self, image_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The result if it finishes within ``timeout_s``; re-checks Redis to close the race."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        fut: asyncio.Future = loop.create_future()
        self._waiters.setdefault(image_id, []).append(fut)
        try:
            await self._until_live(min(LIVE_WAIT_S, timeout_s))
            try:
                found = await cache.get_result(image_id)
                if res.is_final(found):
                    return found
            except Exception:  # noqa: BLE001 - fall back to waiting for the event
                pass
            return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
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
