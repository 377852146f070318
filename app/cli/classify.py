"""``imagerec classify``: classify local image files offline, with no services running."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from app.cli._quiet import quiet_native_stderr
from app.imaging import ImageError, PayloadTooLarge
from app.settings import get_settings

if TYPE_CHECKING:
    from app.model.registry import ModelRegistry


def _read(path: Path, limit: int) -> bytes:
    """Read at most ``limit`` bytes: a huge file is refused without loading it."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"file is over the limit of {limit} bytes")
    return data


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", "-k", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="How many labels per image.")
@click.option("--min-score", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Drop labels scoring below this.")
@click.option("--model", "-m", "model_ref", default=None, metavar="NAME[:VERSION]",
              help="Model to use (default: the configured default_model).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--engine", default=None, metavar="NAME",
              help="auto, litert-fp32 or litert-int8 (default: settings' engine).")
@click.option("--verbose", "-v", is_flag=True, help="Keep TensorFlow's native log output.")
def classify(images: tuple[Path, ...], top_k: int, min_score: float, model_ref: str | None,
             as_json: bool, engine: str | None, verbose: bool) -> None:
    """Print the top labels of each IMAGE; exit 1 if any image failed.

    \b
    Examples:
      imagerec classify cat.jpg
      imagerec classify *.png --top-k 3 --json
      imagerec classify photo.jpg --model my_model:v2
    """
    from app.model.classifier import Classifier
    from app.model.registry import ModelError

    settings = get_settings()
    payloads: list[tuple[Path, bytes | None, str | None]] = []
    for path in images:
        try:
            payloads.append((path, _read(path, settings.max_upload_bytes), None))
        except ImageError as exc:
            payloads.append((path, None, f"{exc.message} ({exc.code})"))
        except OSError as exc:
            payloads.append((path, None, f"cannot read: {exc.strerror or exc}"))

    ref = model_ref or settings.default_model
    try:
        with quiet_native_stderr(not verbose):
            classifier = Classifier(_registry_for(ref), model=ref, engine=engine)
    except (ModelError, ValueError) as exc:  # EngineRefused is a ValueError
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)

    with classifier:
        readable = [data for _, data, _ in payloads if data is not None]
        results = iter(classifier.classify_bytes(readable, k=top_k, min_score=min_score))
    info = classifier.model
    failed = 0
    documents = []
    for path, data, read_error in payloads:
        result = next(results) if data is not None else None
        error = read_error or (f"{result.error.message} ({result.error.code})"
                               if result is not None and result.error else None)
        if error:
            failed += 1
            click.echo(f"error: {path}: {error}", err=True)
            documents.append({"file": str(path), "error": error})
            continue
        labels = result.labels if result is not None and result.labels is not None else []
        engine_name = classifier.current.engine.name
        documents.append({"file": str(path), "model": info.name, "model_version": info.version,
                          "variant": info.variant, "engine": engine_name, "labels": labels})
        if not as_json:
            click.echo(f"{path}  ({info.ref}, {engine_name})")
            for lab in labels:
                click.echo(f"  {lab['score']:6.3f}  {lab['label']}  [{lab['class_id']}]")
    if as_json:
        click.echo(json.dumps(documents, indent=2))
    sys.exit(1 if failed else 0)


def _registry_for(ref: str) -> ModelRegistry:
    """Built-ins need no store (stays offline); custom models come from the shared store."""
    from app.model.registry import BUILTINS, ModelRegistry, parse_ref

    if parse_ref(ref)[0] in BUILTINS:
        return ModelRegistry()
    from app.cli.models import open_store

    return ModelRegistry(open_store(os.environ.get("IMAGEREC_MODELS_LOCAL")))
