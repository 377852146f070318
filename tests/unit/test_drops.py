"""Drops (uploads straight to storage): notification parsing, ids, keys and MinIO's config,
without a server. The real path (MinIO -> Kafka -> agent) is tests/integration/test_drops.py."""

from __future__ import annotations

import json

import pytest

from app import drops, names
from app.ids import is_image_id
from app.settings import Settings
from app.stack import provision
from tests.unit.test_stack_config import _cluster, _programs


def _notification(key: str = "incoming/acme/cats/tabby%20one.jpg", etag: str = "abc",
                  event: str = "s3:ObjectCreated:Put", size: int = 1234) -> bytes:
    """The shape MinIO's Kafka target writes (internal/event/target/kafka.go: an event.Log
    with the S3 event record, the record's key URL-encoded as S3 does)."""
    return json.dumps({
        "EventName": event, "Key": "input-images/" + key,
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
            "eventTime": "2026-12-02T23:50:01.123Z", "eventName": event,
            "userIdentity": {"principalId": "camera-7"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "imagerec-drops",
                   "bucket": {"name": "input-images", "arn": "arn:aws:s3:::input-images"},
                   "object": {"key": key, "size": size, "eTag": etag,
                              "contentType": "image/jpeg", "sequencer": "1878D5A8C2E0F1B3"}},
        }],
    }).encode()


def test_a_notification_gives_its_record_with_the_key_decoded() -> None:
    [rec] = drops.parse_notification(_notification())
    assert rec.bucket == "input-images"
    assert rec.key == "incoming/acme/cats/tabby one.jpg"
    assert (rec.size, rec.etag, rec.created) == (1234, "abc", True)
    [removed] = drops.parse_notification(_notification(event="s3:ObjectRemoved:Delete"))
    assert not removed.created


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'{"Records": 3}',
                                 b'{"Records": [{"s3": {}}]}'])
def test_anything_else_is_not_a_drop_event(raw: bytes) -> None:
    with pytest.raises(drops.NotADropEvent):
        drops.parse_notification(raw)


def test_a_redelivered_event_names_the_same_image_and_a_rewrite_another() -> None:
    [rec] = drops.parse_notification(_notification())
    [again] = drops.parse_notification(_notification())
    [rewritten] = drops.parse_notification(_notification(etag="def"))
    first = drops.derived_image_id(rec)
    assert is_image_id(first)
    assert drops.derived_image_id(again) == first
    assert drops.derived_image_id(rewritten) != first
    # sortable by the object's creation time, like every other id
    from ulid import ULID

    assert ULID.from_str(first).milliseconds == 1796255401123


def test_the_first_segment_of_a_drop_key_is_its_tenant() -> None:
    settings = Settings(api_key_pepper="p" * 32)
    assert drops.parse_drop_key("incoming/acme/a/b.jpg", settings) == \
        drops.DropKey("acme", "a/b.jpg")
    assert drops.parse_drop_key("elsewhere/acme/x.jpg", settings) is None
    assert drops.parse_drop_key("incoming/acme/folder/", settings) is None  # folder marker
    for no_tenant in ("incoming/x.jpg", "incoming/Acme/x.jpg", "incoming/-a/x.jpg"):
        key = drops.parse_drop_key(no_tenant, settings)
        assert key is not None and key.tenant == ""
    custom = Settings(drop_prefix="cams/")
    assert drops.parse_drop_key("cams/t1/x.jpg", custom) == drops.DropKey("t1", "x.jpg")


def test_a_presigned_upload_key_keeps_its_issued_id_only_with_the_server_mac() -> None:
    settings = Settings(api_key_pepper="p" * 32)
    image_id = "01JF0000000000000000000000"
    key = drops.upload_drop_key("acme", image_id, settings)
    assert key.startswith(f"incoming/acme/{names.DROP_UPLOADS_DIR}/{image_id}.")
    assert drops.parse_drop_key(key, settings).issued_id == image_id
    # another tenant's prefix, another secret, a made-up MAC: an ordinary drop
    other = key.replace("incoming/acme/", "incoming/evil/")
    assert drops.parse_drop_key(other, settings).issued_id is None
    assert drops.parse_drop_key(key, Settings(api_key_pepper="q" * 32)).issued_id is None
    forged = key[:-4] + "0000"
    assert drops.parse_drop_key(forged, settings).issued_id is None


def test_minio_gets_the_kafka_target_with_a_queue_dir(tmp_path) -> None:
    env = next(p for p in _programs(tmp_path, Settings(home=tmp_path, kafka_bootstrap=
                                                       "127.0.0.1:49092"))
               if p.name == "minio").env
    assert env["MINIO_NOTIFY_KAFKA_ENABLE_IMAGEREC"] == "on"
    assert env["MINIO_NOTIFY_KAFKA_BROKERS_IMAGEREC"] == "127.0.0.1:49092"
    assert env["MINIO_NOTIFY_KAFKA_TOPIC_IMAGEREC"] == "image-drops"
    assert env["MINIO_NOTIFY_KAFKA_QUEUE_DIR_IMAGEREC"].startswith(str(tmp_path))
    off = next(p for p in _programs(tmp_path, Settings(home=tmp_path, drop_notify_id=""))
               if p.name == "minio").env
    assert not any(k.startswith("MINIO_NOTIFY_") for k in off)


def test_every_cluster_minio_node_announces_drops_to_every_kafka_node(tmp_path) -> None:
    settings, _, progs = _cluster(tmp_path)
    nodes = [p for p in progs if p.name.startswith("minio-")]
    assert len(nodes) == 4
    for node in nodes:
        assert node.env["MINIO_NOTIFY_KAFKA_ENABLE_IMAGEREC"] == "on"
        assert node.env["MINIO_NOTIFY_KAFKA_BROKERS_IMAGEREC"].split(",") == \
            settings.kafka_servers
        assert len(settings.kafka_servers) == 3
    # MinIO refuses to start a cluster whose servers differ in any MINIO_* variable
    minio_vars = [{k: v for k, v in n.env.items() if k.startswith("MINIO_")} for n in nodes]
    assert all(v == minio_vars[0] for v in minio_vars), "MINIO_* must match on every node"


def test_the_bucket_notification_filters_on_the_drop_prefix() -> None:
    settings = Settings(drop_prefix="cams/")
    assert provision.notify_arn(settings) == "arn:minio:sqs::IMAGEREC:kafka"
    listed = ["arn:minio:sqs:eu-west-1:OTHER:kafka", "arn:minio:sqs:eu-west-1:IMAGEREC:kafka"]
    assert provision.notify_arn(settings, listed) == "arn:minio:sqs:eu-west-1:IMAGEREC:kafka"
    config = provision.drop_notification(settings, provision.notify_arn(settings))
    assert config.events == ["s3:ObjectCreated:*"]
    assert config.prefix_filter_rule.value == "cams/"
    assert "image-drops" in settings.topics and "image-reclassify" in settings.topics


def test_source_keys_index_under_a_fixed_length_prefix() -> None:
    long_key = "incoming/acme/" + "x" * 1000
    prefix = names.source_index_prefix(long_key)
    assert len(prefix) == len("by-source/") + 64 + 1
    assert names.source_index_key(long_key, "01JF0000000000000000000000") == \
        prefix + "01JF0000000000000000000000"
    # never inside the reconciler's id range (ULID characters sort before lower case)
    assert prefix > "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
