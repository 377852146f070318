"""Where a reconciler pass starts: the previous pass's end, at most a day back."""

from __future__ import annotations

from app.reconcile import LOOKBACK_S, pass_start
from app.settings import Settings

NOW = 10_000_000.0


def test_without_a_mark_a_pass_looks_back_a_day() -> None:
    s = Settings(reconcile_grace_s=120)
    assert pass_start(s, None, NOW) == NOW - 120 - LOOKBACK_S


def test_a_pass_starts_where_the_last_one_stopped() -> None:
    s = Settings(reconcile_grace_s=120)
    mark = NOW - 120 - 60
    assert pass_start(s, mark, NOW) == mark


def test_a_long_outage_is_covered_up_to_a_day() -> None:
    s = Settings(reconcile_grace_s=120)
    assert pass_start(s, NOW - 7200, NOW) == NOW - 7200
    assert pass_start(s, NOW - 5 * 86400, NOW) == NOW - 120 - LOOKBACK_S


def test_a_mark_in_the_future_gives_an_empty_range() -> None:
    s = Settings(reconcile_grace_s=120)
    assert pass_start(s, NOW + 3600, NOW) == NOW - 120
