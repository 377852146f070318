"""Start, stop and inspect the local stack through supervisord.

Infrastructure (Kafka, MinIO, Redis) starts first; once it answers, topics and buckets are
provisioned; only then do the workers, functions and the gateway start, so a worker never
races topic creation. ``up`` returns when ``/readyz`` through the gateway answers 200.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from app.settings import Settings, get_settings
from app.stack import services as svc
from app.stack.layout import Layout
from app.stack.secrets import ensure_secrets

INFRA_PRIORITY = 10  # services at or below it are servers, started before provisioning


class StackError(RuntimeError):
    """A problem the user must act on; the message says what and how."""


def _reload_settings(layout: Layout) -> Settings:
    ensure_secrets(layout.secrets)
    get_settings.cache_clear()
    return get_settings()


def _apply_topology(layout: Layout) -> Settings:
    """Write ``stack.env`` for the topology asked for (``IMAGEREC_TOPOLOGY``, default
    single), so every program, the CLI and the tests agree on where the servers are."""
    layout.stack_env.unlink(missing_ok=True)  # a stopped stack's topology does not carry over
    settings = _reload_settings(layout)
    if settings.topology == "cluster":
        from app.stack import cluster

        values = cluster.stack_env(settings)
        layout.stack_env.write_text("# written by `imagerec stack up`; removed by `down`\n"
                                    + "".join(f"{k}={v}\n" for k, v in values.items()))
        settings = _reload_settings(layout)
    return settings


def rpc(layout: Layout) -> xmlrpc.client.ServerProxy:
    transport = SupervisorTransport(None, None, f"unix://{layout.supervisor_sock}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def supervisor_running(layout: Layout) -> bool:
    if not layout.supervisor_sock.exists():
        return False
    try:
        rpc(layout).supervisor.getState()
        return True
    except (OSError, xmlrpc.client.Fault):
        return False


def start_process(layout: Layout, name: str, wait: bool = False) -> None:
    """Start one program; already running is fine."""
    try:
        rpc(layout).supervisor.startProcess(name, wait)
    except xmlrpc.client.Fault as fault:
        if "ALREADY_STARTED" not in fault.faultString:
            raise


def process_rss_mb(layout: Layout) -> dict[str, float]:
    """Resident memory of each running program (its own process; none of ours fork)."""
    out: dict[str, float] = {}
    from app.health import rss_mb

    for info in rpc(layout).supervisor.getAllProcessInfo():
        if not info["pid"]:
            continue
        rss = rss_mb(info["pid"])
        if rss is not None:
            out[info["name"]] = rss
    return out


def process_states(layout: Layout) -> dict[str, str]:
    return {p["name"]: p["statename"] for p in rpc(layout).supervisor.getAllProcessInfo()}


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def check_ports(progs: list[svc.Service]) -> None:
    busy = [(p, s.name) for s in progs for p in s.ports if port_in_use(p)]
    if busy:
        desc = ", ".join(f"port {p} (needed by {name})" for p, name in busy)
        raise StackError(
            f"cannot start: {desc} already in use by another program. Stop that program, "
            "or move imagerec with the IMAGEREC_* port settings (see README, Configuration)."
        )


def check_installed(layout: Layout) -> None:
    missing = []
    if not (layout.bin / "minio").exists():
        missing.append("minio")
    if not layout.kafka_libs.exists() or not any(layout.kafka_libs.glob("kafka_2.13-*.jar")):
        missing.append("kafka jars")
    if get_settings().prometheus_enabled:
        from app.stack import monitoring

        if not Path(monitoring.prometheus_bin()).exists():
            missing.append("prometheus")
        if not monitoring.kafka_agent_jar(layout).exists():
            missing.append("the Kafka metrics agent")
    if missing:
        raise StackError(f"not installed: {', '.join(missing)}; run `make install` first"
                         + (" (or set IMAGEREC_PROMETHEUS_ENABLED=false to run without "
                            "monitoring)" if get_settings().prometheus_enabled else ""))


def format_kafka(layout: Layout, settings: Settings) -> None:
    """KRaft needs each node's log dir formatted once, every node with the same cluster id."""
    if settings.topology == "cluster":
        from app.stack import cluster

        nodes = [(cluster.kafka_dir(layout, n), layout.run / "cluster" / f"kafka-{n}.properties")
                 for n in range(1, cluster.KAFKA_NODES + 1)]
    else:
        nodes = [(layout.data / "kafka", layout.run / "kafka" / "server.properties")]
    unformatted = [(d, p) for d, p in nodes if not (d / "meta.properties").exists()]
    if not unformatted:
        return
    if len(unformatted) != len(nodes):
        raise StackError(f"some Kafka nodes are formatted and some are not "
                         f"({', '.join(str(d) for d, _ in unformatted)}); `make clean` "
                         f"starts over")
    cluster_id = svc.kafka_cluster_id()
    for data_dir, props in unformatted:
        data_dir.mkdir(parents=True, exist_ok=True)
        cmd = f"{svc.java_cmd(layout)} kafka.tools.StorageTool format -t {cluster_id} -c {props}"
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"formatting Kafka storage failed: {done.stderr.strip()[-500:]}")


def wait_for(check, what: str, timeout_s: float, layout: Layout | None = None,
             service: str | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        if layout is not None and service is not None:
            state = process_states(layout).get(service)
            if state in ("FATAL", "BACKOFF", "EXITED"):
                log = layout.logs / f"{service}.log"
                tail = log.read_text()[-1500:] if log.exists() else ""
                raise StackError(f"{service} failed to start ({state}); last log lines:\n{tail}")
        time.sleep(0.5)
    raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what}"
                     + (f": {last}" if last else ""))


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False


def _kafka_ready(settings: Settings) -> bool:
    """Every node registered: topics with three replicas cannot be created on fewer."""
    import asyncio
    import logging

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # "not yet" is expected here

    from app.health import check_kafka

    found = asyncio.run(check_kafka(settings, require_topics=False))
    return found["ok"] and found.get("brokers", 0) >= settings.replication


def _redis_ready(settings: Settings) -> bool:
    from app.redisconn import redis_client

    return bool(redis_client(settings, asyncio=False, socket_timeout=1).ping())


def build(layout: Layout, settings: Settings) -> list[svc.Service]:
    layout.ensure()
    if settings.topology == "single":
        (layout.data / "redis").mkdir(parents=True, exist_ok=True)
        (layout.data / "minio").mkdir(parents=True, exist_ok=True)
    props, log4j = svc.render_kafka(layout, settings)
    nginx_conf = svc.render_nginx(layout, settings, layout.repo / "deploy" / "nginx.conf.tmpl")
    progs = svc.services(layout, settings, props, log4j, nginx_conf)
    svc.render_supervisor(layout, progs)
    return progs


def up(*, wait_timeout_s: float = 240.0, quiet: bool = False) -> bool:
    """Start everything; returns False when it was already running (a no-op)."""
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, flush=True))
    layout = Layout.from_settings(get_settings())
    if supervisor_running(layout):
        from app.stack.secrets import read_env_file

        running = read_env_file(layout.stack_env).get("IMAGEREC_TOPOLOGY", "single")
        if running != get_settings().topology:
            raise StackError(f"a {running} stack is running; stop it with `make down` before "
                             f"starting the {get_settings().topology} topology")
        states = process_states(layout)
        not_running = [n for n, s in states.items() if s != "RUNNING"]
        if not not_running:
            _ensure_dev_key(say)
            say(f"imagerec is already up: nothing to do ({len(states)} services running). "
                f"Gateway: {get_settings().gateway_url}")
            return False
        say(f"imagerec is partly up; starting {', '.join(not_running)}")
        for name in not_running:
            start_process(layout, name)
        _wait_ready(layout, get_settings(), wait_timeout_s)
        _ensure_dev_key(say)
        return True
    check_installed(layout)
    settings = _apply_topology(layout)
    layout = Layout.from_settings(settings)
    progs = build(layout, settings)
    check_ports(progs)
    format_kafka(layout, settings)
    started = time.monotonic()
    infra = [p.name for p in progs if p.priority <= INFRA_PRIORITY]
    say(f"starting {', '.join(infra)} ({settings.topology} topology) ...")
    env = {**os.environ, "IMAGEREC_HOME": str(layout.home)}
    subprocess.run([str(Path(sys.executable).parent / "supervisord"), "-c",
                    str(layout.supervisor_conf)], check=True, env=env)
    wait_for(lambda: supervisor_running(layout), "supervisord", 15)
    for name in infra:
        start_process(layout, name)
    first = {prefix: next(n for n in infra if n.startswith(prefix))
             for prefix in ("redis", "minio", "kafka")}
    wait_for(lambda: _redis_ready(settings), "redis", 30, layout, first["redis"])
    # A cluster is ready for writes once enough drives for write quorum answer.
    health = "cluster" if settings.topology == "cluster" else "ready"
    wait_for(lambda: _http_ok(f"http://{settings.s3_endpoint}/minio/health/{health}"),
             "minio", 90, layout, first["minio"])
    wait_for(lambda: _kafka_ready(settings), "kafka", 120, layout, first["kafka"])
    created = _provision(layout, settings)
    if created["topics"] or created["buckets"]:
        say(f"created topics {created['topics']} and buckets {created['buckets']}")
    say("starting workers, functions and the gateway ...")
    for prog in progs:
        if prog.name not in infra:
            start_process(layout, prog.name)
    _wait_ready(layout, settings, wait_timeout_s)
    _wait_prometheus(layout, settings)
    _ensure_dev_key(say)
    prometheus = (f", Prometheus: http://127.0.0.1:{settings.prometheus_port}"
                  if settings.prometheus_enabled else "")
    say(f"imagerec is up in {time.monotonic() - started:.1f}s: {settings.gateway_url}  "
        f"(logs: {layout.logs}{prometheus}, stop: make down)")
    return True


def _provision(layout: Layout, settings: Settings) -> dict[str, list[str]]:
    """Topics, buckets, encryption and MinIO users; a failure names its likely cause."""
    from app.stack.provision import provision

    try:
        return provision(settings)
    except Exception as exc:
        hint = ""
        if "kms:" in str(exc).lower():
            # Every object and bucket setting is sealed with the KMS key in secrets.env.
            hint = (f"\nMinIO cannot decrypt {layout.data / 'minio'} with the KMS key it was "
                    f"given: the data was written under another key (secrets.env replaced, "
                    f"or IMAGEREC_MINIO_KMS_SECRET_KEY set in the environment). Restore that "
                    f"key, or start over with `make clean` (deletes all stored data).")
        raise StackError(f"setting up topics, buckets and MinIO users failed: {exc}{hint}\n"
                         f"The servers started so far are still running; `make down` stops "
                         f"them.") from exc


def _ensure_dev_key(say: Callable[[str], None]) -> None:
    """A development API key in .stack/dev-api-key (`imagerec stack env` exports it)."""
    from app.apikeys import ensure_dev_key

    path, created = ensure_dev_key(get_settings())
    if created:
        say(f"created the development API key ({path}; `imagerec stack env` exports it)")


def _wait_ready(layout: Layout, settings: Settings, timeout_s: float) -> None:
    names = [n for n in process_states(layout) if n.startswith("worker-")]
    wait_for(lambda: _http_ok(f"{settings.gateway_url}/readyz"), "the gateway's /readyz",
             timeout_s, layout, names[0] if names else None)


def _wait_prometheus(layout: Layout, settings: Settings) -> None:
    """Prometheus answers within a second or two; waiting means a test's first query works."""
    if settings.prometheus_enabled:
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{settings.prometheus_port}/-/ready"),
                 "prometheus", 60, layout, "prometheus")


def down(*, quiet: bool = False) -> bool:
    """Stop everything supervisord runs and supervisord itself; returns False if not up."""
    layout = Layout.from_settings(get_settings())
    if not supervisor_running(layout):
        if not quiet:
            print("imagerec is not running: nothing to stop")
        return False
    pid = int(layout.supervisor_pid.read_text().strip()) if layout.supervisor_pid.exists() else 0
    infos = rpc(layout).supervisor.getAllProcessInfo()
    children = [p["pid"] for p in infos if p["pid"]]
    # Front to back: the gateway, then functions and workers (together, so every worker
    # leaves the Kafka group cleanly and the next start waits for no session timeout), then
    # the servers.
    names = [p["name"] for p in infos]
    front = [["nginx"], [n for n in names if n.startswith("fn-")],
             [n for n in names if n.startswith("worker-")]]
    servers = [n for n in names if not any(n in group for group in front)]
    for group in [*front, servers]:
        _stop_group(layout, [n for n in group if n in names])
    try:
        rpc(layout).supervisor.shutdown()
    except (OSError, xmlrpc.client.Fault):
        pass
    leftovers = _wait_gone([pid, *children], 60)
    layout.stack_env.unlink(missing_ok=True)
    for stray in leftovers:  # should not happen; never leave a server behind silently
        os.kill(stray, signal.SIGKILL)
    if not quiet:
        extra = f" (killed {len(leftovers)} process(es) that ignored SIGTERM)" if leftovers else ""
        print(f"imagerec stopped{extra}")
    return True


def _stop_group(layout: Layout, group: list[str], timeout_s: float = 60.0) -> None:
    for name in group:
        try:
            rpc(layout).supervisor.stopProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = process_states(layout)
        if all(states.get(n) not in ("RUNNING", "STOPPING", "STARTING") for n in group):
            return
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if p and _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _alive(p)]
    return alive


def ctl(action: str, name: str) -> None:
    """Stop or start one service (tests use this to take a dependency down)."""
    layout = Layout.from_settings(get_settings())
    proxy = rpc(layout).supervisor
    if action == "stop":
        proxy.stopProcess(name, True)
    elif action == "start":
        proxy.startProcess(name, True)
    elif action == "restart":
        proxy.stopProcess(name, True)
        proxy.startProcess(name, True)
    else:
        raise StackError(f"unknown action {action!r}")


def env_lines(settings: Settings, admin: bool = False) -> list[str]:
    """Shell ``export`` lines a client needs to talk to this stack: the gateway and a key.

    Storage credentials only with ``admin``, and then the admin MinIO user's (app.stack.iam),
    never the root key."""
    layout = Layout.from_settings(settings)
    values = {"IMAGEREC_GATEWAY_URL": settings.gateway_url}
    if admin:
        from app.stack import iam
        from app.stack.secrets import read_env_file

        access, secret = iam.component_credentials("admin", read_env_file(layout.secrets))
        values.update({
            "IMAGEREC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "IMAGEREC_S3_ENDPOINT": settings.s3_endpoint,
            "IMAGEREC_S3_ACCESS_KEY": access,
            "IMAGEREC_S3_SECRET_KEY": secret,
            "IMAGEREC_REDIS_URL": settings.redis_url,
        })
        if settings.sentinels:
            values["IMAGEREC_REDIS_SENTINELS"] = settings.redis_sentinels
            values["IMAGEREC_REDIS_SENTINEL_MASTER"] = settings.redis_sentinel_master
    dev_key = layout.home / "dev-api-key"
    if dev_key.exists():
        values["IMAGEREC_API_KEY"] = dev_key.read_text().strip()
    import shlex

    return [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
