"""The model: weight conversion, real-photo accuracy, engine parity, registry and hot switch.

The EfficientNet-Lite0 conversion happens once per test run (session fixtures in
model_samples.py share one on-disk cache); each test here then takes well under a second,
except the custom-model ones, which build small Keras models.
"""

from __future__ import annotations

import asyncio
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from app.imaging import (
    ImageTooLarge,
    ImageTooSmall,
    UndecodableImage,
    UnsupportedFormat,
    prepare,
)
from app.model import efficientnet_lite0 as eff
from app.model.classifier import Classifier
from app.model.engine import TFEngine, TFLiteEngine, softmax, top_k
from app.model.registry import (
    LocalStore,
    ModelError,
    ModelNotFound,
    ModelRegistry,
    ModelUnavailable,
)
from app.model.torch_legacy import TorchFileError, load_state_dict

try:
    from tests.unit import model_samples as s
    from tests.unit.model_samples import classifier, model_cache, registry  # noqa: F401
except ImportError:  # tests/unit is not a package: pytest put its directory on sys.path
    import model_samples as s  # type: ignore[no-redef]
    from model_samples import classifier, model_cache, registry  # type: ignore[no-redef] # noqa: F401

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


def _top1(clf: Classifier, data: bytes) -> tuple[int, float]:
    result = clf.classify_bytes([data], k=1)[0]
    assert result.error is None, result.error
    assert result.labels is not None
    return result.labels[0]["class_id"], result.labels[0]["score"]


# --- weights file and conversion -----------------------------------------------------------------


def test_torch_reader_reads_all_tensors_without_torch() -> None:
    state = load_state_dict(eff.weights_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert np.isfinite(state["_bn1.running_var"]).all() and (state["_bn1.running_var"] > 0).all()


def test_torch_reader_refuses_arbitrary_globals(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            import os

            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, fh, protocol=2)
        pickle.dump({"w": Evil()}, fh, protocol=2)
    with pytest.raises(TorchFileError, match="refusing"):
        load_state_dict(path)


def test_conversion_is_cached_and_checked(model_cache: Path, registry: ModelRegistry,
                                          tmp_path: Path) -> None:
    info = registry.get("efficientnet_lite0")
    assert info.keras_path == model_cache / "efficientnet_lite0" / eff.VERSION / "model.keras"
    assert info.keras_path.is_file() and info.version.endswith(eff.WEIGHTS_SHA256[:12])
    mtime = info.keras_path.stat().st_mtime_ns
    assert registry.get("efficientnet_lite0").keras_path.stat().st_mtime_ns == mtime
    bad = tmp_path / "weights.pth"
    data = bytearray(eff.weights_path().read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of a weight tensor
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        eff.ensure_converted(tmp_path / "cache", weights=bad)


# --- accuracy on real photos -------------------------------------------------------------------


def test_chelsea_is_a_cat(classifier: Classifier) -> None:
    result = classifier.classify_bytes([s.jpeg("chelsea")], k=5)[0]
    assert result.labels is not None
    assert result.labels[0]["class_id"] in s.CAT_CLASSES
    top3 = {lab["class_id"] for lab in result.labels[:3]}
    assert top3 == s.CAT_CLASSES  # tiger cat, Egyptian cat and tabby, in some order
    assert result.model == "efficientnet_lite0" and result.model_version == eff.VERSION


def test_coffee_is_espresso(classifier: Classifier) -> None:
    class_id, score = _top1(classifier, s.jpeg("coffee"))
    assert class_id == s.ESPRESSO and score > 0.9


def test_labels_are_first_synonym_with_class_id(classifier: Classifier) -> None:
    info = classifier.model
    assert info.labels[281] == "tabby" and info.synonyms is not None
    assert info.synonyms[281] == ("tabby", "tabby cat")
    assert info.labels[967] == "espresso" and len(info.labels) == 1000


def test_rotated_png_and_gif_inputs_still_classify(classifier: Classifier) -> None:
    assert _top1(classifier, s.exif_rotated_jpeg("chelsea"))[0] in s.CAT_CLASSES
    assert _top1(classifier, s.cmyk_jpeg("coffee"))[0] == s.ESPRESSO
    assert _top1(classifier, s.png16_rgb(s.photo("coffee")))[0] == s.ESPRESSO
    assert _top1(classifier, s.animated_gif("coffee", "chelsea"))[0] == s.ESPRESSO


def test_bad_inputs_give_typed_errors_and_good_ones_still_classify(
        classifier: Classifier) -> None:
    from PIL import Image

    chelsea = s.jpeg("chelsea")
    items = [
        chelsea[: len(chelsea) // 2],
        b"",
        b"just some text, saved as photo.jpg",
        s.png_header_only(30000, 30000),
        s.encode(Image.new("RGB", (1, 1)), "PNG"),
        s.jpeg("coffee"),
    ]
    results = classifier.classify_bytes(items)
    kinds = [type(r.error) for r in results]
    assert kinds == [UndecodableImage, UndecodableImage, UnsupportedFormat, ImageTooLarge,
                     ImageTooSmall, type(None)]
    assert [r.error.http_status for r in results[:5]] == [422, 422, 415, 422, 422]
    assert results[5].labels is not None and results[5].labels[0]["class_id"] == s.ESPRESSO
    assert results[0].to_dict()["error"]["code"] == "undecodable"


# --- engines -----------------------------------------------------------------------------------


def test_tflite_logits_match_keras(classifier: Classifier) -> None:
    engine = classifier.current.engine
    assert isinstance(engine, TFLiteEngine)
    batch = np.stack([prepare(s.jpeg(name), eff.PREPROCESS)[1] for name in PHOTOS])
    reference = TFEngine.from_path(classifier.model.keras_path).predict(batch)
    logits = engine.predict(batch)
    assert logits.shape == (4, 1000)
    assert np.abs(logits - reference).max() < 1e-3
    for row, ref_row in zip(logits, reference, strict=True):
        assert list(np.argsort(-row)[:5]) == list(np.argsort(-ref_row)[:5])


def test_top_k_and_softmax() -> None:
    probs = softmax(np.array([[1.0, 3.0, 2.0, 0.0]]))[0]
    assert probs.sum() == pytest.approx(1.0) and probs.argmax() == 1
    labels = ["a", "b", "c", "d"]
    out = top_k(probs, 3, labels)
    assert [o["label"] for o in out] == ["b", "c", "a"]
    assert [o["class_id"] for o in out] == [1, 2, 0]
    assert top_k(probs, 10, labels, min_score=0.2) == out[:2]
    assert top_k(probs, 0, labels) == []


async def test_async_batch_records_its_model(classifier: Classifier) -> None:
    arrays = [prepare(s.jpeg(name), classifier.spec)[1] for name in ("coffee", "chelsea")]
    preds = await classifier.classify_arrays(arrays)
    assert len(preds) == 2 and preds.model.ref == classifier.model.ref
    assert preds.labels(1)[0][0]["class_id"] == s.ESPRESSO
    assert preds.labels(1)[1][0]["class_id"] in s.CAT_CLASSES


# --- registry: custom models, default switching ---------------------------------------------


def _tiny_model(n_out: int, softmax_out: bool = False, seed: int = 0):  # noqa: ANN202
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=2)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(n_out, activation="softmax" if softmax_out else None)(x)
    return keras.Model(inputs, outputs)


@pytest.fixture
def custom_registry(tmp_path: Path, model_cache: Path) -> ModelRegistry:
    """A fresh store, sharing the converted built-in cache (conversion stays once per run)."""
    return ModelRegistry(LocalStore(tmp_path / "store"), cache_dir=model_cache)


@pytest.fixture
def tiny_files(tmp_path: Path) -> dict[str, Path]:
    model3 = tmp_path / "tiny3.keras"
    _tiny_model(3).save(model3)
    labels3 = tmp_path / "labels3.txt"
    labels3.write_text("red\ngreen\nblue\n")
    labels4 = tmp_path / "labels4.json"
    labels4.write_text(json.dumps(["red", "green", "blue", "violet"]))
    return {"model3": model3, "labels3": labels3, "labels4": labels4}


def test_import_refuses_label_count_mismatch(custom_registry: ModelRegistry,
                                             tiny_files: dict[str, Path]) -> None:
    with pytest.raises(ModelError) as info:
        custom_registry.import_model(tiny_files["model3"], tiny_files["labels4"], "colours")
    message = str(info.value)
    assert "3" in message and "4 labels" in message and "does not match" in message
    assert not [e for e in custom_registry.list_models() if e.name == "colours"]


def test_import_validates_files(custom_registry: ModelRegistry, tiny_files: dict[str, Path],
                                tmp_path: Path) -> None:
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a loadable Keras model"):
        custom_registry.import_model(junk, tiny_files["labels3"], "colours")
    with pytest.raises(ModelError, match="built-in"):
        custom_registry.import_model(tiny_files["model3"], tiny_files["labels3"],
                                     "efficientnet_lite0")


def test_import_versions_list_and_h5(custom_registry: ModelRegistry,
                                     tiny_files: dict[str, Path], tmp_path: Path) -> None:
    first = custom_registry.import_model(tiny_files["model3"], tiny_files["labels3"], "colours",
                                         normalisation="unit")
    assert (first.version, first.output, first.input_size) == ("v1", "logits", 32)
    assert first.labels == ("red", "green", "blue")
    again = custom_registry.import_model(tiny_files["model3"], tiny_files["labels3"], "colours",
                                         normalisation="unit")
    assert again.version == "v1"  # same bytes and labels: no new version
    h5 = tmp_path / "tiny3b.h5"
    _tiny_model(3, softmax_out=True, seed=1).save(h5)
    second = custom_registry.import_model(h5, tiny_files["labels3"], "colours")
    assert (second.version, second.output) == ("v2", "probs")
    listed = {(e.name, e.version) for e in custom_registry.list_models()}
    assert {("colours", "v1"), ("colours", "v2"), ("efficientnet_lite0", eff.VERSION)} <= listed
    assert custom_registry.get("colours").version == "v2"


def test_set_default_switches_workers_without_restart(custom_registry: ModelRegistry,
                                                      tiny_files: dict[str, Path]) -> None:
    clf = Classifier(custom_registry)
    try:
        assert clf.model.name == "efficientnet_lite0"
        assert clf.check_default() is False
        custom_registry.import_model(tiny_files["model3"], tiny_files["labels3"], "colours")
        with pytest.raises(ModelNotFound):
            custom_registry.set_default("colours", "v9")
        custom_registry.set_default("colours")
        old = clf.current
        assert clf.check_default() is True
        assert clf.model.ref == "colours:v1"
        result = clf.classify_bytes([s.jpeg("coffee")], k=3)[0]
        assert result.model == "colours" and {lab["label"] for lab in result.labels or []} == {
            "red", "green", "blue"}
        # work submitted with the old model still runs on it and says so
        arrays = [prepare(s.jpeg("coffee"), old.spec)[1]]
        preds = clf.classify_arrays_sync(arrays, model=old)
        assert preds.model.name == "efficientnet_lite0"
        assert preds.labels(1)[0][0]["class_id"] == s.ESPRESSO
        default = json.loads(custom_registry.store.get_bytes("models", "_default.json"))
        assert default["name"] == "colours"
        assert [e.name for e in custom_registry.list_models() if e.is_default] == ["colours"]
    finally:
        clf.close()


def test_failing_new_default_leaves_old_model_serving(
        custom_registry: ModelRegistry, tiny_files: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    clf = Classifier(custom_registry)
    try:
        info = custom_registry.import_model(tiny_files["model3"], tiny_files["labels3"],
                                            "broken")
        # the stored model gets corrupted after import (bad upload, bit rot, tampering)
        key = f"custom/broken/{info.version}/model.keras"
        custom_registry.store.put_bytes("models", key, b"garbage")
        if info.path is not None:  # and no worker has it cached yet
            (info.path / "model.keras").unlink()
        custom_registry.set_default("broken")
        with caplog.at_level("ERROR"):
            assert clf.check_default() is False
        assert "failed to load" in caplog.text and "still serving" in caplog.text
        assert clf.model.name == "efficientnet_lite0"
        assert _top1(clf, s.jpeg("coffee"))[0] == s.ESPRESSO
        # an unreachable store is not a reason to drop the current model either
        custom_registry.store = _DownStore()
        assert clf.check_default() is False and clf.model.name == "efficientnet_lite0"
        # nor to refuse to start: the configured default serves until the store is back
        with Classifier(custom_registry) as fresh:
            assert fresh.model.name == "efficientnet_lite0"
    finally:
        clf.close()


class _DownStore:
    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        raise ConnectionError("store down")

    def get_bytes(self, bucket: str, key: str) -> bytes:
        raise ConnectionError("store down")

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        raise ConnectionError("store down")


async def test_maybe_reload_runs_off_the_event_loop(custom_registry: ModelRegistry,
                                                    tiny_files: dict[str, Path]) -> None:
    clf = Classifier(custom_registry)
    try:
        custom_registry.import_model(tiny_files["model3"], tiny_files["labels3"], "colours")
        custom_registry.set_default("colours", "v1")
        real_get = custom_registry.get

        def slow_get(*args: object, **kwargs: object):  # noqa: ANN202 - a load that takes a while
            import time

            time.sleep(0.3)  # on the event loop, this would stop the ticker
            return real_get(*args, **kwargs)

        custom_registry.get = slow_get  # type: ignore[method-assign]
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        switched = await clf.maybe_reload()
        task.cancel()
        assert switched and clf.model.ref == "colours:v1"
        assert ticks > 3  # the loop kept running while the model loaded
    finally:
        clf.close()


def test_mobilenet_v2_only_with_local_weights(custom_registry: ModelRegistry,
                                              monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    entry = {e.name: e for e in custom_registry.list_models()}["mobilenet_v2"]
    if entry.available:
        pytest.skip("real MobileNetV2 weights exist on this machine")
    with pytest.raises(ModelUnavailable, match="never downloaded"):
        custom_registry.get("mobilenet_v2")

    import keras

    weights = tmp_path / "mnv2.weights.h5"
    keras.applications.MobileNetV2(weights=None).save_weights(weights)
    monkeypatch.setenv("IMAGEREC_MOBILENET_V2_WEIGHTS", str(weights))
    get_settings.cache_clear()
    try:
        info = custom_registry.get("mobilenet_v2")
        assert (info.output, info.spec.normalisation, info.num_classes) == ("probs", "tf", 1000)
        assert info.keras_path.is_file()
    finally:
        monkeypatch.delenv("IMAGEREC_MOBILENET_V2_WEIGHTS")
        get_settings.cache_clear()
