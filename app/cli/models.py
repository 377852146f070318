"""``imagerec models``: list, import and choose the default model (an admin's tool).

Custom models and the default live in the shared ``models`` bucket (S3 through
``app.storage``), so every worker sees them; ``--local DIR`` uses a directory instead, for
offline use. Model files are code: only admins should be able to run ``import``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from app.cli._quiet import quiet_native_stderr

if TYPE_CHECKING:
    from app.model.registry import ModelRegistry, ObjectStoreLike


def open_store(local: str | Path | None) -> ObjectStoreLike:
    """The shared S3 store from ``app.storage``, or a ``LocalStore`` on ``local``."""
    from app.model.registry import LocalStore

    if local:
        return LocalStore(Path(local))
    try:
        from app.storage import get_store
    except ImportError:  # storage not installed in this checkout: stay usable offline
        from app.settings import get_settings

        return LocalStore(get_settings().model_dir / "store")
    from app.cli.admin_storage import use_admin_storage

    use_admin_storage()  # model files are code: the admin user, not root (app.stack.iam)
    return get_store()


def _registry(ctx: click.Context) -> ModelRegistry:
    from app.model.registry import ModelRegistry

    return ModelRegistry(open_store(ctx.obj.get("local")))


@contextmanager
def _model_store_errors() -> Iterator[None]:
    """A refused model or reference, or an unreachable store: one clear line, exit 1."""
    from app.model.registry import ModelError

    try:
        yield
    except (ModelError, ValueError) as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - S3 down, bad credentials: one clear line
        _fail(f"model store unavailable: {exc}")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group()
@click.option("--local", type=click.Path(file_okay=False, path_type=Path),
              envvar="IMAGEREC_MODELS_LOCAL",
              help="Use this directory as the model store instead of S3.")
@click.pass_context
def models(ctx: click.Context, local: Path | None) -> None:
    """List, import and set the default classification model.

    \b
    Examples:
      imagerec models list
      imagerec models import flowers.keras --labels flowers.txt --name flowers
      imagerec models set-default flowers:v1
      imagerec models set-default efficientnet_lite0
    """
    ctx.ensure_object(dict)
    ctx.obj["local"] = local


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Show every model, its versions, availability and which one is the default."""

    with _model_store_errors():
        entries = _registry(ctx).list_models()
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    rows: list[tuple[Any, ...]] = [("", "NAME", "VERSION", "VARIANT", "ENGINES", "SOURCE",
                                    "AVAILABLE", "NOTE")]
    for e in entries:
        rows.append(("*" if e.is_default else "", e.name, e.version or "-", e.variant,
                     ",".join(e.engines), e.source, "yes" if e.available else "no", e.note))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        click.echo("  ".join(cells + [str(row[-1])]).rstrip())


@models.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--labels", "labels_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labels: one per line (class 0 first), or a JSON list of strings.")
@click.option("--name", required=True, help="Model name: [a-z0-9_.-].")
@click.option("--normalisation", default="tf", show_default=True,
              type=click.Choice(["lite", "tf", "torch", "caffe", "unit", "none"]),
              help="Input scaling the model was trained with (tf = [-1, 1]).")
@click.option("--input-size", type=int, default=None,
              help="Input side in pixels, for models that accept any size.")
@click.option("--output", type=click.Choice(["logits", "probs"]), default=None,
              help="What the model outputs (default: detected by a test inference).")
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None,
              help="A directory of typical input images (100-500): also build an int8 variant "
                   "calibrated on them; workers use it if it agrees with fp32.")
@click.pass_context
def import_(ctx: click.Context, file: Path, labels_path: Path, name: str, normalisation: str,
            input_size: int | None, output: str | None, calibration: Path | None) -> None:
    """Validate a Keras model FILE (.keras/.h5) and store it as the next version of NAME."""

    images = sorted(p for p in calibration.rglob("*") if p.is_file()) if calibration else None
    with _model_store_errors():
        with quiet_native_stderr():
            info = _registry(ctx).import_model(file, labels_path, name,
                                               normalisation=normalisation,
                                               input_size=input_size, output=output,
                                               calibration=images)
    click.echo(f"imported {info.ref}: {info.num_classes} classes, input {info.input_size}px, "
               f"{info.output}, normalisation {info.spec.normalisation}, "
               f"variants {', '.join(info.variants)}")


@models.command("set-default")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Load the model and run a test inference before switching.")
@click.option("--engine", default=None, metavar="ENGINE",
              help="Force this engine on every worker (litert-fp32, litert-int8, ...); "
                   "default: each worker's IMAGEREC_ENGINE (normally auto).")
@click.pass_context
def set_default(ctx: click.Context, ref: str, check: bool, engine: str | None) -> None:
    """Make NAME (newest version) or NAME:VERSION the default; workers switch within
    ``model_poll_s`` seconds, without a restart. A forced engine that fails the fp32 check
    is refused here (with --check) and by every worker, which keep serving what they had."""
    from app.model.classifier import Classifier
    from app.model.registry import parse_ref

    registry = _registry(ctx)
    name, version = parse_ref(ref)
    with _model_store_errors():
        if engine:
            from app.model.engine import canonical

            engine = canonical(engine)
        if check:
            with quiet_native_stderr():
                Classifier(registry, model=ref, engine=engine).close()
        registry.set_default(name, version, engine=engine)
    click.echo(f"default model: {name}" + (f":{version}" if version else " (newest version)")
               + (f", engine {engine}" if engine else ""))


@models.command("convert")
@click.argument("ref", metavar="[NAME[:VERSION]]", required=False)
@click.pass_context
def convert(ctx: click.Context, ref: str | None) -> None:
    """Convert/download a model and build its engine files now (default: the built-in
    default model: fp32 and calibrated int8 TFLite), so the first worker start does not pay
    for it, and show the engine table. Safe to repeat."""
    from app.model.classifier import Classifier
    from app.model.registry import BUILTINS, ModelError, ModelRegistry, parse_ref
    from app.settings import get_settings

    ref = ref or get_settings().default_model
    registry = (ModelRegistry() if parse_ref(ref)[0] in BUILTINS else _registry(ctx))
    try:
        with quiet_native_stderr():
            clf = Classifier(registry, model=ref)
        clf.close()
    except (ModelError, ValueError, OSError) as exc:
        _fail(str(exc))
        return
    for trial in clf.current.trials:
        t = trial.to_dict()
        click.echo(f"  engine {t['engine']:<14} {t['variant']:<5} {t['img_s']:>7.1f} img/s  "
                   f"top-1 {t['top1_agreement']:.3f}  top-5 {t['top5_overlap']:.3f}  "
                   + ("eligible" if t["eligible"] else f"not eligible: {t['note']}"))
    click.echo(f"ready: {clf.model.ref} ({clf.current.engine.name}) in {clf.model.path}")
