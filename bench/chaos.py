"""Chaos benchmark: a steady upload load on the cluster topology while one part dies.

For each scenario: upload real photos through the gateway at a steady rate (loopback only,
bounded in count and time), inject one fault a few seconds in, stop the load, wait for every
accepted upload to finish, then check each one in every tier: the result through the API,
the ``classification-results`` bucket, the table (its changelog topic), the ``image-results``
topic and Redis. Prints a table and a last line
``scenarios=N accepted=A lost=L conflicting=C max_unavailable_s=U``.

Needs the cluster up (``make up TOPOLOGY=cluster``); ``make chaos`` runs every scenario,
``--scenarios a,b`` some of them. Uploads are never retried here, so a refusal (503 with
Retry-After) is counted, not hidden; an accepted upload (202) whose result never appears in
every durable tier is ``lost``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import names  # noqa: E402
from app import results as res  # noqa: E402
from app.settings import get_settings  # noqa: E402
from app.stack import cluster, faults  # noqa: E402
from app.stack.layout import Layout  # noqa: E402
from app.stack.manage import _http_ok  # noqa: E402
from bench.pipeline import _key, cpu_s, proc_stat  # noqa: E402
from tests.conftest import photo_variants  # noqa: E402
from tests.kafkatools import end_offsets, read_from  # noqa: E402

CHANGELOG = "imagerec-results-changelog"


@dataclass
class Sent:
    at: float
    status: int  # 0: no HTTP answer at all (connection error)
    image_id: str | None
    retry_after: str | None = None


@dataclass
class Outcome:
    scenario: str
    accepted: int = 0
    refused_503: int = 0
    other_5xx: int = 0
    lost: int = 0
    failed: int = 0
    conflicting: int = 0
    uncached: int = 0
    max_unavailable_s: float = 0.0
    drain_s: float = 0.0
    note: str = ""
    lost_ids: list[str] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per accepted image, above idle
    idle_pct: dict[str, float] = field(default_factory=dict)  # % of one core with no load


# --- faults ---------------------------------------------------------------------------------

def _wait_back(layout: Layout, name: str, check: Callable[[], bool], timeout_s: float) -> float:
    faults.release(layout, name)
    return faults.wait_until(check, timeout_s, f"{name} back")


def kafka_leader_kill(layout: Layout, hold_s: float) -> str:
    settings = get_settings()
    node = faults.busiest_leader(settings, settings.topic_uploads)
    name = f"kafka-{node}"
    faults.wait_gone(faults.kill(layout, name))
    time.sleep(hold_s)
    took = _wait_back(layout, name, lambda: faults.fully_replicated(settings, settings.topics),
                      180)
    return f"killed {name} (led most partitions), held {hold_s:.0f}s, in sync {took:.0f}s later"


def kafka_rolling(layout: Layout, hold_s: float) -> str:
    settings = get_settings()
    took = []
    for node in range(1, cluster.KAFKA_NODES + 1):
        faults.restart(layout, f"kafka-{node}")
        took.append(faults.wait_until(
            lambda: faults.fully_replicated(settings, settings.topics), 180, "ISR"))
    return "restarted kafka-1..3 one by one, ISR full again after " + ", ".join(
        f"{t:.0f}s" for t in took)


def _minio_ok(port: int) -> bool:
    """The node is back in the cluster: it sees write quorum, not just listens."""
    return faults.minio_node_ok(port, "cluster")


def _minio_settle() -> None:
    """One fault at a time: wait until every node sees all its peers again."""
    faults.wait_until(lambda: faults.minio_settled(get_settings()), 180, "MinIO settled")


def minio_node_kill(layout: Layout, hold_s: float) -> str:
    settings = get_settings()
    port = cluster.Ports.from_settings(settings).minio[1]
    _minio_settle()
    faults.wait_gone(faults.kill(layout, "minio-2"))
    time.sleep(hold_s)
    took = _wait_back(layout, "minio-2", lambda: _minio_ok(port), 60)
    return f"killed minio-2, held {hold_s:.0f}s, back {took:.0f}s later"


def _objects_on(drive: Path) -> int:
    """Objects on one drive: each has an ``xl.meta``."""
    return sum(1 for _ in drive.rglob("xl.meta")) if drive.exists() else 0


def minio_drive_wipe(layout: Layout, hold_s: float) -> str:
    settings = get_settings()
    port = cluster.Ports.from_settings(settings).minio[2]
    drive, sibling = cluster.minio_drives(layout, 3)
    _minio_settle()
    faults.wait_gone(faults.kill(layout, "minio-3"))
    before = _objects_on(drive)
    shutil.rmtree(drive)
    drive.mkdir()
    time.sleep(hold_s)
    _wait_back(layout, "minio-3", lambda: _minio_ok(port), 60)
    # MinIO heals a fresh drive in the background at its own pace (about 55 objects/s here);
    # the wait grows with what the drive held.
    limit_s = max(300.0, before / 20)
    try:
        healed_s = faults.wait_until(lambda: _objects_on(drive) >= 0.99 * _objects_on(sibling),
                                     limit_s, "healing", every_s=5)
        healed = (f"healed in {healed_s:.0f}s ({_objects_on(drive)} objects, its sibling "
                  f"drive {_objects_on(sibling)})")
    except TimeoutError:
        healed = (f"NOT healed in {limit_s:.0f}s ({_objects_on(drive)} objects, its sibling "
                  f"drive {_objects_on(sibling)})")
    return f"killed minio-3, wiped {drive.name} ({before} objects), restarted; {healed}"


def redis_primary_kill(layout: Layout, hold_s: float) -> str:
    settings = get_settings()
    old = faults.redis_primary(settings)
    faults.wait_gone(faults.kill(layout, old))
    took = faults.wait_until(lambda: faults.redis_primary(settings) != old, 60, "failover")
    time.sleep(max(0.0, hold_s - took))
    faults.release(layout, old)
    return f"killed {old}; Sentinel promoted {faults.redis_primary(settings)} in {took:.1f}s"


def worker_kill(layout: Layout, hold_s: float) -> str:
    faults.wait_gone(faults.kill(layout, "worker-2"))
    time.sleep(hold_s)
    faults.release(layout, "worker-2")
    return f"killed worker-2, held {hold_s:.0f}s"


def worker_rolling(layout: Layout, hold_s: float) -> str:
    settings = get_settings()
    took = []
    for i in range(1, settings.workers + 1):
        faults.restart(layout, f"worker-{i}")
        took.append(faults.wait_until(
            lambda i=i: _http_ok(f"http://127.0.0.1:{settings.web_port + i - 1}/readyz"), 180,
            f"worker-{i}"))
    return "restarted worker-1..3 one by one, ready after " + ", ".join(f"{t:.0f}s" for t in took)


def baseline(layout: Layout, hold_s: float) -> str:
    time.sleep(hold_s)
    return "no fault: the steady load alone (CPU per image below)"


SCENARIOS: dict[str, Callable[[Layout, float], str]] = {
    "baseline": baseline,
    "kafka-leader-kill": kafka_leader_kill,
    "minio-node-kill": minio_node_kill,
    "minio-drive-wipe": minio_drive_wipe,
    "redis-primary-kill": redis_primary_kill,
    "worker-kill": worker_kill,
    "worker-rolling": worker_rolling,
    "kafka-rolling": kafka_rolling,
}


# --- load -----------------------------------------------------------------------------------

async def _load(base: str, key: str | None, photos: list[bytes], rate: float,
                stop: threading.Event, min_s: float) -> list[Sent]:
    """One upload every 1/rate seconds until ``stop`` is set (and at least ``min_s``), or the
    photos run out; never retried."""
    headers = {"Content-Type": "image/jpeg", **({"Authorization": f"Bearer {key}"} if key else {})}
    sent: list[Sent] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.monotonic()

        async def one(data: bytes) -> None:
            at = time.monotonic()
            try:
                async with session.post(f"{base}/v1/images", data=data, headers=headers) as r:
                    body = await r.read()
                    image_id = json.loads(body).get("id") if r.status in (200, 202) else None
                    sent.append(Sent(at, r.status, image_id, r.headers.get("Retry-After")))
            except (aiohttp.ClientError, TimeoutError):
                sent.append(Sent(at, 0, None))

        tasks = []
        for i, data in enumerate(photos):
            elapsed = time.monotonic() - start
            if stop.is_set() and elapsed >= min_s:
                break
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(data)))
        await asyncio.gather(*tasks)
    return sent


async def _final_results(base: str, key: str | None, ids: list[str], timeout_s: float
                         ) -> tuple[dict[str, dict], float]:
    """Poll until every id has a final result; returns them and the seconds it took."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    done: dict[str, dict] = {}
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        sem = asyncio.Semaphore(16)

        async def check(image_id: str) -> None:
            async with sem:
                try:
                    async with session.get(f"{base}/v1/images/{image_id}",
                                           headers=headers) as r:
                        if r.status == 200:
                            body = await r.json()
                            if body.get("status") in ("done", "failed"):
                                done[image_id] = body
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass

        while time.monotonic() - start < timeout_s:
            pending = [i for i in ids if i not in done]
            if not pending:
                break
            await asyncio.gather(*(check(i) for i in pending))
            if len(done) < len(ids):
                await asyncio.sleep(1.0)
    return done, time.monotonic() - start


def _essence(result: dict) -> tuple:
    """What must agree between two copies of one image's result (not their timestamps)."""
    model = result.get("model") or {}
    labels = tuple(label.get("class_id") for label in (result.get("labels") or [])[:5])
    return (result.get("status"), model.get("name"), model.get("version"), labels)


def _max_unavailable(sent: list[Sent]) -> float:
    """The longest time from a refused upload to the next accepted one."""
    longest, since = 0.0, None
    for item in sorted(sent, key=lambda s: s.at):
        if item.status in (200, 202):
            if since is not None:
                longest = max(longest, item.at - since)
            since = None
        elif since is None:
            since = item.at
    if since is not None and sent:
        longest = max(longest, max(s.at for s in sent) - since)
    return longest


def _tiers(ids: list[str], starts: dict[str, dict[int, int]]) -> dict[str, dict[str, list]]:
    """Every copy of each result: bucket, table changelog, results topic, Redis."""
    from app.redisconn import redis_client
    from app.storage import get_store

    settings = get_settings()
    wanted = set(ids)
    copies: dict[str, dict[str, list]] = {i: {"storage": [], "table": [], "topic": [],
                                              "redis": []} for i in ids}
    store = get_store()
    for image_id in ids:
        try:
            copies[image_id]["storage"].append(res.decode(
                store.get_bytes(settings.bucket_results, names.result_key(image_id))))
        except Exception:  # noqa: BLE001 - missing or unreadable: counted below
            pass
    for tier, topic in (("table", CHANGELOG), ("topic", settings.topic_results)):
        ends = end_offsets(settings.kafka_bootstrap, topic)
        records = _read_all(settings.kafka_bootstrap, topic, starts[topic], ends)
        for record in records:
            key = (record.key or b"").decode(errors="replace")
            key = key.strip('"')
            if key in wanted and record.value:
                try:
                    copies[key][tier].append(res.decode(record.value))
                except ValueError:
                    pass
    rds = redis_client(settings, asyncio=False, socket_timeout=5)
    for image_id, raw in zip(ids, rds.mget([names.redis_result(i) for i in ids]), strict=True):
        if raw:
            copies[image_id]["redis"].append(res.decode(raw))
    return copies


def _read_all(bootstrap: str, topic: str, start: dict[int, int], ends: dict[int, int]
              ) -> list:
    """Every record of ``topic`` between two sets of offsets."""
    total = sum(max(0, ends[p] - start.get(p, 0)) for p in ends)
    return read_from(bootstrap, topic, {p: start.get(p, 0) for p in ends},
                     until=lambda records: len(records) >= total, timeout_s=60)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx's worker under its master)."""
    import os

    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()
            and (fields := proc_stat(entry)) is not None and int(fields[1]) == pid]


def component_cpu_s(layout: Layout) -> dict[str, float]:
    """CPU seconds used so far by this stack's own programs and their children (not by
    anything else on the machine), by component: ``kafka-2`` counts as ``kafka``."""
    from app.stack.manage import rpc

    out: dict[str, float] = {}
    for info in rpc(layout).supervisor.getAllProcessInfo():
        if not info["pid"]:
            continue
        component = info["name"].rsplit("-", 1)[0] if info["name"][-1].isdigit() \
            else info["name"]
        for pid in (info["pid"], *_children(info["pid"])):
            fields = proc_stat(pid)
            if fields is not None:
                out[component] = out.get(component, 0.0) + cpu_s(fields)
    return out


def idle_cpu_rate(layout: Layout, seconds: float) -> dict[str, float]:
    """CPU seconds per second each component uses with no load (scanners, heartbeats,
    replication fetches), to take out of the per-image figures."""
    before, start = component_cpu_s(layout), time.monotonic()
    time.sleep(seconds)
    after, took = component_cpu_s(layout), time.monotonic() - start
    return {k: (after[k] - before.get(k, 0.0)) / took for k in after}


def run_scenario(name: str, rate: float, duration_s: float, fault_at_s: float, hold_s: float,
                 photos: list[bytes]) -> Outcome:
    settings = get_settings()
    layout = Layout.from_settings(settings)
    base, key = settings.gateway_url.rstrip("/"), _key()
    starts = {t: end_offsets(settings.kafka_bootstrap, t)
              for t in (CHANGELOG, settings.topic_results)}
    stop = threading.Event()
    note: list[str] = []
    idle = idle_cpu_rate(layout, 15) if name == "baseline" else {}
    cpu_before, cpu_start = component_cpu_s(layout), time.monotonic()

    def inject() -> None:
        time.sleep(fault_at_s)
        try:
            note.append(SCENARIOS[name](layout, hold_s))
        except Exception as exc:  # noqa: BLE001 - reported in the table, never hidden
            note.append(f"FAULT FAILED: {exc!r}"[:200])
        finally:
            faults.release_all(layout)
            stop.set()

    thread = threading.Thread(target=inject, daemon=True)
    thread.start()
    sent = asyncio.run(_load(base, key, photos, rate, stop, duration_s))
    thread.join()
    out = Outcome(scenario=name, note=note[0] if note else "")
    accepted = [s.image_id for s in sent if s.image_id]
    out.accepted = len(accepted)
    out.refused_503 = sum(1 for s in sent if s.status == 503 and s.retry_after)
    # a 503 without Retry-After counts as any other server error, as does no answer at all
    out.other_5xx = sum(1 for s in sent if s.status >= 500 and not (s.status == 503
                                                                     and s.retry_after)
                        or s.status == 0)
    out.max_unavailable_s = _max_unavailable(sent)
    finals, out.drain_s = asyncio.run(_final_results(base, key, accepted, 300))
    if accepted:
        after, took = component_cpu_s(layout), time.monotonic() - cpu_start
        out.cpu_ms = {k: (after[k] - cpu_before.get(k, 0.0) - idle.get(k, 0.0) * took)
                      * 1000 / len(accepted) for k in after}
        out.idle_pct = {k: v * 100 for k, v in idle.items()}
    copies = _tiers(accepted, starts)
    for image_id in accepted:
        tiers = copies[image_id]
        api = finals.get(image_id)
        durable_missing = not api or not tiers["storage"] or not tiers["table"] \
            or not tiers["topic"]
        if durable_missing:
            out.lost += 1
            out.lost_ids.append(image_id)
            continue
        if api.get("status") != "done":
            out.failed += 1
        if not tiers["redis"]:
            out.uncached += 1
        essences = {_essence(api)} | {_essence(r) for t in tiers.values() for r in t}
        if len(essences) > 1:
            out.conflicting += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, from: " + ", ".join(SCENARIOS))
    parser.add_argument("--rate", type=float, default=12.0, help="uploads per second")
    parser.add_argument("--duration", type=float, default=40.0,
                        help="seconds of load per scenario (longer if the fault lasts longer)")
    parser.add_argument("--fault-at", type=float, default=8.0, help="seconds into the load")
    parser.add_argument("--hold", type=float, default=15.0,
                        help="seconds a killed server stays down")
    args = parser.parse_args()
    # A killed broker is expected; aiokafka's reconnect messages would bury the table.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    settings = get_settings()
    if settings.topology != "cluster":
        sys.exit("chaos: the cluster topology is not running (make up TOPOLOGY=cluster)")
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        sys.exit(f"chaos: unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    # At most 4x the planned count: a scenario whose fault outlasts the load keeps going.
    per_run = int(args.rate * args.duration * 4)
    outcomes = []
    for index, name in enumerate(chosen):
        photos = photo_variants(per_run, seed=1000 + index + int(time.time()) % 100000)
        print(f"chaos: {name} ...", flush=True)
        outcome = run_scenario(name, args.rate, args.duration, args.fault_at, args.hold,
                               photos)
        outcomes.append(outcome)
        print(f"  {outcome.note}", flush=True)
        if outcome.lost_ids:
            print(f"  lost: {outcome.lost_ids[:10]}", flush=True)
    for o in outcomes:
        if o.scenario == "baseline" and o.cpu_ms:
            print("CPU by component, this stack's processes only (baseline): ms per image "
                  "above idle, and % of a core at idle")
            for component, ms in sorted(o.cpu_ms.items(), key=lambda kv: -kv[1]):
                print(f"  {component:20} {ms:7.2f} ms  {o.idle_pct.get(component, 0):6.1f} %")
            print(f"  {'total':20} {sum(o.cpu_ms.values()):7.2f} ms  "
                  f"{sum(o.idle_pct.values()):6.1f} %")
            from app.stack.manage import process_rss_mb

            rss = process_rss_mb(Layout.from_settings(settings))
            print(f"memory after the run: {sum(rss.values()):.0f} MB resident in "
                  f"{len(rss)} processes")
    header = (f"{'scenario':20} {'accepted':>8} {'lost':>5} {'conflict':>8} {'failed':>6} "
              f"{'503s':>5} {'other5xx':>8} {'max503_s':>8} {'drain_s':>7} {'uncached':>8}")
    print(header)
    for o in outcomes:
        print(f"{o.scenario:20} {o.accepted:8d} {o.lost:5d} {o.conflicting:8d} {o.failed:6d} "
              f"{o.refused_503:5d} {o.other_5xx:8d} {o.max_unavailable_s:8.1f} "
              f"{o.drain_s:7.1f} {o.uncached:8d}")
    print(f"scenarios={len(outcomes)} accepted={sum(o.accepted for o in outcomes)} "
          f"lost={sum(o.lost for o in outcomes)} "
          f"conflicting={sum(o.conflicting for o in outcomes)} "
          f"max_unavailable_s={max((o.max_unavailable_s for o in outcomes), default=0):.1f}")
    bad = any(o.lost or o.conflicting or o.other_5xx or o.note.startswith("FAULT FAILED")
              or "NOT healed" in o.note for o in outcomes)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
