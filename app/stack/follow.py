"""``make run``: the stack in the foreground with its logs interleaved on the terminal."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from app.settings import get_settings
from app.stack import manage
from app.stack.layout import Layout


def _follow(paths: list[Path]) -> None:
    """Print new lines from every log, prefixed with the service name, until interrupted."""
    handles = {}
    for path in paths:
        fh = path.open("r", errors="replace")
        fh.seek(0, 2)
        handles[path.stem] = fh
    width = max(len(n) for n in handles)
    while True:
        quiet = True
        for name, fh in handles.items():
            for line in fh.readlines():
                quiet = False
                print(f"{name:>{width}} | {line.rstrip()}", flush=True)
        if quiet:
            time.sleep(0.3)


def run_foreground() -> None:
    manage.up()
    layout = Layout.from_settings(get_settings())
    logs = sorted(p for p in layout.logs.glob("*.log") if not p.name.startswith("supervisord"))
    print(f"open {get_settings().gateway_url}/  -- following logs, Ctrl-C stops everything",
          flush=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with INT ignored
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _follow(logs)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    finally:
        manage.down()
