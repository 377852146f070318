"""Run every harness for a fixed time and print the figures docs/SECURITY.md records.

    PYTHONPATH=$PWD .venv/bin/python -m fuzz.run --seconds 120

Per harness: inputs tried (libFuzzer's executed units), coverage edges, corpus size,
findings (contract breaks, each kept under fuzz/out/ with its input), wall time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARNESSES = {"image": "fuzz/harness_image.py", "event": "fuzz/harness_event.py"}
FINDING_FILES = {"image": ("inspect", "prepare"), "event": ("event",)}


def seed_images(directory: Path) -> None:
    """One small valid file per allowed format."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (32, 24), (200, 30, 90))
    for x in range(32):
        img.putpixel((x, x % 24), (x * 8, 255 - x * 8, 0))
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("BMP", "bmp"),
                     ("WEBP", "webp"), ("TIFF", "tif")):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        (directory / f"seed.{ext}").write_bytes(buf.getvalue())
    rgba = img.convert("RGBA")
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    (directory / "seed-rgba.png").write_bytes(buf.getvalue())


def seed_events(directory: Path) -> None:
    from app import results as res
    from app.ids import new_image_id

    directory.mkdir(parents=True, exist_ok=True)
    for i, extra in enumerate(({}, {"callback_url": "https://hooks.example/x", "tenant": "a"},
                               {"reuse_of": new_image_id(), "reconciled": True})):
        event = res.UploadEvent(id=new_image_id(), sha256="ab" * 32, format="jpeg", size=1234,
                                created_at=res.now_iso(), width=640, height=480, **extra)
        (directory / f"seed-{i}.json").write_bytes(event.to_bytes())


def run_one(name: str, seconds: int, out: Path) -> dict[str, object]:
    corpus = out / "corpus" / name
    shutil.rmtree(corpus, ignore_errors=True)
    (seed_images if name == "image" else seed_events)(corpus)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMAGEREC_FUZZ_OUT": str(out),
           "IMAGEREC_LOG_LEVEL": "ERROR"}
    extra = [f"-dict={ROOT / 'fuzz' / 'event.dict'}"] if name == "event" else []
    started = time.monotonic()
    done = subprocess.run([sys.executable, HARNESSES[name], f"-max_total_time={seconds}",
                           "-print_final_stats=1", "-max_len=65536", "-rss_limit_mb=2048",
                           *extra, str(corpus)], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    took = time.monotonic() - started
    log = done.stdout + done.stderr
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    cov = re.findall(r"cov: (\d+)", log)
    found = []
    for prefix in FINDING_FILES[name]:
        path = out / f"{prefix}-findings.jsonl"
        if path.exists():
            found += [json.loads(line) for line in path.read_text().splitlines()]
    return {"harness": name, "seconds": round(took, 1),
            "inputs": int(execs.group(1)) if execs else None,
            "per_s": round(int(execs.group(1)) / took) if execs else None,
            "coverage": int(cov[-1]) if cov else None,
            "corpus": sum(1 for _ in corpus.iterdir()),
            "findings": len(found),
            "distinct": sorted({f"{f['type']} at {f['at']}" for f in found}),
            "exit": done.returncode,
            "tail": log[-600:] if done.returncode not in (0,) else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--only", choices=sorted(HARNESSES))
    parser.add_argument("--out", default=str(ROOT / "fuzz" / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in [args.only] if args.only else list(HARNESSES):
        print(json.dumps(run_one(name, args.seconds, out)), flush=True)


if __name__ == "__main__":
    main()
