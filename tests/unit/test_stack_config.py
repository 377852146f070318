"""Rendering of the stack's configs and the secrets file, without starting anything."""

from __future__ import annotations

import socket
import uuid

import pytest

from app.settings import Settings
from app.stack import services as svc
from app.stack.layout import Layout
from app.stack.manage import StackError, check_ports
from app.stack.secrets import ensure_secrets, read_env_file


def _programs(tmp_path, settings: Settings) -> list[svc.Service]:
    """The stack's programs as `imagerec stack up` would define them, in a scratch home."""
    layout = Layout(home=tmp_path)
    layout.ensure()
    ensure_secrets(layout.secrets)
    return svc.services(layout, settings, tmp_path / "k.properties", tmp_path / "log4j",
                        tmp_path / "nginx.conf")


def test_secrets_are_generated_once_and_private(tmp_path) -> None:
    path = tmp_path / "secrets.env"
    first = ensure_secrets(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert first["IMAGEREC_S3_SECRET_KEY"] and len(first["IMAGEREC_S3_SECRET_KEY"]) >= 30
    assert ensure_secrets(path) == first == {k: v for k, v in read_env_file(path).items()
                                             if k in first}


def test_kafka_config_is_single_node_kraft_without_auto_create(tmp_path) -> None:
    layout = Layout(home=tmp_path)
    layout.ensure()
    props, _ = svc.render_kafka(layout, Settings(home=tmp_path))
    text = props.read_text()
    assert "process.roles=broker,controller" in text
    assert "auto.create.topics.enable=false" in text
    assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in text


def test_nginx_config_lists_every_worker(tmp_path) -> None:
    layout = Layout(home=tmp_path)
    layout.ensure()
    settings = Settings(home=tmp_path, workers=3)
    conf = svc.render_nginx(layout, settings, layout.repo / "deploy" / "nginx.conf.tmpl")
    text = conf.read_text()
    for port in (6066, 6067, 6068):
        assert f"server 127.0.0.1:{port}" in text
    unfilled = [line for line in text.splitlines()
                if "{{" in line and not line.lstrip().startswith("#")]
    assert not unfilled


def test_port_conflict_names_port_and_service() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        progs = [svc.Service(name="redis", command="x", ports=(port,))]
        with pytest.raises(StackError, match=rf"port {port} \(needed by redis\)"):
            check_ports(progs)
    check_ports(progs)  # free again: no error


def test_cluster_id_is_kafka_shaped() -> None:
    cid = svc.kafka_cluster_id()
    assert len(cid) == 22 and "=" not in cid


def test_kafka_cluster_id_never_looks_like_an_option(monkeypatch) -> None:
    """A CI run failed when the drawn id began with "-": kafka-storage read it as a flag."""
    dash_first = uuid.UUID(bytes=bytes([0xFB]) + bytes(15))  # base64 "-w..."
    draws = iter([dash_first, uuid.UUID(int=1)])
    monkeypatch.setattr(svc.uuid, "uuid4", lambda: next(draws))
    cid = svc.kafka_cluster_id()
    assert not cid.startswith("-") and len(cid) == 22


def test_workers_split_the_cores_for_inference(tmp_path, monkeypatch) -> None:
    """Two workers with a pool of one thread per core each oversubscribe the CPU (spinning
    XNNPACK threads); the stack gives each worker cores // workers inference threads."""
    monkeypatch.delenv("IMAGEREC_INFERENCE_THREADS", raising=False)
    monkeypatch.setattr(svc.os, "cpu_count", lambda: 4)
    progs = _programs(tmp_path, Settings(home=tmp_path, workers=2))
    workers = [p for p in progs if p.name.startswith("worker-")]
    assert len(workers) == 2
    assert all(p.env["IMAGEREC_INFERENCE_THREADS"] == "2" for p in workers)


def test_minio_scanner_pace_comes_from_settings(tmp_path) -> None:
    """The scanner's pace is a setting (slowest by default: it competes with the busy path
    for CPU); a misspelt pace is refused when the settings are read, not by MinIO later."""
    def minio_env(settings: Settings) -> dict[str, str]:
        return next(p for p in _programs(tmp_path, settings) if p.name == "minio").env

    assert minio_env(Settings(home=tmp_path))["MINIO_SCANNER_SPEED"] == "slowest"
    assert minio_env(Settings(home=tmp_path, minio_scanner_speed="fast"))[
        "MINIO_SCANNER_SPEED"] == "fast"
    with pytest.raises(ValueError, match="minio_scanner_speed"):
        Settings(home=tmp_path, minio_scanner_speed="slowly")


def test_redis_is_a_bounded_cache(tmp_path) -> None:
    """Bounded memory, evicting only keys with a TTL; snapshots at most every 5 minutes."""
    progs = _programs(tmp_path, Settings(home=tmp_path, redis_maxmemory_mb=64))
    argv = next(p for p in progs if p.name == "redis").command.split()
    assert argv[argv.index("--maxmemory") + 1] == "64mb"
    assert argv[argv.index("--maxmemory-policy") + 1] == "volatile-lru"
    assert argv[argv.index("--save") + 1:argv.index("--save") + 3] == ["300", "100"]


def test_every_log_is_rotated_the_access_log_included(tmp_path) -> None:
    """nginx would never rotate a file it opened itself; its access log goes to stdout, which
    supervisord writes to gateway-access.log and rotates like every other program's log."""
    settings = Settings(home=tmp_path)
    layout = Layout(home=tmp_path)
    progs = _programs(tmp_path, settings)
    nginx = svc.render_nginx(layout, settings, layout.repo / "deploy" / "nginx.conf.tmpl")
    access = [line.strip() for line in nginx.read_text().splitlines()
              if line.strip().startswith("access_log")]
    assert access and all(line.split()[1] in ("/dev/stdout", "off;") for line in access)

    sections = svc.render_supervisor(layout, progs).read_text().split("[program:")[1:]
    conf = {s.split("]", 1)[0]: dict(line.split("=", 1) for line in s.splitlines()[1:]
                                     if "=" in line) for s in sections}
    assert conf["nginx"]["stdout_logfile"] == str(layout.logs / "gateway-access.log")
    assert conf["nginx"]["stderr_logfile"] == str(layout.logs / "nginx.log")
    for name, program in conf.items():
        logs = [k for k in program if k.endswith("_logfile")]
        assert logs, name
        for key in logs:
            assert program[f"{key}_maxbytes"] == "20MB", (name, key)


@pytest.mark.parametrize(("error", "kms_hint"), [
    ("S3 operation failed; code: kms:InvalidCiphertextException, message: failed to decrypt "
     "ciphertext, resource: /models", True),
    ("S3 operation failed; code: AccessDenied", False),
])
def test_a_failed_provisioning_says_what_to_do(tmp_path, monkeypatch, error: str,
                                                kms_hint: bool) -> None:
    """Seen for real: a stack whose secrets.env was replaced cannot read its own data. `up`
    must say why and what to do, not print a traceback or start workers that fail."""
    from app.stack import manage, provision

    def fails(settings: Settings) -> None:
        raise RuntimeError(error)

    monkeypatch.setattr(provision, "provision", fails)
    with pytest.raises(StackError) as raised:
        manage._provision(Layout(home=tmp_path), Settings(home=tmp_path))
    message = str(raised.value)
    assert error in message and "`make down` stops them" in message
    assert ("KMS key" in message and "make clean" in message) is kms_hint


def _cluster(tmp_path) -> tuple[Settings, Layout, list[svc.Service]]:
    from app.stack import cluster

    base = Settings(home=tmp_path, topology="cluster")
    settings = Settings(home=tmp_path, topology="cluster",
                        **{k.removeprefix("IMAGEREC_").lower(): v
                           for k, v in cluster.stack_env(base).items()
                           if k != "IMAGEREC_TOPOLOGY"})
    layout = Layout.from_settings(settings)
    layout.ensure()
    ensure_secrets(layout.secrets)
    progs = svc.services(layout, settings, tmp_path / "k.properties", tmp_path / "log4j",
                         tmp_path / "nginx.conf")
    return settings, layout, progs


def test_cluster_settings_name_lists() -> None:
    settings = Settings(kafka_bootstrap="10.0.0.1:9092, 10.0.0.2:9092,10.0.0.3",
                        redis_sentinels="s1:26379,s2:26380,s3", topology="cluster")
    assert settings.kafka_servers == ["10.0.0.1:9092", "10.0.0.2:9092", "10.0.0.3"]
    assert settings.sentinels == [("s1", 26379), ("s2", 26380), ("s3", 26379)]
    assert (settings.replication, settings.min_isr) == (3, 2)
    assert (Settings().replication, Settings().min_isr) == (1, 1)
    assert Settings(topology="cluster", topic_replication=5).replication == 5


def test_cluster_programs_are_replicated_and_use_distinct_ports_and_dirs(tmp_path) -> None:
    settings, layout, progs = _cluster(tmp_path)
    names = [p.name for p in progs]
    for expected in ("kafka-1", "kafka-2", "kafka-3", "minio-1", "minio-4", "s3-lb",
                     "redis-1", "redis-2", "sentinel-1", "sentinel-3", "worker-3", "nginx"):
        assert expected in names
    assert "kafka" not in names and "worker-4" not in names
    ports = [port for p in progs for port in p.ports]
    assert len(ports) == len(set(ports)), "two programs share a port"
    assert layout.data == tmp_path / "data-cluster"
    # every program starts through the hold gate, with its own hold file
    assert all(p.command.startswith("/bin/sh ") and "hold-gate.sh" in p.command for p in progs)
    assert len({p.env["IMAGEREC_HOLD_FILE"] for p in progs}) == len(progs)


def test_cluster_kafka_nodes_form_one_quorum_with_three_replicas(tmp_path) -> None:
    _, layout, _ = _cluster(tmp_path)
    texts = [(layout.run / "cluster" / f"kafka-{n}.properties").read_text() for n in (1, 2, 3)]
    conf = [dict(line.split("=", 1) for line in t.splitlines() if "=" in line
                 and not line.startswith("#")) for t in texts]
    assert [c["node.id"] for c in conf] == ["1", "2", "3"]
    assert len({c["controller.quorum.voters"] for c in conf}) == 1
    assert conf[0]["controller.quorum.voters"].count("@") == 3
    assert len({c["log.dirs"] for c in conf}) == 3
    for c in conf:
        assert c["default.replication.factor"] == c["offsets.topic.replication.factor"] == "3"
        assert c["min.insync.replicas"] == c["transaction.state.log.min.isr"] == "2"
        assert c["unclean.leader.election.enable"] == "false"


def test_cluster_minio_nodes_share_one_explicit_drive_list(tmp_path) -> None:
    _, _, progs = _cluster(tmp_path)
    minio = [p for p in progs if p.name.startswith("minio-")]
    lists = [[a for a in p.command.split() if a.startswith("http://")] for p in minio]
    assert len(minio) == 4 and all(lst == lists[0] for lst in lists)
    assert len(lists[0]) == len(set(lists[0])) == 8  # 4 nodes x 2 drives, no ellipsis
    assert not any("{" in a for a in lists[0])
    # each node knows which endpoint is its own (MinIO inside a container needs it)
    own = {p.env["_MINIO_SERVER_LOCAL"] for p in minio}
    assert len(own) == 4 and all(any(f"//{o}/" in a for a in lists[0]) for o in own)


def test_cluster_redis_has_a_replica_and_three_sentinels(tmp_path) -> None:
    settings, layout, _ = _cluster(tmp_path)
    conf = layout.run / "cluster"
    primary, replica = (conf / "redis-1.conf").read_text(), (conf / "redis-2.conf").read_text()
    assert "replicaof" not in primary
    assert "replicaof 127.0.0.1 6379" in replica
    for i in (1, 2, 3):
        text = (conf / f"sentinel-{i}.conf").read_text()
        assert f"sentinel monitor {settings.redis_sentinel_master} 127.0.0.1 6379 2" in text
    assert settings.sentinels == [("127.0.0.1", 6381), ("127.0.0.1", 6382),
                                  ("127.0.0.1", 6383)]


def test_cluster_gateway_rests_a_failing_worker_and_the_s3_balancer_never(tmp_path) -> None:
    settings, layout, _ = _cluster(tmp_path)
    gateway = svc.render_nginx(layout, settings,
                               layout.repo / "deploy" / "nginx.conf.tmpl").read_text()
    assert gateway.count("max_fails=1 fail_timeout=5s") == 2 * settings.workers
    s3 = (layout.run / "s3-lb" / "nginx.conf").read_text()
    assert s3.count("max_fails=0") == 4
    assert "proxy_set_header Host $http_host" in s3  # S3 signatures cover the Host header


def test_stack_env_prints_no_storage_secret_and_admin_never_root(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from app.stack.manage import env_lines

    for name in ("IMAGEREC_S3_ADMIN_ACCESS_KEY", "IMAGEREC_S3_ADMIN_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    layout = Layout(home=tmp_path)
    layout.ensure()
    values = ensure_secrets(layout.secrets)
    (tmp_path / "dev-api-key").write_text("irk_dev\n")
    settings = Settings(home=tmp_path, s3_access_key=values["IMAGEREC_S3_ACCESS_KEY"],
                        s3_secret_key=values["IMAGEREC_S3_SECRET_KEY"])
    plain = "\n".join(env_lines(settings))
    assert "IMAGEREC_GATEWAY_URL" in plain and "irk_dev" in plain
    assert "IMAGEREC_S3" not in plain
    for value in values.values():
        assert value not in plain
    admin = "\n".join(env_lines(settings, admin=True))
    assert values["IMAGEREC_S3_ADMIN_ACCESS_KEY"] in admin
    assert values["IMAGEREC_S3_ADMIN_SECRET_KEY"] in admin
    assert values["IMAGEREC_S3_SECRET_KEY"] not in admin
    assert values["IMAGEREC_S3_ACCESS_KEY"] not in admin
