"""What monitoring costs: Prometheus' own CPU and each exporter's CPU per scrape, and the
whole stack's CPU per image under load with Prometheus running and stopped, in one run.

Three measurements against the running single stack (`make up`):

1. Per scrape, per target: each program's CPU while its ``/metrics`` is fetched back to back
   (40 times), less its idle CPU over the same time, divided by the scrapes. Prometheus is
   stopped meanwhile so its own scrapes do not land in the figure. The exporters' cost per
   second at an interval I is then the sum over targets divided by I.
2. Prometheus' own CPU at idle for each interval in ``--intervals`` (its config rewritten
   and reloaded with SIGHUP between them; the stack's own interval is restored at the end).
3. Under load (``--rate`` images/second for ``--phase-s`` seconds per phase), phases with
   Prometheus running at the stack's interval and stopped, alternated (on, off, on, off), so
   that a neighbour's load on a shared machine lands on both sides: CPU ms per image by
   program (this stack's processes only), and the difference.

Run: ``.venv/bin/python bench/monitoring.py [--intervals 5,15,30] [--rate 15] [--phase-s 45]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.settings import Settings, get_settings  # noqa: E402
from app.stack import monitoring  # noqa: E402
from app.stack.faults import pid_of  # noqa: E402
from app.stack.layout import Layout  # noqa: E402
from app.stack.manage import rpc, start_process  # noqa: E402
from bench.pipeline import (  # noqa: E402
    _key,
    cpu_ms_per_image,
    cpu_s,
    print_cpu,
    proc_stat,
    run_load,
)
from tests.conftest import photo_variants  # noqa: E402

# Which supervised program serves each scrape job's targets, in the single topology.
PROGRAMS = {"worker": "worker-{n}", "function": "fn-{fn}", "minio": "minio",
            "minio-cluster": "minio", "kafka": "kafka", "nginx": "exporter", "redis": "exporter"}
SCRAPES = 40


def prometheus_running(layout: Layout, on: bool) -> None:
    """Start or stop the stack's Prometheus; already so is fine."""
    if on:
        start_process(layout, "prometheus", wait=True)
    elif rpc(layout).supervisor.getProcessInfo("prometheus")["statename"] == "RUNNING":
        rpc(layout).supervisor.stopProcess("prometheus", True)


def cpu_of(pid: int) -> float:
    fields = proc_stat(pid)
    if fields is None:
        raise RuntimeError(f"pid {pid} is gone")
    return cpu_s(fields)


def stack_cpu(layout: Layout) -> dict[str, float]:
    """CPU seconds so far of each program of this stack (its supervisor's pids and their
    children, e.g. nginx's workers), and of nothing else: on a shared machine other users'
    processes must not count."""
    pids = {int(p["pid"]): p["name"] for p in rpc(layout).supervisor.getAllProcessInfo()
            if p["pid"]}
    out: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = proc_stat(entry)
        if fields is None:
            continue
        pid, ppid = int(entry), int(fields[1])
        name = pids.get(pid) or pids.get(ppid)
        if name:
            name = name.split("-")[0] if name.startswith(("worker-", "fn-")) else name
            out[name] = out.get(name, 0.0) + cpu_s(fields)
    return out


def program_of(job: str, index: int, labels: dict[str, str]) -> str:
    return PROGRAMS[job].format(n=index + 1, fn=labels.get("function", ""))


def scrape_costs(layout: Layout, settings: Settings) -> dict[str, float]:
    """CPU ms one scrape costs the scraped program, by job and target."""
    out: dict[str, float] = {}
    for job, targets in monitoring.scrape_targets(settings).items():
        if job == "prometheus":
            continue
        path = monitoring.METRICS_PATHS.get(job, "/metrics")
        for index, (target, labels) in enumerate(targets):
            pid = pid_of(layout, program_of(job, index, labels))
            t0, c0 = time.perf_counter(), cpu_of(pid)
            time.sleep(3.0)
            idle_per_s = (cpu_of(pid) - c0) / (time.perf_counter() - t0)
            t0, c0 = time.perf_counter(), cpu_of(pid)
            size = 0
            for _ in range(SCRAPES):
                with urllib.request.urlopen(f"http://{target}{path}", timeout=10) as resp:
                    size = len(resp.read())
            took = time.perf_counter() - t0
            busy = cpu_of(pid) - c0 - idle_per_s * took
            out[f"{job} {target}"] = max(0.0, busy / SCRAPES * 1000)
            print(f"  {job:14} {target:16} {out[f'{job} {target}']:7.2f} ms/scrape "
                  f"({size / 1024:.0f} KiB)", flush=True)
    return out


def reload_with_interval(layout: Layout, settings: Settings, interval_s: float) -> None:
    monitoring.render_prometheus(layout, settings.model_copy(
        update={"prometheus_scrape_interval_s": interval_s}))
    os.kill(pid_of(layout, "prometheus"), signal.SIGHUP)


def prometheus_cpu(layout: Layout, settings: Settings, intervals: list[float],
                   window_s: float) -> dict[float, float]:
    """Prometheus' CPU (% of one core) at idle for each scrape interval."""
    out: dict[float, float] = {}
    try:
        for interval in intervals:
            reload_with_interval(layout, settings, interval)
            time.sleep(max(10.0, 2 * interval))  # settle: targets scraped at the new pace
            pid = pid_of(layout, "prometheus")
            t0, c0 = time.perf_counter(), cpu_of(pid)
            time.sleep(window_s)
            out[interval] = (cpu_of(pid) - c0) / (time.perf_counter() - t0) * 100
            print(f"  every {interval:g} s: Prometheus {out[interval]:.2f}% of a core",
                  flush=True)
    finally:
        reload_with_interval(layout, settings, settings.prometheus_scrape_interval_s)
    return out


def load_phase(layout: Layout, base: str, key: str | None, rate: float, seconds: float,
               seed: int) -> dict[str, float]:
    photos = photo_variants(int(rate * seconds), seed=seed)
    before = stack_cpu(layout)
    asyncio.run(run_load(base, key, photos, 16, rate))
    return cpu_ms_per_image(before, stack_cpu(layout), len(photos))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", default="5,15,30")
    parser.add_argument("--idle-window-s", type=float, default=45.0)
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--phase-s", type=float, default=45.0)
    parser.add_argument("--parts", default="scrape,idle,load",
                        help="which measurements, comma-separated: scrape, idle, load")
    args = parser.parse_args()
    settings = get_settings()
    layout = Layout.from_settings(settings)
    if not settings.prometheus_enabled or "prometheus" not in {
            p["name"] for p in rpc(layout).supervisor.getAllProcessInfo()}:
        raise SystemExit("Prometheus is not part of this stack (IMAGEREC_PROMETHEUS_ENABLED)")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
          "(shared with other users: figures are of this stack's processes only)")

    parts = set(args.parts.split(","))
    total_ms = 0.0
    if "scrape" in parts:
        print(f"1. CPU per scrape ({SCRAPES} back to back per target, Prometheus stopped):")
        prometheus_running(layout, False)
        try:
            total_ms = sum(scrape_costs(layout, settings).values())
        finally:
            prometheus_running(layout, True)
        print(f"  all targets: {total_ms:.1f} ms per round of scrapes")

    if "idle" in parts:
        intervals = [float(x) for x in args.intervals.split(",")]
        print(f"2. Prometheus' own CPU at idle, {args.idle_window_s:g} s per interval:")
        prom = prometheus_cpu(layout, settings, intervals, args.idle_window_s)
        print()
        print(f"{'interval':>9} {'Prometheus %':>13} {'exporters %':>12} "
              f"{'total % of a core':>18}")
        for interval in intervals:
            exporters = total_ms / interval / 10  # ms per interval -> % of one core
            print(f"{interval:8g}s {prom[interval]:13.2f} {exporters:12.2f} "
                  f"{prom[interval] + exporters:18.2f}")

    if "load" not in parts:
        return
    base, key = settings.gateway_url, _key()
    print(f"3. under load: {args.rate:g} images/s, {args.phase_s:g} s per phase, "
          f"Prometheus every {settings.prometheus_scrape_interval_s:g} s on / off alternated:")
    seed = int(time.time())
    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for n, state in enumerate(("on", "off", "on", "off")):
        prometheus_running(layout, state == "on")
        time.sleep(3)
        used = load_phase(layout, base, key, args.rate, args.phase_s, seed + 100 * n)
        results[state].append(used)
        print(f"  phase {n + 1} ({state}): {sum(used.values()):.2f} CPU ms per image, "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
    prometheus_running(layout, True)
    for state, phases in results.items():
        names = {k for p in phases for k in p}
        mean = {k: sum(p.get(k, 0.0) for p in phases) / len(phases) for k in names}
        print(f"CPU ms per image, Prometheus {state} (mean of {len(phases)} phases):")
        print_cpu(mean)
    on = sum(sum(p.values()) for p in results["on"]) / len(results["on"])
    off = sum(sum(p.values()) for p in results["off"]) / len(results["off"])
    print(f"difference: {on - off:+.2f} CPU ms per image ({(on - off) / off * 100:+.1f}%)")


if __name__ == "__main__":
    main()
