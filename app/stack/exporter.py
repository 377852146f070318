"""Nginx's and Redis' figures in Prometheus' format, for the local stack's Prometheus.

Neither server speaks Prometheus: Nginx has ``stub_status`` (a few lines of text, served by the
gateway at ``/_status`` to loopback only) and Redis has ``INFO``. The usual exporters
(nginx-prometheus-exporter, redis_exporter) are Go programs no registry here ships ready to
run, so this small process translates both, on each scrape, under the names those exporters
use (``nginx_connections_active``, ``redis_memory_used_bytes``, ...), so dashboards and rules
written for them read ours too. Two paths, scraped as two jobs, so each has its own ``up``:

- ``/metrics/nginx``: the gateway's connections and requests, ``nginx_up``;
- ``/metrics/redis``: each Redis of the topology (the primary and its replica in the
  cluster, labelled ``addr``): ``redis_up``, role, clients, memory, keys, hits and misses,
  evictions, commands.

Run by the stack's supervisor as ``python -m app.stack.exporter`` on
``127.0.0.1:IMAGEREC_EXPORTER_PORT``; it reads nothing and costs nothing between scrapes.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from app.settings import Settings, get_settings

TIMEOUT_S = 2.0
_STUB = re.compile(
    r"Active connections:\s*(\d+).*?(\d+)\s+(\d+)\s+(\d+)\s*"
    r"Reading:\s*(\d+)\s*Writing:\s*(\d+)\s*Waiting:\s*(\d+)", re.S)


def parse_stub_status(text: str) -> dict[str, int]:
    """Nginx's stub_status page as numbers; ValueError when it is not one."""
    match = _STUB.search(text)
    if not match:
        raise ValueError("not an nginx stub_status page")
    keys = ("active", "accepted", "handled", "requests", "reading", "writing", "waiting")
    return dict(zip(keys, map(int, match.groups()), strict=True))


def stub_status_url(settings: Settings) -> str:
    from app.stack.services import gateway_port

    return f"http://127.0.0.1:{gateway_port(settings)}/_status"


def redis_addresses(settings: Settings) -> list[tuple[str, int]]:
    """Every Redis server of the topology (not the Sentinels)."""
    from app.stack import cluster
    from app.stack.services import redis_port

    if settings.topology == "cluster":
        return [("127.0.0.1", port) for port in cluster.Ports.from_settings(settings).redis]
    return [("127.0.0.1", redis_port(settings))]


class NginxCollector(Collector):
    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=TIMEOUT_S) as resp:
                status = parse_stub_status(resp.read().decode(errors="replace"))
        except (OSError, ValueError):
            yield GaugeMetricFamily("nginx_up", "Whether the gateway's stub_status answered.", 0)
            return
        yield GaugeMetricFamily("nginx_up", "Whether the gateway's stub_status answered.", 1)
        for key in ("active", "reading", "writing", "waiting"):
            yield GaugeMetricFamily(f"nginx_connections_{key}",
                                    f"Client connections {key}.", status[key])
        for key in ("accepted", "handled"):
            yield CounterMetricFamily(f"nginx_connections_{key}",
                                      f"Client connections {key}.", status[key])
        yield CounterMetricFamily("nginx_http_requests", "Client requests.", status["requests"])


class RedisCollector(Collector):
    # INFO field -> (metric name, kind, help)
    FIELDS = {
        "connected_clients": ("redis_connected_clients", "gauge", "Client connections."),
        "used_memory": ("redis_memory_used_bytes", "gauge", "Memory in use."),
        "maxmemory": ("redis_memory_max_bytes", "gauge", "The maxmemory bound."),
        "keyspace_hits": ("redis_keyspace_hits", "counter", "Lookups that found their key."),
        "keyspace_misses": ("redis_keyspace_misses", "counter", "Lookups that did not."),
        "evicted_keys": ("redis_evicted_keys", "counter", "Keys evicted at maxmemory."),
        "expired_keys": ("redis_expired_keys", "counter", "Keys expired by their TTL."),
        "total_commands_processed": ("redis_commands_processed", "counter",
                                     "Commands served."),
        "connected_slaves": ("redis_connected_slaves", "gauge", "Replicas connected."),
    }

    def __init__(self, addresses: list[tuple[str, int]]) -> None:
        self.addresses = addresses

    def collect(self) -> Iterator[Metric]:
        import redis

        up = GaugeMetricFamily("redis_up", "Whether Redis answered INFO.", labels=["addr"])
        role = GaugeMetricFamily("redis_instance_info", "Redis' role.", labels=["addr", "role"])
        keys = GaugeMetricFamily("redis_db_keys", "Keys per database.", labels=["addr", "db"])
        families = {
            field: (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
                name, text, labels=["addr"])
            for field, (name, kind, text) in self.FIELDS.items()}
        for host, port in self.addresses:
            addr = f"{host}:{port}"
            client = redis.Redis(host=host, port=port, socket_timeout=TIMEOUT_S,
                                 socket_connect_timeout=TIMEOUT_S)
            try:
                info = client.info()
            except redis.RedisError:
                up.add_metric([addr], 0)
                continue
            finally:
                client.close()
            up.add_metric([addr], 1)
            role.add_metric([addr, str(info.get("role", "?"))], 1)
            for field, family in families.items():
                if field in info:
                    family.add_metric([addr], float(info[field]))
            for db, values in info.items():
                if db.startswith("db") and isinstance(values, dict):
                    keys.add_metric([addr, db], float(values.get("keys", 0)))
        yield up
        yield role
        yield keys
        yield from families.values()


def registries(settings: Settings) -> dict[str, CollectorRegistry]:
    """One registry per path: each job's scrape asks only its own server."""
    out = {}
    for path, collector in (("/metrics/nginx", NginxCollector(stub_status_url(settings))),
                            ("/metrics/redis", RedisCollector(redis_addresses(settings)))):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        out[path] = registry
    return out


def serve(settings: Settings) -> None:
    paths = registries(settings)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            registry = paths.get(self.path.split("?", 1)[0])
            if registry is None:
                self.send_error(404)
                return
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes are not news
            pass

    server = ThreadingHTTPServer(("127.0.0.1", settings.exporter_port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    serve(get_settings())
