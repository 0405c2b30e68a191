"""Which globals a pickle names, read without unpickling (``pickletools.genops`` only parses
opcodes). Used to tell a whole pickled ``nn.Module`` from a hostile payload once the
weights-only loader has refused a file."""
from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

_STRINGS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING")
# a file naming any of these is treated as hostile, whatever else it holds
_DANGEROUS_MODULES = ("os", "posix", "nt", "subprocess", "builtins", "__builtin__", "sys", "shutil", "socket",
                      "importlib", "runpy", "pty", "code", "webbrowser", "ctypes", "marshal", "pickle", "types")


def pickle_globals(path: Path) -> set[str]:
    """'module.name' of every GLOBAL / STACK_GLOBAL in the file's pickles: ``data.pkl`` of a
    zip checkpoint, or the pickles at the start of a legacy one. A damaged file gives what
    could be read."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs = [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
        else:
            blobs = [path.read_bytes()]
    except Exception:  # a damaged zip raises BadZipFile, UnicodeDecodeError, zlib.error, ...
        return set()
    found: set[str] = set()
    for blob in blobs:
        stream = io.BytesIO(blob)
        while stream.tell() < len(blob):  # a legacy file is several pickles, then raw storage bytes
            try:
                _globals_of_one(pickletools.genops(stream), found)
            except Exception:
                break
    return found


def _globals_of_one(ops, found: set[str]) -> None:
    recent: list[str] = []
    for op, arg, _ in ops:
        if op.name in ("GLOBAL", "INST"):
            found.add(str(arg).replace(" ", "."))
        elif op.name in _STRINGS:
            recent = (recent + [str(arg)])[-2:]
        elif op.name == "STACK_GLOBAL" and len(recent) == 2:
            found.add(".".join(recent))


# plain containers a pickled module names (protocol 2 writes __builtin__.set for its buffer sets)
_HARMLESS_BUILTINS = {"set", "frozenset", "list", "dict", "tuple", "int", "float", "bool", "str", "bytes",
                      "bytearray", "complex", "slice", "range"}


def is_whole_module(names: set[str]) -> bool:
    """A pickled ``torch.nn.Module`` (``torch.save(model)``) and nothing that looks like an attack."""
    def dangerous(name: str) -> bool:
        module, _, attr = name.rpartition(".")
        if module in ("builtins", "__builtin__") and attr in _HARMLESS_BUILTINS:
            return False
        return module.split(".", 1)[0] in _DANGEROUS_MODULES

    return any(n.startswith("torch.nn.modules.") for n in names) and not any(dangerous(n) for n in names)
