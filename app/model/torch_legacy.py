"""Read a legacy (pre-1.6) ``torch.save`` file into numpy arrays, without torch.

Why this exists: the default model's weights ship as a PyTorch checkpoint, and torch is a
multi-GB dependency we refuse to take for one file. The legacy format is simple: a pickled
magic number, protocol version and system info, then the pickled object (whose tensors point
to storages by persistent id), then a pickled list of storage keys, then each storage's raw
bytes prefixed by its element count. The unpickler below resolves only the handful of globals
a state dict needs, so a hostile file cannot make it import or call anything else.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001

# torch storage class name -> little-endian numpy dtype of its elements
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class TorchFileError(ValueError):
    """The file is not a legacy torch checkpoint we can read safely."""


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass
class _Storage:
    key: str
    dtype: str
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    """A tensor whose storage bytes come after the pickles; materialised at the end."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        base = self.storage.data
        if base is None:
            raise TorchFileError(f"storage {self.storage.key} has no data")
        if not self.shape:
            return base[self.offset].copy()
        itemsize = base.dtype.itemsize
        if len(self.shape) != len(self.stride):
            raise TorchFileError(f"tensor shape/stride mismatch in storage {self.storage.key}")
        span = sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        if self.offset + 1 + span > base.size or min(self.stride) < 0:
            raise TorchFileError(f"tensor view out of bounds of storage {self.storage.key}")
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(
    storage: _Storage,
    offset: int,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


def _rebuild_tensor(
    storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]
) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only what a state dict of tensors needs; everything else is refused."""

    def __init__(self, fh: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(fh)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise TorchFileError(f"refusing to unpickle global {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise TorchFileError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError("persistent id without a known storage type")
        if len(pid) > 5 and pid[5] is not None:
            raise TorchFileError("storage views are not supported")
        if key not in self._storages:
            self._storages[key] = _Storage(key, storage_type.dtype, numel)
        return self._storages[key]


class _PlainUnpickler(pickle.Unpickler):
    """For the header pickles (ints, dicts, lists of str): no globals at all."""

    def find_class(self, module: str, name: str) -> Any:
        raise TorchFileError(f"unexpected global {module}.{name} in header")


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{name: array}`` for every tensor in a legacy torch checkpoint at ``path``."""
    with open(path, "rb") as fh:
        if _PlainUnpickler(fh).load() != _MAGIC:
            raise TorchFileError(f"{path}: not a legacy torch.save file (bad magic number)")
        if _PlainUnpickler(fh).load() != _PROTOCOL:
            raise TorchFileError(f"{path}: unsupported torch protocol version")
        sys_info = _PlainUnpickler(fh).load()
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise TorchFileError(f"{path}: only little-endian checkpoints are supported")

        storages: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(fh, storages).load()
        keys = _PlainUnpickler(fh).load()
        if not isinstance(keys, list):
            raise TorchFileError(f"{path}: storage key list missing")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise TorchFileError(f"{path}: data for unknown storage {key}")
            (numel,) = struct.unpack("<q", _read_exact(fh, 8))
            if numel != storage.numel:
                raise TorchFileError(f"{path}: storage {key} size {numel} != {storage.numel}")
            dtype = np.dtype(storage.dtype)
            raw = _read_exact(fh, numel * dtype.itemsize)
            storage.data = np.frombuffer(raw, dtype=dtype)

    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path}: top-level object is {type(obj).__name__}, not a dict")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if isinstance(value, _TensorRef):
            out[str(name)] = value.materialise()
    return out


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise TorchFileError("file is truncated")
    return data
