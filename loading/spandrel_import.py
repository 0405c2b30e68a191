"""Import spandrel without importing torchvision, where nothing has imported torchvision yet.

spandrel imports every architecture it knows at once, and two of them import names from
``torchvision.transforms.functional`` (LaMa: ``rotate`` and ``InterpolationMode``;
RestoreFormer: ``normalize``; the same in spandrel 0.3.4 and 0.4). torchvision in turn imports
``torch._dynamo``: ~165 MB of resident memory in the CLI, for code that runs only inside
those two networks' forward. Here those names are bound to stand-ins that import the real
torchvision on first use, and the stand-in modules are gone again once spandrel is imported,
so any later ``import torchvision`` is the real one. Inside a host (ComfyUI, the WebUI)
torchvision is already loaded and this is a plain import; if spandrel's imports ever change,
the stand-ins are dropped and spandrel is imported the plain way.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_STAND_IN_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_NAMES_SPANDREL_IMPORTS = ("InterpolationMode", "rotate", "normalize")


class _OnFirstUse:
    """Stands for ``torchvision.transforms.functional.<name>`` until it is called or read."""

    def __init__(self, name: str):
        self._name = name

    def _real(self):
        return getattr(importlib.import_module("torchvision.transforms.functional"), self._name)

    def __call__(self, *args, **kwargs):
        return self._real()(*args, **kwargs)

    def __getattr__(self, attr: str):
        return getattr(self._real(), attr)


def import_spandrel() -> None:
    if "spandrel" in sys.modules or "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        import spandrel  # noqa: F401
        return
    stand_ins = {name: types.ModuleType(name) for name in _STAND_IN_MODULES}
    functional = stand_ins["torchvision.transforms.functional"]
    for name in _NAMES_SPANDREL_IMPORTS:
        setattr(functional, name, _OnFirstUse(name))
    stand_ins["torchvision"].transforms = stand_ins["torchvision.transforms"]
    stand_ins["torchvision.transforms"].functional = functional
    sys.modules.update(stand_ins)
    try:
        import spandrel  # noqa: F401
    except Exception:  # spandrel wants more of torchvision than these names: the plain way
        for name in [n for n in sys.modules if n == "spandrel" or n.startswith("spandrel.")]:
            del sys.modules[name]
        _drop(stand_ins)
        import spandrel  # noqa: F401
    finally:
        _drop(stand_ins)


def _drop(stand_ins: dict) -> None:
    for name, module in stand_ins.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]


import_spandrel()
# what our modules use, imported from here so that this module runs first whatever imports first
from spandrel import Architecture, ImageModelDescriptor, ModelLoader, SizeRequirements  # noqa: E402

__all__ = ["Architecture", "ImageModelDescriptor", "ModelLoader", "SizeRequirements", "import_spandrel"]
