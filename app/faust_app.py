"""The Faust application object, configured from settings.

Each worker process gets its own RocksDB data directory (``IMAGEREC_WORKER_ID``) and web port,
so several workers on one machine share the partitions without sharing state.
"""

from __future__ import annotations

import os

import faust
from faust.transport.drivers import aiokafka as faust_kafka

from app.settings import get_settings
from app.stack.layout import Layout


class IdempotentProducer(faust_kafka.Producer):
    """Faust's producer with idempotence on (it turns it on only inside transactions): when a
    broker dies after writing a batch but before acknowledging it, the retry to the new
    leader is recognised and not written twice."""

    def _settings_extra(self):  # noqa: ANN202 - faust's signature
        return {**super()._settings_extra(), "enable_idempotence": True}


# The transport's producer class is its documented extension point (a ClassVar).
faust_kafka.Transport.Producer = IdempotentProducer

settings = get_settings()
WORKER_ID = int(os.environ.get("IMAGEREC_WORKER_ID", "1"))

app = faust.App(
    "imagerec",
    broker=[f"kafka://{server}" for server in settings.kafka_servers],
    store="rocksdb://",
    datadir=str(Layout.from_settings(settings).worker_data(WORKER_ID)),
    web_host=settings.web_host,
    web_port=settings.web_port + WORKER_ID - 1,
    web_in_thread=False,
    canonical_url=f"http://{settings.advertised_host or settings.web_host}:"
    f"{settings.web_port + WORKER_ID - 1}",
    topic_partitions=settings.topic_partitions,
    # Faust creates its changelog and assignor topics with this; its default of 1 would
    # leave the table unreplicated on a three-broker cluster.
    topic_replication_factor=settings.replication,
    producer_acks=-1,
    broker_commit_interval=1.0,
    # Results and changelog writes come in batches; linger turns dozens of tiny produce
    # requests into one (see settings.producer_linger_ms).
    producer_linger=settings.producer_linger_ms / 1000,
    # A worker that died without leaving the group holds its partitions until this expires;
    # 10 s (not Faust's 60 s) keeps a crash-restart short. Inference never blocks the loop.
    broker_session_timeout=10.0,
    broker_heartbeat_interval=2.0,
    # A standby copy replays every other worker's changelog into its own RocksDB, which costs
    # a Kafka read and a store write per result on the busy path. Results are also in Redis
    # and MinIO, and an owner rebuilds its table from the changelog, so none by default.
    table_standby_replicas=settings.table_standby_replicas,
    stream_wait_empty=False,
    autodiscover=False,
    # Uploads are streamed, but aiohttp refuses bodies above client_max_size before we see
    # them; the gateway enforces the real limit, this is the backstop.
    web_application_options={"client_max_size": settings.max_upload_bytes + 1024 * 1024},
    web_cors_options=None,
)
