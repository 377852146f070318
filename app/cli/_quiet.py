"""Silence C++ start-up chatter (TensorFlow, XNNPACK) that bypasses Python logging.

Only for the CLI: it redirects the process-wide stderr descriptor, which a multi-threaded
server must not do. Python-level errors still surface as exceptions after the block.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[None]:
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
