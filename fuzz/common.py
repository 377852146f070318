"""What every harness shares: the contract check and the record of contract breaks.

A harness calls an entry point with fuzzer-made bytes. The entry point may succeed or raise
its documented error; anything else is a finding. Findings are recorded, with the input, and
fuzzing goes on (libFuzzer would stop at the first), so one run counts them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import traceback
from pathlib import Path

FINDINGS = Path(os.environ.get("IMAGEREC_FUZZ_OUT", "fuzz/out"))


def record(harness: str, data: bytes, exc: BaseException) -> None:
    """Append one finding (exception type, where, input digest) and keep the input."""
    FINDINGS.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()[:16]
    (FINDINGS / f"{harness}-{digest}.bin").write_bytes(data)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    line = {"harness": harness, "type": type(exc).__name__, "message": str(exc)[:200],
            "at": f"{frame.filename}:{frame.lineno}" if frame else "", "input": digest}
    with (FINDINGS / f"{harness}-findings.jsonl").open("a") as fh:
        fh.write(json.dumps(line) + "\n")
