"""How far a new leader's first reconciler pass looks back."""

from __future__ import annotations

from app.reconcile import LOOKBACK_S, catch_up_lookback
from app.settings import Settings


def test_without_a_mark_the_first_pass_looks_back_a_day() -> None:
    assert catch_up_lookback(Settings(), None, now=1_000_000.0) == LOOKBACK_S


def test_a_recent_mark_means_one_window() -> None:
    s = Settings(reconcile_grace_s=120, reconcile_window_s=180)
    now = 1_000_000.0
    assert catch_up_lookback(s, now - 120 - 30, now) == 180 + 30


def test_downtime_is_covered_but_never_more_than_a_day() -> None:
    s = Settings(reconcile_grace_s=120, reconcile_window_s=180)
    now = 10_000_000.0
    two_hours_ago = now - 120 - 7200
    assert catch_up_lookback(s, two_hours_ago, now) == 7200 + 180
    assert catch_up_lookback(s, now - 5 * 86400, now) == LOOKBACK_S


def test_a_mark_in_the_future_still_scans_one_window() -> None:
    s = Settings(reconcile_grace_s=120, reconcile_window_s=180)
    assert catch_up_lookback(s, 2_000_000.0, now=1_000_000.0) == 180
