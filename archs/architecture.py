"""What every architecture package provides.

An architecture package (``archs/rrdbnet``, ``archs/srvgg``) holds the plain network, its key
layouts and detection (``keys.py``), its torch inference plan (``inference.py``) and, in
``__init__.py``, one ``OurArchitecture``: build, tags, overlap and cost profile. Nothing here
imports the rooms above (loading, runtimes, the engine, hosts); they reach a network through
this interface.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import ModelLoadError


@dataclass
class ModelSpec:
    architecture: str  # an OurArchitecture's name
    key_format: str  # "basicsr", "esrgan-old", "bsrgan", "srvgg" (or "ncnn", set by the ncnn import)
    hyperparameters: dict
    state_dict: dict = field(repr=False)

    @property
    def scale(self) -> int:
        return int(self.hyperparameters["scale"])


@dataclass(frozen=True)
class Cost:
    """Peak memory of one tile through a network, beyond its weights: ``fixed`` bytes plus
    ``per_pixel`` bytes per input pixel (the engine adds the tile's trip home)."""

    fixed: float
    per_pixel: float

    def bytes_for(self, pixels: int) -> float:
        return self.fixed + self.per_pixel * pixels


class OurArchitecture:
    """One of our networks: reading its keys, building it, its torch plan, overlap and cost.
    What runs it elsewhere (ncnn: ``runtimes/ncnn/``) and what carries it to hosts (the
    spandrel descriptor: ``loading/descriptor.py``) live above it and look it up by ``name``."""

    network_class: ClassVar[type[torch.nn.Module]]
    plan_class: ClassVar[type]  # the torch plan: ``for_device(device)`` gives the device's default
    build_keys: ClassVar[tuple[str, ...]]  # hyperparameters the network's constructor takes

    def __init__(self, name: str):
        self.name = name

    def spec(self, state: dict, act_type: str | None = None) -> ModelSpec | None:
        """This architecture's reading of a canonical-prefix state dict; ``None``: not ours.
        Raises ModelLoadError when the keys say "ours" but the shapes cannot make a network."""
        raise NotImplementedError

    def tags(self, hp: dict) -> list[str]:
        raise NotImplementedError

    def multiple_of(self, hp: dict) -> int:
        return 1

    def build_network(self, spec: ModelSpec) -> torch.nn.Module:
        """The network for ``spec`` with its weights checked to fit exactly."""
        hp = spec.hyperparameters
        net = self.network_class(**{k: hp[k] for k in self.build_keys})
        check_weights_fit(net, spec.state_dict)
        net.load_state_dict(spec.state_dict, strict=True)
        return net

    def plan_for(self, device: torch.device):
        """The torch plan ``device`` runs by default."""
        return self.plan_class.for_device(device)

    def torch_plan_walks_windows(self, net: torch.nn.Module, pixels: int) -> bool:
        """Whether the CPU torch plan runs an input of ``pixels`` in windows (else it runs whole)."""
        raise NotImplementedError

    def overlap(self, net: torch.nn.Module) -> int:
        """Tile overlap in input px: enough context that tiled == whole-image output (README)."""
        raise NotImplementedError

    def cost(self, net: torch.nn.Module, plan, element_size: int) -> Cost:
        raise NotImplementedError


# ---- helpers for the key readers ---------------------------------------------------------

# A network that merely shares a few key names with ours (MMRealSR has RRDBNet's, with whole
# extra sub-networks) has many keys outside our layout: that goes to spandrel. A handful of
# stray keys in an otherwise exact layout is a damaged file of ours, and the strict load
# names them.
MAX_FOREIGN_KEYS = 4


def is_mostly(state: dict, pattern: re.Pattern) -> bool:
    return sum(1 for k in state if not pattern.match(k)) <= MAX_FOREIGN_KEYS


def dims(state: dict, key: str, ndim: int, arch: str) -> tuple[int, ...]:
    """Shape of a weight that must exist with ``ndim`` dims and no zero-sized dimension."""
    t = state.get(key)
    if t is None:
        not_buildable(arch, f"the weight {key} is missing")
    if t.ndim != ndim or 0 in t.shape:
        not_buildable(arch, f"{key} has shape {tuple(t.shape)}, expected a {ndim}-D weight")
    return tuple(t.shape)


def not_buildable(arch: str, why: str):
    raise ModelLoadError(f"looks like {arch} but {why}")


def check_weights_fit(net: torch.nn.Module, state: dict) -> None:
    """Name the offending keys instead of torch's wall of text."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weight(s): {_few(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected weight(s): {_few(extra)}")
    if wrong:
        problems.append(f"wrong shape: {_few(wrong)}")
    if problems:
        raise ModelLoadError(f"weights do not fit {type(net).__name__}: " + "; ".join(problems))
    for k, v in state.items():
        if not v.is_floating_point():
            raise ModelLoadError(f"weight {k} has dtype {v.dtype}, expected floating point")
    check_finite(state)


def check_finite(state: dict) -> None:
    """NaN / Inf weights only ever produce black or garbage images: refuse them up front."""
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelLoadError(f"weight {k} contains NaN or Inf values; the file is corrupt")


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" … (+{len(items) - n} more)" if len(items) > n else "")

