"""Prometheus in the stack: the rendered config for both topologies, checked by promtool, and
the rules' own tests (``promtool test rules``, tests/unit/prometheus/*.test.yml).

promtool is Debian's ``prometheus`` package, which scripts/install.sh installs; a machine
without it fails here rather than skipping, so a missing install step cannot hide.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from app.settings import Settings
from app.stack import cluster, exporter, monitoring
from app.stack import services as svc
from app.stack.layout import Layout
from app.stack.secrets import ensure_secrets

REPO = Path(__file__).resolve().parents[2]
RULE_TESTS = sorted((REPO / "tests" / "unit" / "prometheus").glob("*.test.yml"))


def _promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool not found: run `make install` (Debian's prometheus package)")
    return found


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    """The documented default ports, whatever a developer's shell exports."""
    values: dict[str, object] = dict(
        home=tmp_path, web_port=6066, gateway_url="http://127.0.0.1:8080",
        s3_endpoint="127.0.0.1:9000", kafka_bootstrap="127.0.0.1:9092",
        redis_url="redis://127.0.0.1:6379/0", prometheus_port=9090, kafka_metrics_port=9404,
        exporter_port=9113,
        prometheus_enabled=True, prometheus_scrape_interval_s=15)
    values.update(overrides)
    return Settings(**values)


def _programs(tmp_path: Path, settings: Settings) -> tuple[Layout, list[svc.Service]]:
    layout = Layout(home=tmp_path, topology=settings.topology)
    layout.ensure()
    ensure_secrets(layout.secrets)
    return layout, svc.services(layout, settings, tmp_path / "k.properties",
                                tmp_path / "log4j", tmp_path / "nginx.conf")


def _rendered(layout: Layout) -> dict:
    return yaml.safe_load((layout.run / "prometheus" / "prometheus.yml").read_text())


def _targets(config: dict) -> dict[str, list[str]]:
    return {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in config["scrape_configs"]}


def _check_config(layout: Layout) -> None:
    """promtool reads the config and every rule file it names, as Prometheus would."""
    done = subprocess.run([_promtool(), "check", "config",
                           str(layout.run / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "rule files found" in done.stdout


def test_single_stack_scrapes_every_program(tmp_path) -> None:
    settings = _settings(tmp_path, web_port=16066, gateway_url="http://127.0.0.1:18080",
                         s3_endpoint="127.0.0.1:19000", kafka_bootstrap="127.0.0.1:19092",
                         redis_url="redis://127.0.0.1:16379/0", prometheus_port=19090,
                         kafka_metrics_port=19404, exporter_port=19113)
    layout, progs = _programs(tmp_path, settings)
    by_name = {p.name: p for p in progs}
    prom = by_name["prometheus"]
    assert prom.ports == (19090,)
    assert "--web.listen-address=127.0.0.1:19090" in prom.command
    assert f"--storage.tsdb.path={layout.data / 'prometheus'}" in prom.command
    assert "--storage.tsdb.retention.time=3d" in prom.command
    assert "--storage.tsdb.retention.size=1GB" in prom.command
    # The broker serves its JMX figures on loopback, at a port the stack checks is free.
    kafka = by_name["kafka"]
    assert (f"-javaagent:{layout.kafka_agent_dir / 'jmx_prometheus_javaagent.jar'}"
            f"=127.0.0.1:19404:{REPO / 'deploy/prometheus/kafka-jmx.yml'}") in kafka.command
    assert 19404 in kafka.ports
    assert by_name["minio"].env["MINIO_PROMETHEUS_AUTH_TYPE"] == "public"

    config = _rendered(layout)
    assert _targets(config) == {
        "worker": ["127.0.0.1:16066", "127.0.0.1:16067"],
        "function": ["127.0.0.1:18081", "127.0.0.1:18082"],
        "minio": ["127.0.0.1:19000"],
        "minio-cluster": ["127.0.0.1:19000"],
        "kafka": ["127.0.0.1:19404"],
        "nginx": ["127.0.0.1:19113"],
        "redis": ["127.0.0.1:19113"],
        "prometheus": ["127.0.0.1:19090"],
    }
    assert by_name["exporter"].ports == (19113,)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["minio"]["metrics_path"] == "/minio/v2/metrics/node"
    assert jobs["minio-cluster"]["metrics_path"] == "/minio/v2/metrics/cluster"
    assert jobs["nginx"]["metrics_path"] == "/metrics/nginx"
    assert jobs["redis"]["metrics_path"] == "/metrics/redis"
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == [str(REPO / "deploy/prometheus/rules/*.yml")]
    _check_config(layout)


def test_cluster_stack_scrapes_all_nodes(tmp_path) -> None:
    settings = _settings(tmp_path, topology="cluster", workers=cluster.WORKERS,
                         prometheus_scrape_interval_s=5)
    layout, progs = _programs(tmp_path, settings)
    config = _rendered(layout)
    targets = _targets(config)
    assert targets["worker"] == ["127.0.0.1:6066", "127.0.0.1:6067", "127.0.0.1:6068"]
    assert targets["function"] == ["127.0.0.1:8081", "127.0.0.1:8082"]
    assert targets["kafka"] == ["127.0.0.1:9404", "127.0.0.1:9405", "127.0.0.1:9406"]
    # every MinIO node on its own port, the cluster-wide figures once through the balancer
    assert targets["minio"] == [f"127.0.0.1:{p}" for p in (9010, 9012, 9014, 9016)]
    assert targets["minio-cluster"] == ["127.0.0.1:9000"]
    labels = [sc["labels"] for job in config["scrape_configs"] if job["job_name"] == "kafka"
              for sc in job["static_configs"]]
    assert labels == [{"node": "1"}, {"node": "2"}, {"node": "3"}]
    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["scrape_timeout"] == "5s"
    by_name = {p.name: p for p in progs}
    for node, port in enumerate((9404, 9405, 9406), start=1):
        assert f"=127.0.0.1:{port}:" in by_name[f"kafka-{node}"].command
        assert port in by_name[f"kafka-{node}"].ports
    assert "prometheus" in by_name
    # No two programs want one port.
    ports = [port for prog in progs for port in prog.ports]
    assert len(ports) == len(set(ports))
    _check_config(layout)


def test_monitoring_off_runs_neither_prometheus_nor_the_agent(tmp_path) -> None:
    _, progs = _programs(tmp_path, _settings(tmp_path, prometheus_enabled=False))
    by_name = {p.name: p for p in progs}
    assert "prometheus" not in by_name and "exporter" not in by_name
    assert "-javaagent" not in by_name["kafka"].command
    assert by_name["kafka"].ports == (9092, 9093)


def test_scrape_intervals_are_prometheus_durations() -> None:
    assert monitoring._duration(15) == "15s"  # noqa: SLF001
    assert monitoring._duration(2.5) == "2500ms"  # noqa: SLF001
    with pytest.raises(ValueError):
        monitoring._duration(0)  # noqa: SLF001


def test_rule_files_are_valid() -> None:
    rules = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
    assert rules
    done = subprocess.run([_promtool(), "check", "rules", *map(str, rules)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=[p.name for p in RULE_TESTS])
def test_rules_pass_promtool_unit_tests(test_file: Path) -> None:
    """The alerts fire on lag growth, DLQ growth and a burnt latency SLO, and stay quiet on
    healthy series (the cases are in the file)."""
    done = subprocess.run([_promtool(), "test", "rules", str(test_file)],
                          capture_output=True, text=True, timeout=120, cwd=test_file.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_tests_exist_for_the_issue_alerts() -> None:
    """Every alert the issue asks for has at least one promtool case."""
    text = "".join(p.read_text() for p in RULE_TESTS)
    for alert in ("ImagerecConsumerLagGrowing", "ImagerecDLQGrowing",
                  "ImagerecLatencySLOBurnFast"):
        assert f"alertname: {alert}" in text


def test_compose_prometheus_matches_the_stack(tmp_path) -> None:
    """docker-compose.yml's Prometheus scrapes the same jobs, at the same paths, as the local
    stack's (Kafka aside: the apache/kafka image has no agent), and promtool accepts it."""
    compose_conf = REPO / "deploy" / "prometheus" / "compose.yml"
    ours = yaml.safe_load(compose_conf.read_text())
    layout, _ = _programs(tmp_path, _settings(tmp_path))
    stack = _rendered(layout)

    def jobs(config: dict) -> dict[str, str]:
        return {job["job_name"]: job.get("metrics_path", "/metrics")
                for job in config["scrape_configs"]}

    expected = jobs(stack)
    for job in ("kafka", "nginx", "redis"):  # no agent, no exporter in the compose images
        del expected[job]
    assert jobs(ours) == expected
    assert ours["global"]["scrape_interval"] == stack["global"]["scrape_interval"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/compose.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in volumes
    assert compose["services"]["minio"]["environment"]["MINIO_PROMETHEUS_AUTH_TYPE"] == "public"
    done = subprocess.run([_promtool(), "check", "config", str(compose_conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# As nginx prints it, trailing spaces included.
STUB_STATUS = ("Active connections: 3 \nserver accepts handled requests\n 120 118 4521 \n"
               "Reading: 0 Writing: 1 Waiting: 2 \n")


def test_stub_status_is_read_as_nginx_exporter_names() -> None:
    assert exporter.parse_stub_status(STUB_STATUS) == {
        "active": 3, "accepted": 120, "handled": 118, "requests": 4521,
        "reading": 0, "writing": 1, "waiting": 2}
    with pytest.raises(ValueError):
        exporter.parse_stub_status("<html>404</html>")


def test_exporter_reports_down_servers_as_zero(tmp_path) -> None:
    """Nothing listens on the ports: the exporter still answers, with nginx_up and redis_up 0
    (what ImagerecDependencyDown reads), rather than failing the scrape."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    settings = _settings(tmp_path, gateway_url=f"http://127.0.0.1:{free}",
                         redis_url=f"redis://127.0.0.1:{free}/0")
    text = {path: generate_latest(reg).decode()
            for path, reg in exporter.registries(settings).items()}
    assert "nginx_up 0.0" in text["/metrics/nginx"]
    assert f'redis_up{{addr="127.0.0.1:{free}"}} 0.0' in text["/metrics/redis"]


def test_exporter_covers_both_redis_of_the_cluster(tmp_path) -> None:
    settings = _settings(tmp_path, topology="cluster")
    assert exporter.redis_addresses(settings) == [("127.0.0.1", 6379), ("127.0.0.1", 6380)]
