"""The changelog-backed results table (RocksDB per worker), keyed by image id.

Written only by the results agent (one event at a time; table writes inside ``take()`` raise,
faust-streaming issue 497). Non-windowed, so entries never expire: Redis is the TTL tier.
"""

from __future__ import annotations

from app.faust_app import app, settings

results_table = app.Table(
    "results",
    key_type=str,
    # The result JSON as the results agent received it (bytes: Faust's raw codec). Entries
    # written before with the json codec are the same bytes, so both read back alike.
    value_type=bytes,
    default=None,
    partitions=settings.topic_partitions,
    help="Finished classification results by image id.",
)
