"""Image ids: server-generated ULIDs (URL-safe, sortable by creation time).

Object keys and Redis keys are built from these ids only, never from client-supplied names.
"""

from __future__ import annotations

import re

from ulid import ULID

_ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def new_image_id() -> str:
    return str(ULID())


def is_image_id(value: str) -> bool:
    """True for a well-formed id; anything else is answered 404 without touching storage."""
    return bool(_ULID_RE.match(value))
