"""Prometheus in the running stack: every program is a target and up, Kafka's agent, MinIO and
our Nginx/Redis exporter answer in Prometheus' format, the rules are loaded, and an upload shows
in the results rate through Prometheus' HTTP API (what the console draws from).

Works with any scrape interval: waits are a few intervals long (the test stack keeps the
default, 15 s, so these tests take about a minute).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest

from app.stack import monitoring
from tests.conftest import photo_variants

pytestmark = pytest.mark.integration


class Prometheus:
    """Prometheus' HTTP API, as the console and an operator's scripts use it."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def _wait(check, what: str, timeout_s: float, step_s: float = 1.0) -> Any:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(step_s)
    raise AssertionError(f"{what}: not after {timeout_s:.0f}s (last: {last!r})")


@pytest.fixture(scope="module")
def prom(settings) -> Prometheus:  # noqa: ANN001
    if not settings.prometheus_enabled:
        pytest.fail("monitoring is off (IMAGEREC_PROMETHEUS_ENABLED=false); these tests need it")
    api = Prometheus(settings.prometheus_port)
    try:
        with urllib.request.urlopen(api.base + "/-/ready", timeout=5) as resp:
            assert resp.status == 200
    except OSError as exc:
        pytest.fail(f"Prometheus does not answer on {api.base} ({exc}); start the stack")
    return api


def _interval(settings) -> float:  # noqa: ANN001
    return settings.prometheus_scrape_interval_s


def test_every_program_is_a_target_and_up(prom, settings) -> None:  # noqa: ANN001
    expected = {job: sorted(t for t, _ in targets) for job, targets in
                monitoring.scrape_targets(settings).items()}
    assert len(expected["worker"]) == settings.workers
    assert len(expected["function"]) == 2

    def all_up() -> dict[str, list[tuple[str, str, str]]] | None:
        found: dict[str, list[tuple[str, str, str]]] = {}
        for target in prom.get("/api/v1/targets", state="active")["activeTargets"]:
            found.setdefault(target["labels"]["job"], []).append(
                (target["labels"]["instance"], target["health"], target["lastError"]))
        healthy = all(h == "up" for rows in found.values() for _, h, _ in rows)
        return found if healthy and set(found) >= set(expected) else None

    found = _wait(all_up, "every target up", 3 * _interval(settings) + 10)
    jobs = ("worker", "function", "minio", "minio-cluster", "kafka", "nginx", "redis")
    for job in jobs:
        assert sorted(i for i, _, _ in found[job]) == expected[job], job
    # The same through a query: up == 1 for every worker, function, MinIO node and broker.
    ups = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1]
           for r in prom.query(f'up{{job=~"{"|".join(jobs)}"}}')}
    assert ups == {(job, t): "1" for job in jobs for t in expected[job]}


def test_exporters_serve_the_metrics_the_rules_use(prom, settings) -> None:  # noqa: ANN001
    """Kafka's agent (the DLQ's offsets), MinIO (drives online) and the workers (lag) all
    arrive under the names deploy/prometheus/rules/imagerec.yml reads."""
    def present() -> dict[str, int] | None:
        counts = {expr: len(prom.query(expr)) for expr in (
            f'kafka_log_logendoffset{{topic="{settings.topic_dlq}"}}',
            "kafka_controller_activecontrollercount",
            "minio_cluster_drive_online_total",
            'minio_node_drive_online_total{job="minio"}',
            'process_cpu_seconds_total{job="function"}',
            "nginx_up == 1",
            "redis_up == 1",
            "nginx_http_requests_total",
            "redis_memory_used_bytes",
        )}
        return counts if all(counts.values()) else None

    counts = _wait(present, "exporter metrics", 3 * _interval(settings) + 10)
    assert counts[f'kafka_log_logendoffset{{topic="{settings.topic_dlq}"}}'] == \
        settings.topic_partitions * settings.replication
    # one active controller in the whole Kafka cluster
    assert prom.value("sum(kafka_controller_activecontrollercount)") == 1


def test_rules_are_loaded_and_healthy(prom) -> None:  # noqa: ANN001
    groups = prom.get("/api/v1/rules")["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    for name in ("imagerec:results:rate1m", "imagerec:end_to_end_seconds:quantile_rate5m",
                 "ImagerecConsumerLagGrowing", "ImagerecDLQGrowing",
                 "ImagerecLatencySLOBurnFast"):
        assert name in names
    broken = [(rule["name"], rule.get("lastError")) for group in groups
              for rule in group["rules"] if rule.get("health") == "err"]
    assert not broken


def test_an_upload_shows_in_the_results_rate(prom, gateway, settings) -> None:  # noqa: ANN001
    """rate() needs two samples of a counter, the second one higher: the first image makes
    sure the worker's counter exists and is scraped (a counter born at 1 shows no increase),
    the second one is the rise. Compared through rate(), never as raw sums: a restarted
    worker's counters start again from 0 while the old series lingers for a few minutes."""
    interval = _interval(settings)
    first, second = photo_variants(2, seed=uuid.uuid4().int % 10_000_000)
    reply = gateway.upload(first)
    assert reply.status in (200, 202), reply.body[:300]
    assert gateway.wait_done(reply.json()["id"])["status"] == "done"
    time.sleep(interval + 2)  # a scrape after the first result: the series exists
    reply = gateway.upload(second)
    assert reply.status == 202, reply.body[:300]
    assert gateway.wait_done(reply.json()["id"])["status"] == "done"

    raw = _wait(lambda: prom.value("sum(rate(imagerec_images_classified_total[1m]))"),
                "the results rate is non-zero", 2 * interval + 10)
    assert raw > 0
    recorded = _wait(lambda: prom.value("imagerec:results:rate1m"),
                     "the recorded results rate is non-zero", 2 * interval + 10)
    assert recorded > 0
    assert (prom.value("imagerec:uploads:rate1m") or 0) > 0
