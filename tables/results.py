"""The changelog-backed results table (RocksDB per worker), keyed by image id.

Written only by the results agent (one event at a time; table writes inside ``take()`` raise,
faust-streaming issue 497). Non-windowed, so entries never expire: Redis is the TTL tier.
"""

from __future__ import annotations

from app.faust_app import app, settings

results_table = app.Table(
    "results",
    key_type=str,
    default=None,
    partitions=settings.topic_partitions,
    help="Finished classification results by image id.",
)
