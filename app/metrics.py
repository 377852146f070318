"""Prometheus metrics of the pipeline, next to Faust's own sensors on ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

IMAGES_RECEIVED = Counter("imagerec_images_received_total",
                          "Images accepted by the upload API (202).", ["via"])
UPLOADS_REJECTED = Counter("imagerec_uploads_rejected_total",
                           "Uploads refused, by error code.", ["code"])
IMAGES_CLASSIFIED = Counter("imagerec_images_classified_total",
                            "Images that ended 'done'.", ["model"])
IMAGES_FAILED = Counter("imagerec_images_failed_total",
                        "Images that ended 'failed', by reason code.", ["reason"])
DLQ_MESSAGES = Counter("imagerec_dlq_messages_total",
                       "Messages sent to the dead-letter topic.")
BATCH_SIZE = Histogram("imagerec_batch_size", "Images per classify batch.",
                       buckets=(1, 2, 4, 8, 16, 32, 64))
INFERENCE_SECONDS = Histogram("imagerec_inference_seconds", "Model time per batch.",
                              buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))
END_TO_END_SECONDS = Histogram("imagerec_end_to_end_seconds",
                               "Upload accepted to result stored.",
                               buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60))
RETRIEVALS = Counter("imagerec_retrievals_total", "GET /v1/images/{id} by serving tier.",
                     ["tier"])
# Set every 10 s by the worker that owns the partition (agents.classify.report_consumer_lag),
# and removed when it no longer does, so a moved partition is never reported twice.
CONSUMER_LAG = Gauge("imagerec_consumer_lag", "End offset minus committed offset.",
                     ["topic", "partition"])
CONSUMER_COMMITTED = Gauge("imagerec_consumer_committed_offset",
                           "The next offset the consumer group reads on this partition "
                           "(lag that grows while this stands still means a stuck consumer).",
                           ["topic", "partition"])
CALLBACKS = Counter("imagerec_callbacks_total", "Webhook deliveries by outcome.", ["outcome"])
UPLOAD_CACHE = Counter("imagerec_upload_cache_total",
                       "Originals the classify agent found in this worker's memory (hit) or had "
                       "to read from storage (miss).", ["outcome"])
# The function hosts (functions/serve.py), as the OpenFaaS gateway counts invocations.
FUNCTION_INVOCATIONS = Counter("imagerec_function_invocations_total",
                               "Function calls by HTTP status code.", ["function", "code"])
FUNCTION_SECONDS = Histogram("imagerec_function_duration_seconds",
                             "Function call time, body read to answer.", ["function"],
                             buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60))
