"""The local stack on real servers: Kafka, MinIO, Redis, Nginx in front of the workers."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from app.redisconn import redis_client
from app.stack.layout import Layout
from app.stack.manage import ctl
from app.stack.secrets import read_env_file
from app.storage import make_minio
from tests.kafkatools import end_offsets, produce, read_from

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def imagerec(*args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv" / "bin" / "imagerec"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_kafka_round_trip_on_real_topic(settings, gateway) -> None:
    topic = settings.topic_dlq  # a real topic no agent consumes, so the test owns its records
    start = end_offsets(settings.kafka_bootstrap, topic)
    assert len(start) == settings.topic_partitions
    marker = f"stack-test-{uuid.uuid4()}".encode()
    produce(settings.kafka_bootstrap, topic, [(marker, marker)])
    records = read_from(settings.kafka_bootstrap, topic, start,
                        lambda recs: any(r.value == marker for r in recs), timeout_s=20)
    assert any(r.value == marker and r.key == marker for r in records)


def test_every_topic_has_the_same_partition_count(settings, gateway) -> None:
    counts = {t: len(end_offsets(settings.kafka_bootstrap, t)) for t in settings.topics}
    assert set(counts.values()) == {settings.topic_partitions}, counts


def test_minio_put_get_delete(settings, gateway) -> None:
    client = make_minio(settings)
    for bucket in settings.buckets:
        assert client.bucket_exists(bucket), bucket
    from app.storage import ObjectMissing, ObjectStore

    store = ObjectStore(client)
    key = f"stack-test/{uuid.uuid4()}"
    store.put_bytes(settings.bucket_models, key, b"hello")
    assert store.get_bytes(settings.bucket_models, key) == b"hello"
    store.delete(settings.bucket_models, key)
    with pytest.raises(ObjectMissing):
        store.get_bytes(settings.bucket_models, key)


def test_redis_set_with_ttl(settings, gateway) -> None:
    r = redis_client(settings, asyncio=False)
    key = f"imagerec:stack-test:{uuid.uuid4()}"
    r.set(key, b"v", ex=30)
    assert r.get(key) == b"v"
    assert 0 < r.ttl(key) <= 30
    r.delete(key)
    # A cache: bounded memory, and only keys with a TTL may be evicted (app.settings).
    assert int(r.config_get("maxmemory")["maxmemory"]) == settings.redis_maxmemory_mb * 2**20
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"


def test_request_through_nginx_reaches_a_worker(gateway) -> None:
    workers = set()
    for _ in range(10):
        reply = gateway.get("/healthz", key=False)
        assert reply.status == 200
        assert reply.headers["Server"].startswith("nginx")
        assert reply.headers.get("X-Request-ID")
        workers.add(reply.json()["worker"])
    assert workers <= {1, 2, 3, 4} and workers


def test_readyz_lists_every_dependency_up(gateway) -> None:
    reply = gateway.get("/readyz", key=False)
    assert reply.status == 200
    body = reply.json()
    assert body["ready"] is True and body["down"] == []
    for dep in ("kafka", "minio", "redis"):
        assert body["dependencies"][dep]["ok"] is True, body


def _wait_readyz(gateway, want_status: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        reply = gateway.get("/readyz", key=False)
        body = reply.json() if reply.body.startswith(b"{") else {}
        if reply.status == want_status:
            return {**body, "_headers": dict(reply.headers)}
        time.sleep(0.5)
    raise AssertionError(f"/readyz never answered {want_status}: {body}")


@pytest.mark.parametrize("service", ["redis", "minio", "kafka"])
def test_readyz_names_a_stopped_dependency_and_recovers(gateway, service: str) -> None:
    before = {p: s for p, s in _worker_pids().items()}
    ctl("stop", service)
    try:
        body = _wait_readyz(gateway, 503, 60)
        assert service in body["down"], body
        assert body["_headers"].get("Retry-After")
    finally:
        ctl("start", service)
    body = _wait_readyz(gateway, 200, 120)
    assert body["down"] == []
    assert _worker_pids() == before, "workers were restarted"


def _worker_pids() -> dict[str, int]:
    from app.settings import get_settings
    from app.stack.manage import rpc

    layout = Layout.from_settings(get_settings())
    return {p["name"]: p["pid"] for p in rpc(layout).supervisor.getAllProcessInfo()
            if p["name"].startswith("worker-")}


def test_second_up_is_a_noop(gateway) -> None:
    pids = _worker_pids()
    done = imagerec("stack", "up")
    assert done.returncode == 0, done.stderr
    assert "already up" in done.stdout and "nothing to do" in done.stdout
    assert _worker_pids() == pids


def test_port_in_use_fails_naming_port_and_service(settings, tmp_path) -> None:
    """A second stack (another IMAGEREC_HOME) on the same ports must refuse to start."""
    real = Layout.from_settings(settings)
    home = tmp_path / "home"
    (home / "kafka").mkdir(parents=True)
    (home / "bin").symlink_to(real.bin)
    (home / "kafka" / "libs").symlink_to(real.kafka_libs)
    (home / "kafka" / "agent").symlink_to(real.kafka_agent_dir)
    with socket.socket() as sock:  # hold one port of the stack's set ourselves
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = imagerec("stack", "up", env={"IMAGEREC_HOME": str(home),
                                            "IMAGEREC_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert done.returncode != 0
    assert f"port {port} (needed by redis)" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def _exports(stdout: str) -> dict[str, str]:
    return {k: v.strip("'") for k, v in (line.removeprefix("export ").split("=", 1)
                                         for line in stdout.splitlines())}


def test_stack_env_prints_what_a_client_needs_and_no_storage_secret(settings) -> None:
    done = imagerec("stack", "env")
    assert done.returncode == 0
    lines = _exports(done.stdout)
    assert lines["IMAGEREC_GATEWAY_URL"] == settings.gateway_url
    assert lines.get("IMAGEREC_API_KEY")
    assert not any(name.startswith("IMAGEREC_S3_") for name in lines)
    # No generated secret's value appears anywhere in the output, under any name.
    stored = read_env_file(Layout.from_settings(settings).secrets)
    for name, value in stored.items():
        if len(value) >= 12:
            assert value not in done.stdout, f"stack env leaks {name}"


def test_stack_env_admin_prints_the_admin_user_never_root(settings) -> None:
    from app.stack import iam

    done = imagerec("stack", "env", "--admin")
    assert done.returncode == 0
    lines = _exports(done.stdout)
    stored = read_env_file(Layout.from_settings(settings).secrets)
    access, secret = iam.component_credentials("admin", stored)
    assert (lines["IMAGEREC_S3_ACCESS_KEY"], lines["IMAGEREC_S3_SECRET_KEY"]) == (access, secret)
    assert settings.s3_secret_key not in done.stdout and settings.s3_access_key not in done.stdout


def test_secrets_file_is_private(settings) -> None:
    path = Layout.from_settings(settings).secrets
    assert path.stat().st_mode & 0o077 == 0
    out = subprocess.run(["git", "check-ignore", str(path)], cwd=REPO, capture_output=True)
    assert out.returncode == 0, "secrets file must be git-ignored"
