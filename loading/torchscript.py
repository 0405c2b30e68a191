"""The tensors of a TorchScript archive (``torch.jit.save``), read without running it.

A TorchScript ``.pt`` is a zip: ``code/`` holds the model's code, ``data.pkl`` a pickle of the
module tree whose classes are named ``__torch__.…``, and ``data/N`` the raw tensor bytes. We
unpickle ``data.pkl`` with an allowlist: ``__torch__`` classes become inert attribute holders,
tensors are rebuilt from their bytes, and any other global is refused, so nothing in the file
runs. The module tree's tensors, named by attribute path (``body.0.weight``), are the state
dict that ``torch.jit.load(...).state_dict()`` would give.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import torch

_TENSOR_BUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter")}
# the legacy storage class names the pickle uses for each dtype (touching torch.FloatStorage itself warns)
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def is_torchscript(path: Path) -> bool:
    """A zip whose top folder has ``data.pkl`` and ``code/`` (a plain ``torch.save`` zip has no code)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except Exception:  # damaged: torch.load will say what is wrong
        return False
    return any(n.endswith("/data.pkl") for n in names) and any("/code/" in n for n in names)


class _ScriptObject:
    """Stands in for a ``__torch__`` class: keeps the pickled attributes, runs nothing."""

    def __init__(self, *args):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if (module, name) in _TENSOR_BUILDERS:
            return _rebuild_tensor if name == "_rebuild_tensor_v2" else _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed in a TorchScript archive's data")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        raw = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=storage_type.dtype, _internal=True)


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


def read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """{attribute path: tensor} of the archive's module tree. Raises pickle.UnpicklingError
    for a global outside the allowlist and zipfile/KeyError for a damaged archive."""
    with zipfile.ZipFile(path) as archive:
        data_name = next(n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
        prefix = data_name.split("/", 1)[0]
        root = _Unpickler(archive.read(data_name), archive, prefix).load()
    state: dict[str, torch.Tensor] = {}
    _collect(root, "", state)
    return state


def _collect(obj, prefix: str, state: dict) -> None:
    attributes = obj.state if isinstance(obj, _ScriptObject) else obj if isinstance(obj, dict) else {}
    for name, value in attributes.items():
        if isinstance(value, torch.Tensor):
            state[prefix + str(name)] = value
        elif isinstance(value, (_ScriptObject, dict)):
            _collect(value, f"{prefix}{name}.", state)
