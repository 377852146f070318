"""All configuration, read once from the environment (prefix ``IMAGEREC_``).

One module so that the worker, the functions, the CLI and the stack scripts agree on every
name and default. Generated secrets (S3 credentials, API-key pepper) are read from the
git-ignored ``$IMAGEREC_HOME/secrets.env`` (mode 0600) when the environment does not set them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = REPO_ROOT / ".stack"


def _env_files() -> tuple[Path, Path]:
    """Generated secrets, then what the running stack's topology sets (``stack.env``, written
    by ``imagerec stack up``), so the CLI and tests find a cluster's servers without flags."""
    import os

    home = Path(os.environ.get("IMAGEREC_HOME", str(DEFAULT_HOME)))
    return home / "secrets.env", home / "stack.env"


class Settings(BaseSettings):
    """Every knob of imagerec; see the configuration table in README.md."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEREC_", env_file=_env_files(), extra="ignore"
    )

    # --- where the local stack keeps its files -------------------------------------
    home: Path = DEFAULT_HOME

    # --- topology of the local stack -------------------------------------------------
    # "single": one of each server. "cluster": three Kafka nodes (replication 3, min ISR 2),
    # four MinIO nodes of two drives behind a load balancer, Redis primary + replica + three
    # Sentinels, three workers with a standby table replica (docs/OPERATIONS.md).
    topology: Literal["single", "cluster"] = "single"

    # --- network endpoints ----------------------------------------------------------
    gateway_url: str = "http://127.0.0.1:8080"
    # Comma-separated host:port list; any reachable one is enough to find the cluster.
    kafka_bootstrap: str = "127.0.0.1:9092"
    # One S3 endpoint: a single server, or a load balancer in front of several.
    s3_endpoint: str = "127.0.0.1:9000"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Comma-separated Sentinel host:port list. When set, every client asks the Sentinels for
    # the current primary of ``redis_sentinel_master`` (redis_url's host is then unused, its
    # database number still applies), so a failover needs no restart.
    redis_sentinels: str = ""
    redis_sentinel_master: str = "imagerec"
    web_host: str = "127.0.0.1"
    # How other workers reach this one for table routing (a container's hostname under Docker).
    advertised_host: str = ""
    # Gateway wiring; empty means this machine's local workers and functions on loopback.
    gateway_bind: str = "127.0.0.1"
    gateway_workers: str = ""  # comma-separated host:port of every worker's web port
    gateway_functions: str = ""  # "upload-host:port,classifier-host:port"
    web_port: int = 6066
    workers: int = 2

    # --- names (contracts; see shared DESIGN.md section 2) -----------------------------
    topic_uploads: str = "image-uploads"
    topic_results: str = "image-results"
    topic_dlq: str = "image-uploads-dlq"
    topic_callbacks: str = "image-callbacks"  # pending webhooks (durable delivery)
    # MinIO's bucket notifications for the drop prefix (app.drops): one message per object
    # created under ``drop_prefix`` in ``bucket_input``, written by MinIO itself.
    topic_drops: str = "image-drops"
    # Stored originals to classify again with another model (app.reclassify); a topic of
    # its own so that a re-classification backlog never queues in front of live uploads.
    topic_reclassify: str = "image-reclassify"
    topic_partitions: int = 4
    # Replicas of every topic (ours and Faust's changelogs) and the in-sync replicas an
    # acks=all write needs; 0 means the topology's value (1/1 single, 3/2 cluster).
    topic_replication: int = 0
    topic_min_isr: int = 0
    bucket_input: str = "input-images"
    bucket_processed: str = "processed-images"
    bucket_results: str = "classification-results"
    bucket_models: str = "models"

    # --- uploads straight to storage (app.drops) ------------------------------------------
    # Objects written under this prefix of ``bucket_input`` by any S3 client are classified:
    # ``<drop_prefix><tenant>/<any name>``, the first path segment naming the tenant.
    drop_prefix: str = "incoming/"
    # MinIO's notification target id (``MINIO_NOTIFY_KAFKA_*_<ID>``; ARN
    # ``arn:minio:sqs::<ID>:kafka``); "" turns drop notifications off.
    drop_notify_id: str = "imagerec"
    # Remove a dropped object once it has been recorded (accepted as an image, or failed with
    # a reason): the drop prefix is an inbox and the original lives on under its image id.
    drop_delete: bool = True

    # --- re-classification (app.reclassify) ------------------------------------------------
    # Images per second a re-classification job enqueues (a token bucket of ``burst``), so
    # that live uploads keep their latency; about a fifth of what two cores classify.
    reclassify_rate: float = 20.0
    reclassify_burst: int = 20

    # --- pipeline behaviour -------------------------------------------------------------
    batch_size: int = 16
    batch_window_s: float = 0.05
    result_ttl_s: int = 86400
    reconcile_grace_s: float = 120.0
    reconcile_interval_s: float = 60.0
    table_standby_replicas: int = 0
    upload_cache_mb: int = 64
    # How long Kafka producers gather messages into one request. 20 ms took Kafka from
    # 1.54 to 0.90 ms of CPU per image under load (bench/pipeline.py) and added about 30 ms
    # to light-load latency (73 -> 104 ms p50); 0 sends every message at once.
    producer_linger_ms: int = 20
    # The local MinIO's background scanner (usage statistics, bitrot checks, lifecycle):
    # fastest, fast, default, slow or slowest. "slowest" (a 30-minute cycle, sleeping 100x
    # each step's time) took MinIO from 6.0% to 2.1% of a core at idle (docs/PERFORMANCE.md,
    # session 4); imagerec uses no lifecycle rules or quotas, so nothing waits on it.
    minio_scanner_speed: Literal["fastest", "fast", "default", "slow", "slowest"] = "slowest"
    # The local Redis is a cache (the table and the bucket hold every result): its memory is
    # bounded, and when full it evicts the least recently used keys that have a TTL (results,
    # de-duplication marks). Without a bound a day of results at 85 images/s would be ~9 GB.
    # It snapshots at most every 5 minutes: a snapshot of 180 MB cost about 1 s of CPU, and
    # with "every minute" it ran once a minute under load.
    redis_maxmemory_mb: int = 512

    # --- input limits -------------------------------------------------------------------
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    min_side_px: int = 16
    # Presigned uploads (POST /v1/uploads, app.presign): how long a signed form is valid, and
    # where it is sent: "" = the gateway's /storage/upload, which passes it on to S3; or an
    # S3 endpoint URL that clients reach directly (e.g. https://s3.example.org).
    upload_url_expiry_s: int = 600
    upload_url: str = ""

    # --- model ----------------------------------------------------------------------------
    default_model: str = "efficientnet_lite0"
    model_cache: Path | None = Field(default=None)
    model_poll_s: float = 10.0
    # "auto": time every engine and keep the fastest that agrees with fp32 (app.model.select);
    # or force one of app.model.engine.ENGINES ("litert-fp32", "litert-int8", ...).
    engine: str = "auto"
    inference_threads: int = 0  # TFLite interpreter threads; 0 = one per CPU core
    mobilenet_v2_weights: Path | None = None  # Keras MobileNetV2 ImageNet .h5; never downloaded
    jpeg_draft: bool = True  # reduced-size DCT decoding of large JPEGs (faster, same top-1)

    # --- security -------------------------------------------------------------------------
    api_key_pepper: str = ""
    # Per API key at the gateway (Nginx limit_req): a steady rate, plus a burst served at once.
    rate_limit_rps: float = 200.0
    rate_limit_burst: int = 400
    gateway_tls_port: int = 8443  # served only when .stack/tls/ has a certificate
    callback_secret: str = ""
    callback_attempts: int = 6
    callback_backoff_s: float = 2.0  # first retry after this, then doubling (cap 300 s)
    callback_timeout_s: float = 10.0  # one attempt, connect to last byte
    # Webhooks to private/loopback/link-local addresses are refused (SSRF); CIDRs listed
    # here (comma-separated, e.g. "10.20.0.0/16") are allowed anyway, for intranet receivers.
    callback_allow_nets: str = ""
    auth_disabled: bool = False

    # --- monitoring (docs/OPERATIONS.md, "Monitoring") ------------------------------------
    # The local stack runs Prometheus (Debian's package) on loopback, scraping every worker,
    # function, MinIO node and Kafka broker; off runs neither it nor Kafka's metrics agent.
    prometheus_enabled: bool = True
    prometheus_port: int = 9090
    # Where the console (web.console) reads Prometheus' API; empty: the local stack's, on
    # 127.0.0.1:prometheus_port (another host under docker-compose or Kubernetes).
    prometheus_url: str = ""
    # How often every target is scraped and the rules evaluated. 15 s: see docs/PERFORMANCE.md
    # for what Prometheus and the exporters cost at 5, 15 and 30 s under load.
    prometheus_scrape_interval_s: float = 15.0
    # Local history: the time kept (Prometheus' duration syntax) and a size cap on the disk.
    prometheus_retention: str = "3d"
    prometheus_retention_size: str = "1GB"
    # The Kafka JMX exporter agent (Maven Central) inside each broker: node n (1-based)
    # serves its metrics on kafka_metrics_port + n - 1, on loopback.
    kafka_metrics_port: int = 9404
    # app/stack/exporter.py: Nginx's stub_status and Redis' INFO in Prometheus' format.
    exporter_port: int = 9113

    # --- logging --------------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True

    @property
    def model_dir(self) -> Path:
        """Converted models are cached here; it survives restarts but not `make clean`."""
        return self.model_cache or (self.home / "models")

    @property
    def kafka_servers(self) -> list[str]:
        """``kafka_bootstrap`` as a list, as the Kafka clients take it."""
        return [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """``redis_sentinels`` as (host, port) pairs; empty when Redis is used directly."""
        out = []
        for item in (i.strip() for i in self.redis_sentinels.split(",")):
            if item:
                host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
                out.append((host or "127.0.0.1", int(port)))
        return out

    @property
    def replication(self) -> int:
        return self.topic_replication or (3 if self.topology == "cluster" else 1)

    @property
    def min_isr(self) -> int:
        return self.topic_min_isr or (2 if self.topology == "cluster" else 1)

    @property
    def buckets(self) -> list[str]:
        return [self.bucket_input, self.bucket_processed, self.bucket_results, self.bucket_models]

    @property
    def topics(self) -> list[str]:
        return [self.topic_uploads, self.topic_results, self.topic_dlq, self.topic_callbacks,
                self.topic_drops, self.topic_reclassify]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
