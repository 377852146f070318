"""Drawing ids that land in this worker's partitions, and the bounded store of originals."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from app.ids import is_image_id
from app.locality import RecentUploads, local_image_id, partition_of


def test_partition_matches_the_producers_partitioner() -> None:
    partitions = list(range(4))
    for _ in range(200):
        image_id = local_image_id((), None)
        assert partition_of(image_id, 4) == DefaultPartitioner()(
            image_id.encode(), partitions, partitions)


def test_drawn_ids_land_in_owned_partitions_and_stay_ulids() -> None:
    for owned in ({0, 2}, {3}, {1, 2, 3}):
        for _ in range(100):
            image_id = local_image_id(owned, 4)
            assert is_image_id(image_id)
            assert partition_of(image_id, 4) in owned


def test_drawn_ids_are_spread_over_the_owned_partitions() -> None:
    seen = {partition_of(local_image_id({0, 2}, 4), 4) for _ in range(200)}
    assert seen == {0, 2}


def test_unknown_assignment_gives_a_plain_id() -> None:
    assert is_image_id(local_image_id(set(), 4))
    assert is_image_id(local_image_id({1}, None))


def test_recent_uploads_are_taken_once_and_bounded_by_bytes() -> None:
    store = RecentUploads(max_bytes=10)
    store.keep("a", b"1234")
    store.keep("b", b"5678")
    assert store.take("a") == b"1234"
    assert store.take("a") is None
    store.keep("c", b"abcd")
    store.keep("d", b"efgh")  # 12 bytes held: the oldest ("b") goes
    assert store.take("b") is None
    assert store.size_bytes == 8 and len(store) == 2
    store.keep("huge", b"x" * 11)  # larger than the whole store: not kept
    assert store.take("huge") is None
    store.discard("c")
    assert store.take("c") is None and store.take("d") == b"efgh"
    assert store.size_bytes == 0
