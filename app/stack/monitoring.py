"""Prometheus for the local stack: what it scrapes, its config file and its command line.

Prometheus is Debian's ``prometheus`` package (2.42; only ``/usr/bin/prometheus`` and
``promtool`` are used, never its system service). It runs under the stack's supervisor like
every other program, on loopback, with its config rendered into the run dir and its data in
the stack's data dir. The rules it evaluates are files in the repo
(``deploy/prometheus/rules``), unit-tested with ``promtool test rules``.

Scrape jobs (one per kind of program, so a query or alert names them the same way in both
topologies):

- ``worker``: every Faust worker's ``/metrics`` (our pipeline metrics and Faust's sensors);
- ``function``: both function hosts' ``/metrics`` (``functions/serve.py``);
- ``minio``: each MinIO node's ``/minio/v2/metrics/node``; ``minio-cluster``: the cluster-wide
  ``/minio/v2/metrics/cluster`` once, through the S3 endpoint. MinIO serves them without a
  token (``MINIO_PROMETHEUS_AUTH_TYPE=public``): it listens on loopback only, and the figures
  name buckets and sizes, never object keys or data;
- ``kafka``: each broker's JMX exporter agent (``deploy/prometheus/kafka-jmx.yml`` picks the
  few MBeans we use: a full JMX walk of a broker costs far more CPU);
- ``nginx`` and ``redis``: the gateway's stub_status and every Redis server's INFO, translated
  by our small exporter (``app.stack.exporter``; neither server speaks Prometheus);
- ``prometheus``: itself (rule evaluation failures, its own CPU).

This module only renders text; ``app.stack.manage`` starts things.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from app.settings import Settings
from app.stack.layout import Layout

PROMETHEUS_JOBS = ("worker", "function", "minio", "minio-cluster", "kafka", "nginx", "redis",
                   "prometheus")
RULES_DIR = "deploy/prometheus/rules"
KAFKA_JMX_CONFIG = "deploy/prometheus/kafka-jmx.yml"


def prometheus_bin() -> str:
    return shutil.which("prometheus") or "/usr/bin/prometheus"


def kafka_agent_jar(layout: Layout) -> Path:
    """The JMX exporter agent scripts/install.sh resolves from Maven Central (its version is
    pinned in deploy/kafka/pom.xml; the file name carries none)."""
    return layout.kafka_agent_dir / "jmx_prometheus_javaagent.jar"


def kafka_metrics_port(settings: Settings, node: int) -> int:
    """Broker ``node`` (1-based) serves its metrics here."""
    return settings.kafka_metrics_port + node - 1


def kafka_agent_opts(layout: Layout, settings: Settings, node: int) -> str:
    """The broker's ``-javaagent`` option, or nothing when monitoring is off."""
    if not settings.prometheus_enabled:
        return ""
    jar = kafka_agent_jar(layout)  # app.stack.manage.check_installed: it exists
    config = layout.repo / KAFKA_JMX_CONFIG
    return f"-javaagent:{jar}=127.0.0.1:{kafka_metrics_port(settings, node)}:{config}"


def scrape_targets(settings: Settings, *, functions: bool = True
                   ) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Every target by job: (host:port, extra labels). Ports follow app.stack.services and,
    in the cluster topology, app.stack.cluster."""
    from app.stack import cluster
    from app.stack import services as svc

    def local(port: int) -> str:
        return f"127.0.0.1:{port}"

    if settings.topology == "cluster":
        ports = cluster.Ports.from_settings(settings)
        kafka_nodes = len(ports.kafka)
        minio = [local(p) for p in ports.minio]
        s3 = local(ports.s3_lb)
    else:
        kafka_nodes = 1
        s3 = local(svc._host_port(settings.s3_endpoint, 9000)[1])  # noqa: SLF001
        minio = [s3]
    return {
        "worker": [(local(svc.worker_port(settings, i)), {"worker": str(i)})
                   for i in range(1, settings.workers + 1)],
        "function": [(local(svc.function_port(settings, i)), {"function": name})
                     for i, name in enumerate(svc.FUNCTIONS if functions else ())],
        "minio": [(target, {"node": str(n)}) for n, target in enumerate(minio, start=1)],
        "minio-cluster": [(s3, {})],
        "kafka": [(local(kafka_metrics_port(settings, n)), {"node": str(n)})
                  for n in range(1, kafka_nodes + 1)],
        "nginx": [(local(settings.exporter_port), {})],
        "redis": [(local(settings.exporter_port), {})],
        "prometheus": [(local(settings.prometheus_port), {})],
    }


METRICS_PATHS = {"minio": "/minio/v2/metrics/node", "minio-cluster": "/minio/v2/metrics/cluster",
                 "nginx": "/metrics/nginx", "redis": "/metrics/redis"}


def _duration(seconds: float) -> str:
    """Prometheus durations take whole units: 15 -> "15s", 0.5 -> "500ms"."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError("prometheus_scrape_interval_s must be positive")
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def prometheus_config(layout: Layout, settings: Settings, *, functions: bool = True
                      ) -> dict[str, Any]:
    """prometheus.yml as a mapping (rendered by ``render_prometheus``)."""
    interval = settings.prometheus_scrape_interval_s
    scrape_configs = []
    for job, targets in scrape_targets(settings, functions=functions).items():
        if not targets:
            continue
        entry: dict[str, Any] = {
            "job_name": job,
            "static_configs": [{"targets": [t], "labels": labels} if labels
                               else {"targets": [t]} for t, labels in targets],
        }
        if job in METRICS_PATHS:
            entry["metrics_path"] = METRICS_PATHS[job]
        scrape_configs.append(entry)
    return {
        "global": {
            "scrape_interval": _duration(interval),
            # A scrape may take most of the interval, never more (Prometheus refuses that).
            "scrape_timeout": _duration(min(10.0, interval)),
            "evaluation_interval": _duration(interval),
            # Alerts and recording rules say which stack they describe.
            "external_labels": {"stack": f"imagerec-{settings.topology}"},
        },
        "rule_files": [str(layout.repo / RULES_DIR / "*.yml")],
        "scrape_configs": scrape_configs,
    }


def render_prometheus(layout: Layout, settings: Settings, *, functions: bool = True) -> Path:
    """Write prometheus.yml into the run dir; returns its path."""
    conf_dir = layout.run / "prometheus"
    conf_dir.mkdir(parents=True, exist_ok=True)
    out = conf_dir / "prometheus.yml"
    text = yaml.safe_dump(prometheus_config(layout, settings, functions=functions),
                          sort_keys=False)
    out.write_text("# generated by imagerec at each start (app/stack/monitoring.py)\n" + text)
    return out


def prometheus_data(layout: Layout) -> Path:
    return layout.data / "prometheus"


def prometheus_command(layout: Layout, settings: Settings, config: Path) -> str:
    """Prometheus on loopback with modest retention; its data under the stack's data dir."""
    return " ".join([
        prometheus_bin(),
        f"--config.file={config}",
        f"--storage.tsdb.path={prometheus_data(layout)}",
        f"--storage.tsdb.retention.time={settings.prometheus_retention}",
        f"--storage.tsdb.retention.size={settings.prometheus_retention_size}",
        f"--web.listen-address=127.0.0.1:{settings.prometheus_port}",
        "--log.level=warn",
    ])
