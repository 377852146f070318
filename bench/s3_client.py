"""Client CPU per S3 PUT: the ``minio`` client in a thread pool against ``obstore``'s async API.

Why this exists: the busy path stores three objects per image, and the client side of those
PUTs was a visible share of a worker's CPU. Needs a running stack (``make up``); writes
40 KB objects to a scratch bucket ``bench-s3-client`` and removes it afterwards.

    .venv/bin/python bench/s3_client.py [--puts 2000] [--concurrency 8] [--rounds 2]

Last line: ``minio_ms=X obstore_ms=Y`` (client CPU per PUT, best round of each).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.settings import get_settings  # noqa: E402
from app.storage import ObjectStore, make_minio  # noqa: E402

BUCKET = "bench-s3-client"


def _minio_cpu_s() -> float | None:
    """MinIO's own CPU time, to show that the server's cost per PUT does not change."""
    found = subprocess.run(["pgrep", "-f", "minio server"], capture_output=True, text=True)
    if not found.stdout.split():
        return None
    fields = open(f"/proc/{found.stdout.split()[0]}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(name: str, put: Callable[[str], Awaitable[None]], puts: int,
                   concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await put(f"{name}/{i}")

    await put(f"{name}/warm-up")
    server0, cpu0, wall0 = _minio_cpu_s(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(puts)))
    cpu, wall, server1 = time.process_time() - cpu0, time.perf_counter() - wall0, _minio_cpu_s()
    server = (f"{(server1 - server0) / puts * 1000:.2f} ms"
              if server0 is not None and server1 is not None else "n/a")
    print(f"{name:8s} client CPU {cpu / puts * 1000:.3f} ms/PUT, MinIO CPU {server}/PUT, "
          f"{puts / wall:.0f} PUT/s")
    return cpu / puts * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    settings = get_settings()
    client = make_minio(settings)
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    store = ObjectStore(client, settings)
    data = os.urandom(40_000)

    async def with_minio(key: str) -> None:
        await asyncio.to_thread(client.put_object, BUCKET, key, io.BytesIO(data), len(data),
                                content_type="image/jpeg")

    async def with_obstore(key: str) -> None:
        await store.put(BUCKET, key, data, "image/jpeg")

    best: dict[str, float] = {}
    try:
        for _ in range(args.rounds):
            for name, put in (("minio", with_minio), ("obstore", with_obstore)):
                ms = await _measure(name, put, args.puts, args.concurrency)
                best[name] = min(best.get(name, ms), ms)
    finally:
        for obj in client.list_objects(BUCKET, recursive=True):
            client.remove_object(BUCKET, obj.object_name)
        client.remove_bucket(BUCKET)
    print(f"minio_ms={best['minio']:.3f} obstore_ms={best['obstore']:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
