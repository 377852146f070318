"""Re-classification benchmark: live-upload latency idle and while a job re-classifies.

1. stores ``--images`` (500) fresh real JPEGs through the gateway and waits for their results;
2. sends live uploads at a steady ``--live-rate`` (5/s) for ``--live-s`` seconds with nothing
   else running, each timed from POST to its result (long-poll): the idle p50/p95;
3. starts ``imagerec reclassify`` over those images with the model version the workers do not
   serve (``POST /v1/admin/reclassify``, at settings ``reclassify_rate`` unless ``--rate``)
   and sends the same live load until the job is done: the p50/p95 during it;
4. checks every image then has both models' answers.

Printed, not asserted (the issue's target: p50 during < 2x idle). The last line is JSON.
Needs the stack up; `.venv/bin/python bench/reclassify.py [--images 500] [--rate 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.apikeys import KeyStore  # noqa: E402
from app.model import efficientnet_lite0  # noqa: E402
from app.model.convert import int8_version  # noqa: E402
from app.settings import get_settings  # noqa: E402
from bench.pipeline import _key, percentile  # noqa: E402
from tests.conftest import photo_variants  # noqa: E402

VERSIONS = (efficientnet_lite0.VERSION, int8_version(efficientnet_lite0.VERSION))


async def upload_and_wait(session: aiohttp.ClientSession, base: str, data: bytes
                          ) -> tuple[float, dict]:
    """Seconds from POST to a final result, and that result."""
    t0 = time.perf_counter()
    async with session.post(f"{base}/v1/images", data=data,
                            headers={"Content-Type": "image/jpeg"}) as resp:
        body = await resp.json()
        assert resp.status in (200, 202), (resp.status, body)
    while body.get("status") not in ("done", "failed"):
        async with session.get(f"{base}/v1/images/{body['id']}", params={"wait": "20"}) as resp:
            if resp.status == 200:
                body = await resp.json()
    return time.perf_counter() - t0, body


async def store_many(base: str, key: str, photos: list[bytes], concurrency: int = 16
                     ) -> list[dict]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async def one(data: bytes) -> dict:
            async with sem:
                return (await upload_and_wait(session, base, data))[1]
        return await asyncio.gather(*(one(p) for p in photos))


async def live_load(base: str, key: str, rate: float, until: object, photos: list[bytes]
                    ) -> list[float]:
    """Uploads at ``rate``/s until ``until()`` is true (or ``photos`` run out); each one's
    latency in seconds."""
    lat: list[float] = []
    left = iter(photos)
    tasks = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async def one(data: bytes) -> None:
            lat.append((await upload_and_wait(session, base, data))[0])

        start = time.perf_counter()
        n = 0
        while not await until() and (data := next(left, None)) is not None:
            tasks.append(asyncio.create_task(one(data)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    return lat


async def main_async(args: argparse.Namespace) -> dict:
    settings = get_settings()
    base = settings.gateway_url.rstrip("/")
    key = _key()
    store = KeyStore(settings=settings)
    admin_name = f"bench-reclassify-{uuid.uuid4().hex[:6]}"
    admin_key = store.create(admin_name, scopes="admin")
    await asyncio.sleep(1.2)  # past the workers' miss-refresh interval
    try:
        seed = int(time.time())
        live = photo_variants(int(args.live_rate * args.live_s) * 6, seed=seed + 1)
        stored_photos = photo_variants(args.images, seed=seed)
        deadline = time.monotonic() + args.live_s

        async def idle_over() -> bool:
            return time.monotonic() >= deadline

        # Idle first, so that the job's images are exactly the stored ones (a job covers
        # what was uploaded between --since and its own start).
        idle = await live_load(base, key, args.live_rate, idle_over, live[: len(live) // 3])
        print(f"idle: {len(idle)} live uploads, p50 {percentile(idle, 50) * 1000:.0f} ms, "
              f"p95 {percentile(idle, 95) * 1000:.0f} ms")

        since = datetime.now(UTC).isoformat(timespec="milliseconds")
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        stored = await store_many(base, key, stored_photos)
        print(f"stored {len(stored)} images in {time.perf_counter() - t0:.1f} s")
        served = {r["model"]["version"] for r in stored if r.get("model")}
        [new] = [v for v in VERSIONS if v not in served][:1] or [VERSIONS[0]]

        body = {"model": f"{efficientnet_lite0.NAME}:{new}", "since": since, "restart": True}
        if args.rate:
            body["rate"] = args.rate
        admin = aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_key}"})
        async with admin:
            async with admin.post(f"{base}/v1/admin/reclassify", json=body) as resp:
                job = await resp.json()
                assert resp.status == 202, job
            started = time.perf_counter()
            last: dict = job

            async def job_done() -> bool:
                nonlocal last
                async with admin.get(f"{base}/v1/admin/reclassify/{job['id']}") as resp:
                    last = await resp.json()
                return last["state"] in ("done", "cancelled", "failed")

            during = await live_load(base, key, args.live_rate, job_done, live[len(live) // 3:])
            while not await job_done():
                await asyncio.sleep(0.5)
            took = time.perf_counter() - started
        print(f"reclassify: {last['finished']} of {last['total']} images with {body['model']} "
              f"in {took:.1f} s ({last['finished'] / took:.1f} img/s, job rate "
              f"{last['rate']:g}/s)")
        print(f"during: {len(during)} live uploads, p50 {percentile(during, 50) * 1000:.0f} ms,"
              f" p95 {percentile(during, 95) * 1000:.0f} ms")
        ratio = percentile(during, 50) / percentile(idle, 50)
        print(f"live p50 during / idle: {ratio:.2f} (target < 2)")

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
            both = 0
            for r in stored:
                async with s.get(f"{base}/v1/images/{r['id']}") as resp:
                    now = await resp.json()
                both += len({h["version"] for h in now.get("history", [])
                             if h["status"] == "done"}) >= 2
        print(f"images with both models' answers: {both} of {len(stored)}")
        return {"images": len(stored), "reclassify_s": round(took, 1),
                "reclassify_img_s": round(last["finished"] / took, 1), "rate": last["rate"],
                "idle_p50_ms": round(percentile(idle, 50) * 1000),
                "idle_p95_ms": round(percentile(idle, 95) * 1000),
                "during_p50_ms": round(percentile(during, 50) * 1000),
                "during_p95_ms": round(percentile(during, 95) * 1000),
                "p50_ratio": round(ratio, 2), "both_models": both}
    finally:
        store.delete(admin_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rate", type=float, default=None,
                        help="job rate, images/s (default: settings reclassify_rate)")
    parser.add_argument("--live-rate", type=float, default=5.0)
    parser.add_argument("--live-s", type=float, default=20.0)
    args = parser.parse_args()
    os.environ.setdefault("IMAGEREC_LOG_JSON", "false")
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
