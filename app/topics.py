"""The Kafka topics as Faust sees them. Values stay raw bytes: we parse them ourselves so a
malformed message can be sent to the DLQ instead of killing the stream."""

from __future__ import annotations

from app.faust_app import app, settings


def _topic(name: str):  # noqa: ANN202 - faust.TopicT
    return app.topic(name, key_serializer="raw", value_serializer="raw",
                     partitions=settings.topic_partitions)


uploads_topic = _topic(settings.topic_uploads)
results_topic = _topic(settings.topic_results)
dlq_topic = _topic(settings.topic_dlq)
callbacks_topic = _topic(settings.topic_callbacks)
drops_topic = _topic(settings.topic_drops)  # written by MinIO (app.drops), read by us
reclassify_topic = _topic(settings.topic_reclassify)
