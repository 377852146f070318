"""Query parameters (``top_k``, ``min_score``, ``wait``, ``limit``): one parser for the Faust
views and the functions, so both refuse the same values with the same 400."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TypeVar

from app.errors import ApiError

N = TypeVar("N", int, float)


def _number(query: Mapping[str, str], name: str, default: N, lo: N, hi: N,
            kind: Callable[[str], N], what: str) -> N:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ApiError(f"{name} must be {what}", code="bad_parameter") from None
    if isinstance(value, float) and math.isnan(value) or not lo <= value <= hi:
        raise ApiError(f"{name} must be between {lo} and {hi}", code="bad_parameter")
    return value


def int_param(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    return _number(query, name, default, lo, hi, int, "an integer")


def float_param(query: Mapping[str, str], name: str, default: float, lo: float,
                hi: float) -> float:
    return _number(query, name, default, lo, hi, float, "a number")


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no", "")


def bool_param(query: Mapping[str, str], name: str, default: bool = False) -> bool:
    """``1``/``true``/``yes`` or ``0``/``false``/``no``; anything else is the same 400 as a
    bad number."""
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ApiError(f"{name} must be true or false", code="bad_parameter")
