"""Engines: the int8 variant answers like fp32, auto refuses an engine whose answers differ,
engines switch without a restart, and a serving process never loads TensorFlow.

Uses the real converted model (once per test run, shared with test_model.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.imaging import prepare
from app.model import convert
from app.model import efficientnet_lite0 as eff
from app.model.classifier import Classifier
from app.model.engine import Engine, LiteRTEngine
from app.model.registry import (
    EFFICIENTNET_INT8_VERSION,
    LocalStore,
    ModelNotFound,
    ModelRegistry,
)
from app.model.select import EngineRefused, agreement

try:
    from tests.unit import model_samples as s
    from tests.unit.model_samples import model_cache, registry  # noqa: F401
except ImportError:  # tests/unit is not a package: pytest put its directory on sys.path
    import model_samples as s  # type: ignore[no-redef]
    from model_samples import model_cache, registry  # type: ignore[no-redef] # noqa: F401

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
REPO = Path(__file__).resolve().parents[2]


class Corrupted(Engine):
    """A test double: the int8 engine with its logits perturbed, and pretending to be fast."""

    name = "corrupted"
    variant = "int8"

    def __init__(self, inner: Engine, noise: float) -> None:
        super().__init__(inner.output)
        self.inner = inner
        self.noise = noise
        self.rng = np.random.default_rng(0)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self.inner.predict(batch)
        return out + self.rng.normal(0, self.noise * out.std(), out.shape).astype(np.float32)


def _corrupted(registry: ModelRegistry, noise: float = 0.6) -> dict:
    path = registry.get("efficientnet_lite0").variant_path("int8")
    return {"corrupted": ("int8", lambda: Corrupted(LiteRTEngine(path, variant="int8"),
                                                    noise))}


@pytest.fixture
def fresh_registry(tmp_path: Path, model_cache: Path) -> ModelRegistry:
    """A fresh store (its own default), sharing the converted built-in cache."""
    return ModelRegistry(LocalStore(tmp_path / "store"), cache_dir=model_cache)


def test_int8_gives_the_fp32_top1_on_the_sample_photos(registry: ModelRegistry) -> None:
    info = registry.get("efficientnet_lite0")
    assert info.variant_path("int8").is_file() and info.variant_path("fp32").is_file()
    assert info.variant_path("int8").stat().st_size < info.variant_path("fp32").stat().st_size / 3
    batch = np.stack([prepare(s.jpeg(name), eff.PREPROCESS)[1] for name in PHOTOS])
    fp32 = LiteRTEngine(info.variant_path("fp32"), variant="fp32").predict(batch)
    int8 = LiteRTEngine(info.variant_path("int8"), variant="int8").predict(batch)
    assert list(int8.argmax(1)) == list(fp32.argmax(1))
    assert int8.argmax(1)[1] == s.ESPRESSO and int8.argmax(1)[0] in s.CAT_CLASSES
    assert 0 < np.abs(int8 - fp32).max() < 5  # quantised (not the same file), but close


def test_results_name_the_variant_and_engine(fresh_registry: ModelRegistry) -> None:
    with Classifier(fresh_registry, engine="litert-int8") as clf:
        result = clf.classify_bytes([s.jpeg("coffee")], k=1)[0]
        assert result.labels is not None and result.labels[0]["class_id"] == s.ESPRESSO
        assert (result.model_version, result.variant, result.engine) == (
            EFFICIENTNET_INT8_VERSION, "int8", "litert-int8")
        assert clf.current.model_dict()["engine"] == "litert-int8"
    with Classifier(fresh_registry, engine="litert-fp32") as clf:
        result = clf.classify_bytes([s.jpeg("coffee")], k=1)[0]
        assert (result.model_version, result.variant, result.engine) == (
            eff.VERSION, "fp32", "litert-fp32")


def test_auto_times_checks_and_picks_an_eligible_engine(fresh_registry: ModelRegistry) -> None:
    with Classifier(fresh_registry, engine="auto") as clf:
        trials = {t.engine: t for t in clf.current.trials}
        assert set(trials) == {"litert-fp32", "litert-int8"}
        assert all(t.img_s > 0 for t in trials.values())
        assert trials["litert-int8"].eligible, trials["litert-int8"]
        chosen = trials[clf.current.engine.name]
        assert chosen.eligible
        assert chosen.img_s == max(t.img_s for t in trials.values() if t.eligible)


def test_auto_refuses_an_engine_whose_answers_are_corrupted(
        fresh_registry: ModelRegistry) -> None:
    extra = _corrupted(fresh_registry)
    with Classifier(fresh_registry, engine="auto", extra_engines=extra) as clf:
        trials = {t.engine: t for t in clf.current.trials}
        assert not trials["corrupted"].eligible and "differ" in trials["corrupted"].note
        assert trials["corrupted"].top1 < 0.97 or trials["corrupted"].top5 < 0.90
        assert clf.current.engine.name != "corrupted"
    with pytest.raises(EngineRefused, match="corrupted refused"):
        Classifier(fresh_registry, engine="corrupted", extra_engines=extra)


def test_mild_noise_is_not_refused(fresh_registry: ModelRegistry) -> None:
    """The bar is not so tight that any numeric difference fails (the check can pass)."""
    extra = _corrupted(fresh_registry, noise=0.02)
    with Classifier(fresh_registry, engine="corrupted", extra_engines=extra) as clf:
        assert clf.current.engine.name == "corrupted"


def test_agreement_measures() -> None:
    ref = np.array([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert agreement(ref, ref) == (1.0, 1.0)
    swapped = ref[:, ::-1].copy()
    top1, top5 = agreement(ref, swapped)
    assert top1 == 0.0 and top5 == pytest.approx(4 / 5)
    assert agreement(ref, np.full_like(ref, np.nan)) == (0.0, 0.0)
    three = np.array([[3.0, 2, 1], [1, 2, 3]])  # fewer classes than a top-5
    assert agreement(three, three[:, ::-1].copy()) == (0.0, 1.0)


def test_switching_engines_keeps_serving_without_restart(
        fresh_registry: ModelRegistry, caplog: pytest.LogCaptureFixture) -> None:
    extra = _corrupted(fresh_registry)
    with Classifier(fresh_registry, extra_engines=extra) as clf:
        fresh_registry.set_default("efficientnet_lite0", engine="litert-fp32")
        assert clf.check_default() is True
        assert clf.current.engine.name == "litert-fp32"
        fresh_registry.set_default("efficientnet_lite0", engine="litert-int8")
        old = clf.current
        assert clf.check_default() is True
        assert clf.current.engine.name == "litert-int8" and clf.model.variant == "int8"
        # a batch that started on the old engine finishes on it and says so
        arrays = [prepare(s.jpeg("coffee"), old.spec)[1]]
        preds = clf.classify_arrays_sync(arrays, model=old)
        assert preds.model.variant == "fp32" and preds.labels(1)[0][0]["class_id"] == s.ESPRESSO
        # a forced engine that fails the fp32 check is refused; int8 keeps serving
        fresh_registry.set_default("efficientnet_lite0", engine="corrupted")
        with caplog.at_level("ERROR"):
            assert clf.check_default() is False
        assert "failed to load" in caplog.text and "corrupted refused" in caplog.text
        assert clf.current.engine.name == "litert-int8"
        result = clf.classify_bytes([s.jpeg("chelsea")], k=1)[0]
        assert result.labels is not None and result.labels[0]["class_id"] in s.CAT_CLASSES
        assert result.engine == "litert-int8"


def test_a_serving_process_loads_no_tensorflow(model_cache: Path) -> None:
    """What a worker does (registry, auto engine choice, classify) in a fresh interpreter,
    then: is any TensorFlow module or library in the process?"""
    chelsea = model_cache / "chelsea.jpg"
    chelsea.write_bytes(s.jpeg("chelsea"))
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import app.worker  # the worker's own module and everything it imports
        from app.model.classifier import Classifier
        from app.model.registry import LocalStore, ModelRegistry
        cache = Path({str(model_cache)!r})
        reg = ModelRegistry(LocalStore(cache / "store-tf-check"), cache_dir=cache)
        with Classifier(reg) as clf:
            res = clf.classify_bytes([Path({str(chelsea)!r}).read_bytes()], k=1)[0]
        maps = Path("/proc/self/maps").read_text()
        print(json.dumps({{"engine": res.engine, "top1": res.labels[0]["class_id"],
                          "modules": sorted(m for m in sys.modules
                                            if m.split(".")[0] in ("tensorflow", "keras")),
                          "libs": sorted({{l.split()[-1] for l in maps.splitlines()
                                          if "tensorflow" in l}})}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["top1"] in s.CAT_CLASSES and report["engine"].startswith("litert-")
    assert report["modules"] == [], report["modules"][:10]
    assert report["libs"] == [], report["libs"]


def test_custom_import_with_calibration_gets_an_int8_variant(
        fresh_registry: ModelRegistry, tmp_path: Path) -> None:
    """Engine files are built at import and stored; calibration images add int8."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu6")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    path = tmp_path / "small.keras"
    model.save(path)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, name in enumerate(PHOTOS * 5):
        (calib / f"{i}.jpg").write_bytes(s.jpeg(name, quality=70 + i))
    (calib / "notes.txt").write_text("not an image: skipped")
    info = fresh_registry.import_model(path, labels, "small", normalisation="lite",
                                       calibration=sorted(calib.iterdir()))
    assert info.variants == ("fp32", "int8")
    keys = set(fresh_registry.store.list_keys("models", "custom/small/v1/"))
    assert {"custom/small/v1/model.tflite", "custom/small/v1/model.int8.tflite"} <= keys
    # a worker with an empty cache gets the engine files from the store, not by converting
    shutil.rmtree(info.path)
    again = fresh_registry.get("small", "v1")
    assert again.variant_path("int8").is_file() and again.variant_path("fp32").is_file()
    with Classifier(fresh_registry, model="small:v1", engine="litert-fp32") as clf:
        result = clf.classify_bytes([s.jpeg("coffee")], k=3)[0]
        assert {lab["label"] for lab in result.labels or []} == {"a", "b", "c"}
    # the int8 variant's own version names it, and can be pinned like any version
    current = convert.int8_version("v1")
    assert current == f"v1-int8r{convert.INT8_REVISION}"
    int8 = fresh_registry.get("small", current)
    assert (int8.variant, int8.variants, int8.version) == ("int8", ("int8",), current)
    fresh_registry.set_default("small", current)
    # a file from before the recipe record (revision 1) keeps its own label, and asking for
    # a revision that is not the stored one is "not found", never another recipe's answers
    assert "custom/small/v1/model.int8.json" in keys
    old = tmp_path / "imported-before-the-record"
    old.mkdir()
    shutil.copy(int8.variant_path("int8"), old / convert.INT8_NAME)
    assert replace(again, path=old).as_variant("int8").version == "v1-int8r1"
    with pytest.raises(ModelNotFound):
        fresh_registry.get("small", "v1-int8r99")


class _Stats:
    """Stands in for TensorFlow's QuantizationDebugger: only its CSV dump is read."""

    def __init__(self, rows: list[tuple[str, float, float]]) -> None:
        self.rows = rows

    def layer_statistics_dump(self, buf) -> None:
        buf.write("op_name,tensor_name,scale,mean_squared_error\n")
        for name, scale, mse in self.rows:
            buf.write(f"CONV_2D,{name},{scale},{mse}\n")


def test_only_layers_far_above_their_rounding_noise_stay_float() -> None:
    noise = 0.1 ** 2 / 12  # an ideal int8 layer of output scale 0.1
    stats = _Stats([("good", 0.1, 3 * noise), ("stem", 0.1, 60 * noise),
                    ("edge", 0.1, convert.FLOAT_LAYER_RATIO * noise * 0.99),
                    ("unquantised", 0.0, 5.0)])
    assert convert._outlier_layers(stats) == ["stem"]
