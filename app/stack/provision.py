"""Create the topics and buckets up front, idempotently.

Topic auto-creation is off on the broker, so every topic is created here with the same
partition count (table writes go to the partition of the event: see DESIGN.md section 5).
"""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.settings import Settings
from app.storage import make_minio


def topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    """Per-topic settings. Upload events carry the broker's append time (LogAppendTime), so
    an image's trace (app.trace) can tell the time it took to reach Kafka from the time it
    waited there; the classify agent falls back to the producer's stamp on a topic created
    before."""
    configs = {"min.insync.replicas": str(settings.min_isr)}
    if topic == settings.topic_uploads:
        configs["message.timestamp.type"] = "LogAppendTime"
    return configs


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; returns the names that were created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_servers,
                                request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in settings.topics if t not in existing]
        if wanted:
            # min.insync.replicas per topic as well as on the brokers, so the guarantee
            # holds on a cluster whose brokers were configured by someone else.
            new = [NewTopic(name=t, num_partitions=settings.topic_partitions,
                            replication_factor=settings.replication,
                            topic_configs=topic_configs(settings, t))
                   for t in wanted]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        return wanted
    finally:
        await admin.close()


def ensure_buckets(settings: Settings) -> list[str]:
    """Create missing buckets; returns the names that were created."""
    client = make_minio(settings)
    created = []
    for bucket in settings.buckets:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            created.append(bucket)
    return created


def check_readable(settings: Settings) -> None:
    """List the first object of the models bucket. Stored data sealed under another KMS key
    (a replaced secrets.env) fails here, once and before any worker starts, rather than in
    every worker's first read: a listing decrypts each object's ETag. One key seals every
    bucket, and this one is small (models and API keys), so the check stays fast."""
    client = make_minio(settings)
    next(iter(client.list_objects(settings.bucket_models, recursive=True)), None)


def provision(settings: Settings) -> dict[str, list[str]]:
    """Everything the application expects to exist before a worker starts."""
    topics = asyncio.run(ensure_topics(settings))
    buckets = ensure_buckets(settings)
    # After the buckets exist: SSE-S3 by default on each, then one least-privilege MinIO
    # user per component (app.stack.iam), before any worker or function starts with its key.
    from app.stack import iam

    encrypted = iam.ensure_bucket_encryption(settings)
    users = iam.ensure_iam(settings)
    check_readable(settings)
    return {"topics": topics, "buckets": buckets, "encrypted": encrypted, "users": users}
