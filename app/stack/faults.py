"""Fault injection on the local cluster: kill a server, keep it down, bring it back.

Used by ``bench/chaos.py`` and the cluster tests. Every cluster program starts through the
hold gate (``app.stack.cluster.HOLD_GATE``): while its hold file exists, supervisord's
restart of a killed program waits, so a fault lasts as long as the caller decides and a
drive can be wiped while its node is really down. Only this machine's own processes are
touched, by the pids supervisord reports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

from app.settings import Settings
from app.stack.layout import Layout
from app.stack.manage import _wait_gone, process_states, rpc


def pid_of(layout: Layout, name: str) -> int:
    info = rpc(layout).supervisor.getProcessInfo(name)
    if info["statename"] != "RUNNING" or not info["pid"]:
        raise RuntimeError(f"{name} is not running ({info['statename']})")
    return int(info["pid"])


def kill(layout: Layout, name: str, *, hold: bool = True) -> int:
    """SIGKILL ``name``; with ``hold`` its restart waits until ``release``. Returns the pid."""
    pid = pid_of(layout, name)
    if hold:
        layout.hold.mkdir(parents=True, exist_ok=True)
        (layout.hold / name).touch()
    os.kill(pid, signal.SIGKILL)
    return pid


def release(layout: Layout, name: str) -> None:
    (layout.hold / name).unlink(missing_ok=True)


def release_all(layout: Layout) -> None:
    if layout.hold.exists():
        for path in layout.hold.iterdir():
            path.unlink(missing_ok=True)


def wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    if _wait_gone([pid], timeout_s):
        raise TimeoutError(f"pid {pid} still alive after {timeout_s}s")


def restart(layout: Layout, name: str) -> None:
    """A graceful restart (SIGTERM, wait, start): what a rolling upgrade does."""
    proxy = rpc(layout).supervisor
    proxy.stopProcess(name, True)
    proxy.startProcess(name, True)


def running(layout: Layout) -> dict[str, str]:
    return process_states(layout)


# --- Kafka ----------------------------------------------------------------------------------

async def describe_topic(settings: Settings, topic: str) -> list[dict]:
    """Partitions of ``topic`` with leader, replicas and in-sync replicas (node ids)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_servers,
                                request_timeout_ms=5000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [
        {"partition": p["partition"], "leader": p["leader"],
         "replicas": list(p["replicas"]), "isr": list(p["isr"])}
        for t in described for p in t["partitions"]
    ]


async def topic_config(settings: Settings, topic: str) -> dict[str, str]:
    """The topic's effective configuration as the brokers report it."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_servers,
                                request_timeout_ms=5000)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    out: dict[str, str] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            for entry in resource["config_entries"]:
                out[entry["config_names"]] = entry["config_value"]
    return out


def busiest_leader(settings: Settings, topic: str) -> int:
    """The node id that leads the most partitions of ``topic``."""
    leaders = Counter(p["leader"] for p in asyncio.run(describe_topic(settings, topic)))
    return leaders.most_common(1)[0][0]


def fully_replicated(settings: Settings, topics: list[str]) -> bool:
    """Every partition of ``topics`` has all its replicas in sync."""
    async def check() -> bool:
        for topic in topics:
            for part in await describe_topic(settings, topic):
                if sorted(part["isr"]) != sorted(part["replicas"]) or part["leader"] < 0:
                    return False
        return True

    try:
        return asyncio.run(check())
    except Exception:  # noqa: BLE001 - a broker still starting answers with errors
        return False


# --- MinIO ----------------------------------------------------------------------------------

def minio_node_ok(port: int, check: str = "cluster?maintenance=true") -> bool:
    """MinIO's own answer for one node; with ``maintenance=true``: could this node go down
    now and writes still have quorum, as this node sees its peers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/minio/health/{check}",
                                    timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def minio_settled(settings: Settings) -> bool:
    """Every node could be taken down for maintenance: each one sees all its peers' drives,
    so one more node may die without writes losing quorum. A node that was just restarted
    answers health checks before its peers have reconnected to it; killing another node in
    that window took writes below quorum (503s) in a test run."""
    from app.stack.cluster import Ports

    return all(minio_node_ok(port) for port in Ports.from_settings(settings).minio)


# --- Redis ----------------------------------------------------------------------------------

def redis_primary(settings: Settings) -> str:
    """The program name (``redis-1``/``redis-2``) the Sentinels call primary now."""
    from app.redisconn import primary_address
    from app.stack.cluster import Ports

    address = primary_address(settings)
    if address is None:
        raise RuntimeError("no Sentinels configured: not the cluster topology")
    ports = Ports.from_settings(settings)
    return f"redis-{ports.redis.index(int(address[1])) + 1}"


def wait_until(check, timeout_s: float, what: str, every_s: float = 0.5) -> float:  # noqa: ANN001
    """Poll ``check`` until true; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - "not yet"
            pass
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
