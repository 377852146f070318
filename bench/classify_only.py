"""The classify side alone: what the workers spend per image without the upload path.

Stores N real JPEGs straight into ``input-images``, produces their events straight to
``image-uploads`` (no gateway, no HTTP), waits until every result is in Redis, and prints
images/second and CPU milliseconds per image by program. Compared with ``bench/pipeline.py``'s
heavy run, the difference in the workers' figure is the upload path's cost (HTTP, key check,
header parse, de-duplication, the original's PUT, the produce). Without the gateway the
workers do not hold the bytes in memory, so each image also costs one GET here.

Needs the stack up; run with the stack's credentials in the environment:
``set -a; . .stack/secrets.env; set +a; .venv/bin/python bench/classify_only.py [--images N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import names  # noqa: E402
from app import results as res  # noqa: E402
from app.cache import get_redis  # noqa: E402
from app.ids import new_image_id  # noqa: E402
from app.settings import get_settings  # noqa: E402
from app.storage import get_store  # noqa: E402
from bench.pipeline import cpu_ms_per_image, cpu_seconds, print_cpu  # noqa: E402
from tests.conftest import photo_variants  # noqa: E402


async def run(count: int) -> None:
    settings = get_settings()
    store = get_store()
    photos = photo_variants(count, seed=int(time.time()))
    events: list[res.UploadEvent] = []
    gate = asyncio.Semaphore(16)

    async def store_original(data: bytes) -> None:
        async with gate:
            event = res.UploadEvent(id=new_image_id(), sha256=hashlib.sha256(data).hexdigest(),
                                    format="jpeg", size=len(data), created_at=res.now_iso())
            await store.put(settings.bucket_input, names.original_key(event.id), data,
                            "image/jpeg")
            events.append(event)

    await asyncio.gather(*(store_original(p) for p in photos))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                linger_ms=settings.producer_linger_ms)
    await producer.start()
    try:
        before, started = cpu_seconds(), time.perf_counter()
        for event in events:
            await producer.send(settings.topic_uploads, event.to_bytes(),
                                key=event.id.encode())
        await producer.flush()
        keys = [names.redis_result(e.id) for e in events]
        deadline = started + 600
        while not all(await get_redis().mget(keys)):
            if time.perf_counter() > deadline:
                raise RuntimeError("not every image finished within 10 minutes")
            await asyncio.sleep(0.2)
        elapsed, after = time.perf_counter() - started, cpu_seconds()
    finally:
        await producer.stop()
    print(f"classify side: {count / elapsed:.1f} images/s; CPU ms per image:")
    print_cpu(cpu_ms_per_image(before, after, count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    asyncio.run(run(parser.parse_args().images))


if __name__ == "__main__":
    main()
