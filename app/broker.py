"""Producing to Kafka with acks=all and waiting for the ack, outside Faust's own producer.

The upload path (Faust web views and the image-upload function alike) must answer 202 only
after the event is durable, and 503 quickly when Kafka is down; a dedicated idempotent
producer with a hard deadline gives both.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from app.errors import DependencyDown
from app.settings import get_settings

SEND_TIMEOUT_S = 8.0


class KafkaPublisher:
    """One lazily started producer per process."""

    def __init__(self) -> None:
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=get_settings().kafka_servers,
                    acks="all",
                    enable_idempotence=True,
                    request_timeout_ms=int(SEND_TIMEOUT_S * 1000),
                    linger_ms=get_settings().producer_linger_ms,  # uploads share requests
                )
                try:
                    await asyncio.wait_for(producer.start(), SEND_TIMEOUT_S)
                except Exception as exc:
                    await producer.stop()
                    raise DependencyDown("kafka", f"cannot connect: {exc}") from exc
                self._producer = producer
            return self._producer

    async def send(self, topic: str, key: bytes, value: bytes,
                   headers: list[tuple[str, bytes]] | None = None) -> None:
        """Return once the broker acknowledged the write; raise DependencyDown otherwise."""
        producer = await self._get()
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):  # no task per upload, as wait_for has
                await producer.send_and_wait(topic, value=value, key=key, headers=headers)
        except DependencyDown:
            raise
        except Exception as exc:
            raise DependencyDown("kafka", f"produce to {topic} failed: {exc!r}") from exc

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic`` as this producer sees them: it partitions every event by that
        same view. Fetches the metadata on first use."""
        producer = await self._get()
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                partitions = await producer.partitions_for(topic)
        except Exception as exc:
            raise DependencyDown("kafka", f"no metadata for {topic}: {exc!r}") from exc
        return len(partitions)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


_publisher: KafkaPublisher | None = None


def get_publisher() -> KafkaPublisher:
    global _publisher
    if _publisher is None:
        _publisher = KafkaPublisher()
    return _publisher
