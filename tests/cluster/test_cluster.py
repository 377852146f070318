"""The cluster topology, against its real servers (`make test-cluster` starts it).

Replication is read back from the brokers, storage is read with each MinIO node down in turn,
and a Redis failover happens under a running worker. Each fault is undone before the test
ends, so the tests can run in any order; ``bench/chaos.py`` does the same under load.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from app import names
from app.redisconn import redis_client
from app.stack import cluster, faults
from app.stack.layout import Layout
from app.storage import get_store
from tests.conftest import photo_variants

CHANGELOG = "imagerec-results-changelog"


@pytest.fixture(scope="module", autouse=True)
def _cluster(settings) -> None:  # noqa: ANN001
    if settings.topology != "cluster":
        pytest.fail("the cluster topology is not running: `make test-cluster` starts it")


@pytest.fixture()
def layout(settings) -> Layout:  # noqa: ANN001
    layout = Layout.from_settings(settings)
    yield layout
    faults.release_all(layout)  # never leave a server held down for the next test


def test_every_topic_has_three_replicas_and_min_isr_two(settings) -> None:
    topics = [*settings.topics, CHANGELOG, "__consumer_offsets"]
    for topic in topics:
        partitions = asyncio.run(faults.describe_topic(settings, topic))
        assert partitions, f"{topic} has no partitions"
        for part in partitions:
            assert len(part["replicas"]) == 3, (topic, part)
            assert len(set(part["replicas"])) == 3, (topic, part)
        config = asyncio.run(faults.topic_config(settings, topic))
        assert config["min.insync.replicas"] == "2", (topic, config["min.insync.replicas"])
    # the table's changelog has as many partitions as the topic whose events write it
    assert len(asyncio.run(faults.describe_topic(settings, CHANGELOG))) == \
        settings.topic_partitions


def test_objects_are_readable_and_writable_with_any_one_minio_node_down(settings,
                                                                        layout) -> None:
    store = get_store()
    bucket = settings.bucket_processed
    stamp = f"cluster-test/{time.time_ns()}"
    written = {f"{stamp}/before": b"written with every node up" * 100}
    for key, data in written.items():
        store.put_bytes(bucket, key, data)
    ports = cluster.Ports.from_settings(settings)
    try:
        for node, port in enumerate(ports.minio, start=1):
            name = f"minio-{node}"
            # one node down at a time: the previous one is back in every peer's view
            faults.wait_until(lambda: faults.minio_settled(settings), 120, "MinIO settled")
            faults.wait_gone(faults.kill(layout, name))
            assert not faults.minio_node_ok(port, "live")  # really down, not just slow
            for key, data in written.items():
                assert store.get_bytes(bucket, key) == data, (name, key)
            key = f"{stamp}/while-{name}-down"
            written[key] = f"written while {name} was down".encode() * 100
            store.put_bytes(bucket, key, written[key])
            faults.release(layout, name)
            faults.wait_until(lambda port=port: faults.minio_node_ok(port, "cluster"), 60,
                              f"{name} back")
        for key, data in written.items():  # and all of it with every node back
            assert store.get_bytes(bucket, key) == data, key
    finally:
        for key in written:
            store.delete(bucket, key)


def _role(port: int) -> str:
    import redis

    info = redis.Redis(port=port, socket_timeout=2).info("replication")
    return info["role"]


def test_sentinel_failover_is_seen_by_running_workers(settings, layout, gateway) -> None:
    before = faults.running(layout)
    worker_pids = {n: faults.pid_of(layout, n) for n in before if n.startswith("worker-")}
    old = faults.redis_primary(settings)
    faults.wait_gone(faults.kill(layout, old))
    took = faults.wait_until(lambda: faults.redis_primary(settings) != old, 60, "promotion")
    new = faults.redis_primary(settings)
    assert new != old
    # A fresh upload after the failover: its result reaches the new primary's cache, and
    # retrieval answers it from Redis, through workers that were not restarted.
    photo = photo_variants(1, seed=int(time.time()))[0]
    reply = gateway.upload(photo)
    assert reply.status == 202, reply.body
    image_id = reply.json()["id"]
    result = gateway.wait_done(image_id)
    assert result["status"] == "done"
    rds = redis_client(settings, asyncio=False, socket_timeout=3)
    try:
        faults.wait_until(lambda: rds.exists(names.redis_result(image_id)), 30, "cached result")
    except TimeoutError as exc:  # say why: the workers log every result they could not cache
        raise AssertionError(f"{exc}; worker log lines:\n"
                             + "\n".join(_worker_lines(layout, image_id, "not cached"))) from None
    served = gateway.get(f"/v1/images/{image_id}")
    assert served.headers.get("X-Imagerec-Source") == "redis", served.headers
    assert {n: faults.pid_of(layout, n) for n in worker_pids} == worker_pids
    print(f"failover from {old} to {new} in {took:.1f}s")
    # the old primary comes back as the new primary's replica
    faults.release(layout, old)
    port = cluster.Ports.from_settings(settings).redis[int(old.split("-")[1]) - 1]
    faults.wait_until(lambda: _role(port) == "slave", 60, f"{old} to rejoin as a replica")


def _worker_lines(layout: Layout, *needles: str) -> list[str]:
    """The last worker log lines that mention any of ``needles`` (for a failure message)."""
    found = [line.strip()[:400] for path in sorted(layout.logs.glob("worker-*.log"))
             for line in path.read_text(errors="replace").splitlines()
             if any(n in line for n in needles)]
    return found[-20:]


def test_gateway_passes_over_a_dead_worker(settings, layout, gateway) -> None:
    faults.wait_gone(faults.kill(layout, "worker-2"))
    try:
        statuses = [gateway.upload(p).status for p in photo_variants(24, seed=7 + time.time_ns()
                                                                         % 1000)]
    finally:
        faults.release(layout, "worker-2")
    # Refused connections are retried on another worker, uploads (POST) included: nothing
    # was sent to the dead one.
    assert set(statuses) <= {200, 202}, statuses
    faults.wait_until(lambda: gateway.get("/readyz", key=False).status == 200, 120,
                      "worker-2 back")
