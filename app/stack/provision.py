"""Create the topics and buckets up front, idempotently.

Topic auto-creation is off on the broker, so every topic is created here with the same
partition count (table writes go to the partition of the event: see DESIGN.md section 5).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.settings import Settings
from app.storage import make_minio

log = logging.getLogger(__name__)


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


def notify_env(settings: Settings, brokers: list[str], queue_dir: str) -> dict[str, str]:
    """MinIO's Kafka notification target for drops (app.drops), as server environment: every
    MinIO node of a deployment needs it (``app.stack.services``, docker-compose, Helm).

    ``queue_dir`` is where MinIO keeps events it could not deliver (Kafka down, or not up yet
    when MinIO starts) and replays them from; without it such events are lost. One directory
    per node. MinIO's producer waits for the partition leader's ack (acks=1, not
    configurable); the agent's own writes are acks=all.
    """
    target = settings.drop_notify_id
    if not target:
        return {}
    suffix = f"_{target.upper()}"
    return {
        f"MINIO_NOTIFY_KAFKA_ENABLE{suffix}": "on",
        f"MINIO_NOTIFY_KAFKA_BROKERS{suffix}": ",".join(brokers),
        f"MINIO_NOTIFY_KAFKA_TOPIC{suffix}": settings.topic_drops,
        f"MINIO_NOTIFY_KAFKA_QUEUE_DIR{suffix}": queue_dir,
        f"MINIO_NOTIFY_KAFKA_QUEUE_LIMIT{suffix}": "100000",
    }


def notify_arn(settings: Settings, server_arns: list[str] | None = None) -> str:
    """The ARN of our Kafka target: the one the server lists (its region is in it when the
    server has one), else the region-less form MinIO uses by default. The target id is
    upper case: MinIO takes it from the environment variable names."""
    target = settings.drop_notify_id.upper()  # the env names' suffix, as MinIO reads it
    for arn in server_arns or []:
        if arn.endswith(f":{target}:kafka"):
            return arn
    return f"arn:minio:sqs::{target}:kafka"


def drop_notification(settings: Settings, arn: str) -> Any:
    """The bucket notification configuration for the drop prefix (object creations only:
    removing a drop after it was taken in must not come back as an event)."""
    from minio.notificationconfig import PrefixFilterRule, QueueConfig

    return QueueConfig(queue=arn, events=["s3:ObjectCreated:*"], config_id="imagerec-drops",
                       prefix_filter_rule=PrefixFilterRule(settings.drop_prefix))


def ensure_drop_notification(settings: Settings) -> bool:
    """Point ``bucket_input``'s notifications for ``drop_prefix`` at our Kafka target,
    keeping any other configuration on the bucket; True when it changed."""
    import json

    from minio.error import S3Error
    from minio.notificationconfig import NotificationConfig

    from app.stack import iam

    if not settings.drop_notify_id:
        return False
    try:
        listed = json.loads(iam.admin_client(settings).info() or "{}").get("sqsARN") or []
    except Exception:  # noqa: BLE001 - not MinIO, or no admin rights: try the default form
        listed = None
    arn = notify_arn(settings, listed)
    if listed is not None and arn not in listed:
        # A MinIO started without our Kafka target (e.g. an existing one behind Helm):
        # setting the notification would fail; provisioning goes on without drops.
        log.warning("drops are off: MinIO has no Kafka notification target %s; set "
                    "MINIO_NOTIFY_KAFKA_*_%s on every MinIO node (docs/OPERATIONS.md, Drops)",
                    arn, settings.drop_notify_id.upper())
        return False
    client = make_minio(settings)
    current = client.get_bucket_notification(settings.bucket_input)
    ours = drop_notification(settings, arn)

    def same(q: Any) -> bool:
        rule = q.prefix_filter_rule
        return (q.queue == ours.queue and q.events == ours.events
                and rule is not None and rule.value == settings.drop_prefix)

    queues = list(current.queue_config_list)
    if any(same(q) for q in queues):
        return False
    others = [q for q in queues if q.config_id != "imagerec-drops"]
    try:
        client.set_bucket_notification(settings.bucket_input, NotificationConfig(
            cloud_func_config_list=current.cloud_func_config_list,
            queue_config_list=[*others, ours],
            topic_config_list=current.topic_config_list))
    except S3Error as exc:
        if exc.code != "InvalidArgument":  # the server does not know the ARN
            raise
        log.warning("drops are off: the S3 server refused the notification to %s (%s)",
                    arn, exc.message)
        return False
    return True


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
    drops = ["notification"] if ensure_drop_notification(settings) else []
    return {"topics": topics, "buckets": buckets, "encrypted": encrypted, "users": users,
            "drops": drops}
