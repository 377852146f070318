"""End-to-end benchmark: 1000 real JPEGs through the gateway, results followed over SSE.

Reports, in one run:
- end-to-end images/second (first upload sent -> last result received) at bounded concurrency,
- upload-to-result latency p50/p95/p99 under that load,
- p50 latency at light load (a steady 10 images/second),
- the in-process ceiling: decode + preprocess + infer of the same images in this process with
  the same engine, one after the other (what a single process without Kafka, MinIO or Redis
  does), measured just before and just after the heavy run; the higher of the two counts;
- the same ceiling with the fp32 engine (``fp32_ceiling_img_s``, ``ratio_fp32`` = pipeline /
  fp32 ceiling): what the whole service achieves against the best a single process could do
  before the int8 engine existed,
- each worker's and function's resident memory after the run (no TensorFlow in them).
The last line is machine-readable. Needs the stack up (`make up`); run with `make bench` or
`.venv/bin/python bench/pipeline.py [--images 1000] [--concurrency 48] [--runs 1]`.

On a shared machine one ratio swings by +-5% from run to run, mostly with the ceiling (its two
inference threads suffer most when the host is busy), so ``--runs N`` repeats the heavy run
with fresh images and its own two ceilings, prints every run, and ends with the run at the
median ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.settings import get_settings  # noqa: E402
from tests.conftest import photo_variants  # noqa: E402


def _key() -> str | None:
    if os.environ.get("IMAGEREC_API_KEY"):
        return os.environ["IMAGEREC_API_KEY"]
    path = get_settings().home / "dev-api-key"
    return path.read_text().strip() if path.exists() else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


class Follower:
    """One SSE connection; records when each result arrives."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str | None) -> None:
        self.session, self.base, self.key = session, base, key
        self.arrived: dict[str, float] = {}
        self.events: dict[str, asyncio.Event] = {}
        self.ready = asyncio.Event()

    async def run(self) -> None:
        params = {"api_key": self.key} if self.key else {}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.session.get(f"{self.base}/v1/events", params=params,
                                    timeout=timeout) as resp:
            resp.raise_for_status()
            self.ready.set()
            async for raw in resp.content:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    result = json.loads(line[5:])
                    now = time.perf_counter()
                    self.arrived.setdefault(result["id"], now)
                    self.events.setdefault(result["id"], asyncio.Event()).set()


async def upload(session: aiohttp.ClientSession, base: str, key: str | None,
                 data: bytes) -> tuple[str, float]:
    headers = {"Content-Type": "image/jpeg"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    for _ in range(50):
        sent = time.perf_counter()
        async with session.post(f"{base}/v1/images", data=data, headers=headers) as resp:
            if resp.status in (200, 202):
                return (await resp.json())["id"], sent
            if resp.status in (429, 502, 503):
                await asyncio.sleep(float(resp.headers.get("Retry-After", "0.2")))
                continue
            raise RuntimeError(f"upload failed: {resp.status} {await resp.text()}")
    raise RuntimeError("upload kept being refused")


async def run_load(base: str, key: str | None, photos: list[bytes], concurrency: int,
                   rate: float | None) -> tuple[float, list[float]]:
    """Returns (images/second, latencies in ms)."""
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        follower = Follower(session, base, key)
        task = asyncio.create_task(follower.run())
        await asyncio.wait_for(follower.ready.wait(), 10)
        sem = asyncio.Semaphore(concurrency)
        sent_at: dict[str, float] = {}
        start = time.perf_counter()

        async def one(i: int, data: bytes) -> None:
            if rate:
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            async with sem:
                image_id, sent = await upload(session, base, key, data)
                sent_at[image_id] = sent

        await asyncio.gather(*(one(i, p) for i, p in enumerate(photos)))
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline and not set(sent_at) <= set(follower.arrived):
            await asyncio.sleep(0.05)
        task.cancel()
        missing = set(sent_at) - set(follower.arrived)
        if missing:
            raise RuntimeError(f"{len(missing)} results never arrived")
        end = max(follower.arrived[i] for i in sent_at)
        latencies = [(follower.arrived[i] - sent_at[i]) * 1000 for i in sent_at]
        return len(photos) / (end - start), latencies


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None when the
    process is gone. Field 1 is the parent pid, 11 and 12 user and system clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_s(fields: list[str]) -> float:
    """CPU seconds (user + system) from ``proc_stat`` fields."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each process of this machine, grouped by program."""
    out: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fields = proc_stat(pid)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if fields is None:
            continue
        name = _program(pid, [a.decode(errors="replace") for a in argv if a])
        out[name] = out.get(name, 0.0) + cpu_s(fields)
    return out


def cpu_ms_per_image(before: dict[str, float], after: dict[str, float],
                     images: int) -> dict[str, float]:
    """CPU milliseconds per image, by program, between two ``cpu_seconds`` readings."""
    return {k: (after.get(k, 0.0) - before.get(k, 0.0)) / images * 1000 for k in after}


def print_cpu(cpu_ms: dict[str, float]) -> None:
    for name, ms in sorted(cpu_ms.items(), key=lambda kv: -kv[1]):
        if ms > 0.05:
            print(f"  {name:32} {ms:8.2f}")
    print(f"  {'total':32} {sum(cpu_ms.values()):8.2f}")


def _program(pid: str, argv: list[str]) -> str:
    if str(os.getpid()) == pid:
        return "benchmark client"
    text = " ".join(argv)
    for needle, name in (("app.worker", "workers"), ("functions.serve", "functions"),
                         ("kafka.Kafka", "kafka"), ("minio", "minio"),
                         ("redis-server", "redis"), ("nginx", "nginx"),
                         ("prometheus", "prometheus")):
        if needle in text:
            return name
    return "other"


def ceiling(photos: list[bytes], passes: int = 3, engine: str | None = None) -> float:
    """Decode + preprocess + infer, one image after the other, in this process.

    ``engine``: None for what the stack serves (settings ``engine``, normally auto).
    """
    from app.imaging import prepare
    from app.model.classifier import Classifier

    clf = Classifier(engine=engine)
    loaded = clf.current
    for data in photos[:20]:  # warm up
        clf.classify_arrays_sync([prepare(data, loaded.spec)[1]], model=loaded)
    best = 0.0
    for _ in range(passes):  # the best pass: a conservative (high) ceiling
        t0 = time.perf_counter()
        for data in photos:
            clf.classify_arrays_sync([prepare(data, loaded.spec)[1]], model=loaded)
        best = max(best, len(photos) / (time.perf_counter() - t0))
    clf.close()
    return best


@dataclass
class Run:
    """One heavy run and the ceiling measured on its images just before and just after it."""

    rate: float
    ceilings: tuple[float, float]
    latencies: list[float]
    cpu_ms: dict[str, float]  # CPU per image during the heavy run, by program
    fp32_ceilings: tuple[float, float] = (float("nan"), float("nan"))
    engine: str = ""

    @property
    def fp32_ceiling(self) -> float:
        return max(self.fp32_ceilings)

    @property
    def ratio_fp32(self) -> float:
        return self.rate / self.fp32_ceiling

    @property
    def ceiling(self) -> float:
        # Background load on a shared machine lowers a single ceiling measurement by up to
        # 20%, which would flatter the ratio: the higher of the two counts.
        return max(self.ceilings)

    @property
    def ratio(self) -> float:
        return self.rate / self.ceiling


def heavy_run(base: str, key: str | None, photos: list[bytes], concurrency: int) -> Run:
    print("in-process ceilings, serving engine and fp32 (stack idle) ...", flush=True)
    first = ceiling(photos)
    first_fp32 = ceiling(photos, engine="litert-fp32")
    median_kib = statistics.median(len(p) for p in photos) / 1024
    print(f"heavy load: {len(photos)} real JPEGs (median {median_kib:.0f} KiB), concurrency "
          f"{concurrency} ...", flush=True)
    before = cpu_seconds()
    rate, lat = asyncio.run(run_load(base, key, photos, concurrency, None))
    after = cpu_seconds()
    used = cpu_ms_per_image(before, after, len(photos))
    print("in-process ceilings again (stack idle) ...", flush=True)
    time.sleep(5)
    return Run(rate, (first, ceiling(photos)), lat, used,
               (first_fp32, ceiling(photos, engine="litert-fp32")), serving_engine())


def serving_engine() -> str:
    """The engine the first worker serves with (its /v1/models), for the report."""
    import urllib.request

    url = f"http://127.0.0.1:{get_settings().web_port}/v1/models"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return (json.loads(resp.read()).get("serving") or {}).get("engine", "?")
    except OSError:
        return "?"


def stack_rss() -> dict[str, float]:
    """Resident MB of each worker and function of this stack (from its supervisor)."""
    from app.stack.layout import Layout
    from app.stack.manage import process_rss_mb

    return {name: mb for name, mb in process_rss_mb(Layout.from_settings(get_settings())).items()
            if name.startswith(("worker-", "fn-"))}


def report(run: Run, light_lat: list[float]) -> None:
    print()
    print(f"{'measure':34} {'value':>10}")
    print(f"{'pipeline images/s':34} {run.rate:10.1f}")
    print(f"{'in-process ceiling images/s':34} {run.ceiling:10.1f}  "
          f"(before {run.ceilings[0]:.1f}, after {run.ceilings[1]:.1f})")
    print(f"{'ratio':34} {run.ratio:10.2f}  (serving engine {run.engine})")
    print(f"{'fp32 in-process ceiling images/s':34} {run.fp32_ceiling:10.1f}  "
          f"(before {run.fp32_ceilings[0]:.1f}, after {run.fp32_ceilings[1]:.1f})")
    print(f"{'ratio to the fp32 ceiling':34} {run.ratio_fp32:10.2f}")
    for q in (50, 95, 99):
        print(f"{f'latency p{q} ms (heavy)':34} {percentile(run.latencies, q):10.0f}")
    print(f"{'latency p50 ms (light, 10/s)':34} {percentile(light_lat, 50):10.0f}")
    print()
    print("CPU per image during the heavy run, by program (ms):")
    print_cpu(run.cpu_ms)
    print(f"{'latency p95 ms (light, 10/s)':34} {percentile(light_lat, 95):10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--light-images", type=int, default=100)
    parser.add_argument("--light-rate", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=1,
                        help="heavy runs, each with its own ceilings; the last line is the run "
                             "with the median ratio (the lower one of an even count)")
    args = parser.parse_args()
    settings = get_settings()
    base, key = settings.gateway_url, _key()
    seed = int(time.time())  # fresh bytes every run: no de-duplication shortcut
    light = photo_variants(args.light_images, seed=seed + 1)
    print(f"gateway {base}; batch {settings.batch_size} within {settings.batch_window_s}s")

    print("warm-up ...", flush=True)
    asyncio.run(run_load(base, key, photo_variants(40, seed=seed + 2), args.concurrency, None))
    print(f"light load: {args.light_images} images at {args.light_rate}/s ...", flush=True)
    _, light_lat = asyncio.run(run_load(base, key, light, 8, args.light_rate))
    # Each run's images are made when it starts (seed, seed + 10, ...), not all kept at once.
    runs = [heavy_run(base, key, photo_variants(args.images, seed=seed + 10 * i),
                      args.concurrency) for i in range(args.runs)]

    if len(runs) > 1:
        print()
        print(f"{'run':>4} {'img/s':>7} {'ceiling (before/after)':>24} {'ratio':>6} "
              f"{'p50 ms':>7} {'CPU ms/img':>11}")
        for n, run in enumerate(runs, 1):
            print(f"{n:4d} {run.rate:7.1f} {run.ceilings[0]:11.1f} / {run.ceilings[1]:<10.1f} "
                  f"{run.ratio:6.2f} {percentile(run.latencies, 50):7.0f} "
                  f"{sum(run.cpu_ms.values()):11.2f}")
    median = sorted(runs, key=lambda r: r.ratio)[(len(runs) - 1) // 2]
    report(median, light_lat)
    print()
    print("Resident memory after the run (MB):")
    for name, mb in sorted(stack_rss().items()):
        print(f"  {name:32} {mb:8.0f}")
    print(f"pipeline_img_s={median.rate:.1f} ceiling_img_s={median.ceiling:.1f} "
          f"ratio={median.ratio:.2f} p50_ms={percentile(median.latencies, 50):.0f} "
          f"p95_ms={percentile(median.latencies, 95):.0f} "
          f"p99_ms={percentile(median.latencies, 99):.0f} "
          f"light_p50_ms={percentile(light_lat, 50):.0f} "
          f"fp32_ceiling_img_s={median.fp32_ceiling:.1f} ratio_fp32={median.ratio_fp32:.2f}")


if __name__ == "__main__":
    main()
