"""What every architecture package provides, and the descriptor our networks travel in.

An architecture package (``archs/rrdbnet``, ``archs/srvgg``) holds the plain network, its key
layouts and detection (``keys.py``), its inference plan (``inference.py``), its ncnn graph
pattern (``ncnn_pattern.py``) and, in ``__init__.py``, one ``OurArchitecture``: descriptor build
and cost profile. The engine and the loaders reach a network only through this interface.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import ModelLoadError
from ..spandrel_import import Architecture, ImageModelDescriptor, SizeRequirements
from .backend import current as current_backend
from .output_resize import OutputResize


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


class OurArchitecture(Architecture):
    """One of our networks, usable as a spandrel ``Architecture`` too (``detect`` / ``load``)."""

    network_class: ClassVar[type[torch.nn.Module]]
    plan_class: ClassVar[type]  # the torch plan: ``for_device(device)`` gives the device's default
    ncnn_plan_class: ClassVar[type | None] = None  # the ncnn backend's plan, if the network has one
    build_keys: ClassVar[tuple[str, ...]]  # hyperparameters the network's constructor takes

    def __init__(self, name: str):
        super().__init__(id=name, name=name, detect=self._detects)

    # -- keys ---------------------------------------------------------------------------

    def spec(self, state: dict, act_type: str | None = None) -> ModelSpec | None:
        """This architecture's reading of a canonical-prefix state dict; ``None``: not ours.
        Raises ModelLoadError when the keys say "ours" but the shapes cannot make a network."""
        raise NotImplementedError

    def _spec_of_checkpoint(self, state_dict: dict) -> ModelSpec | None:
        from ..sniff import unwrap_state_dict  # (sniff imports the architectures)

        return self.spec(unwrap_state_dict(state_dict))

    def _detects(self, state_dict: dict) -> bool:
        try:
            return self._spec_of_checkpoint(state_dict) is not None
        except ModelLoadError:
            return False

    def load(self, state_dict: dict) -> OurModel:
        spec = self._spec_of_checkpoint(state_dict)
        if spec is None:
            raise ModelLoadError(f"the state dict is not a {self.name}")
        return self.build(spec)

    # -- build --------------------------------------------------------------------------

    def tags(self, hp: dict) -> list[str]:
        raise NotImplementedError

    def multiple_of(self, hp: dict) -> int:
        return 1

    def build(self, spec: ModelSpec, resize: tuple[float, str] | None = None) -> OurModel:
        """The network for ``spec`` with its weights checked to fit exactly, wrapped for hosts."""
        hp = spec.hyperparameters
        net = self.network_class(**{k: hp[k] for k in self.build_keys})
        check_weights_fit(net, spec.state_dict)
        net.load_state_dict(spec.state_dict, strict=True)
        return OurModel(self, net, hp, spec.key_format, self.tags(hp), self.multiple_of(hp), resize)

    # -- running ------------------------------------------------------------------------

    def plan_for(self, device: torch.device, backend: str = "torch"):
        if backend == "ncnn":
            return self.ncnn_plan_class()
        return self.plan_class.for_device(device)

    def torch_plan_walks_windows(self, net: torch.nn.Module, pixels: int) -> bool:
        """Whether the CPU torch plan runs an input of ``pixels`` in windows (else it runs whole)."""
        raise NotImplementedError

    def probe_key(self, net: torch.nn.Module) -> tuple:
        """What decides the backends' relative speed (``speed_probe`` is measured once per key)."""
        raise NotImplementedError

    def speed_probe(self, net: torch.nn.Module) -> dict:
        """{backend: a callable running the same small, representative piece of ``net``}."""
        raise NotImplementedError

    def overlap(self, net: torch.nn.Module) -> int:
        """Tile overlap in input px: enough context that tiled == whole-image output (README)."""
        raise NotImplementedError

    def cost(self, net: torch.nn.Module, plan, element_size: int) -> Cost:
        raise NotImplementedError


class OurModel(ImageModelDescriptor):
    """A spandrel descriptor (ComfyUI's UPSCALE_MODEL) around one of our networks. Calling it
    (ComfyUI core's node, any spandrel user) runs ``plan``, or the device's default plan;
    ``network`` is the plain reference network (``model`` adds a fixed resize where the file
    has one)."""

    def __init__(self, arch: OurArchitecture, net: torch.nn.Module, hp: dict, key_format: str,
                 tags: list[str], multiple_of: int, resize: tuple[float, str] | None = None):
        scale = hp["scale"]
        model: torch.nn.Module = net
        if resize is not None:
            factor, mode = resize
            model = OutputResize(net, factor, mode)
            scale = _integer_scale(hp["scale"], factor)
            tags = [*tags, f"resize{factor:g}-{mode}"]
        model.key_format = key_format  # type: ignore[attr-defined]  # reported by `info`
        model.hyperparameters = dict(hp, scale=scale)  # type: ignore[attr-defined]
        model.eval().requires_grad_(False)
        super().__init__(
            model,
            model.state_dict(),
            architecture=arch,
            purpose="SR" if scale > 1 else "Restoration",
            tags=tags,
            supports_half=True,  # fp16 can overflow on some RRDBNet weights: the engine's NaN guard re-runs those tiles in fp32
            supports_bfloat16=True,
            scale=scale,
            input_channels=hp["num_in_ch"],
            output_channels=hp["num_out_ch"],
            size_requirements=SizeRequirements(minimum=1, multiple_of=multiple_of),
            call_fn=self._infer,
        )
        self.network = net
        self.plan = None  # None: the default plan for the device the input is on

    @property
    def our_architecture(self) -> OurArchitecture:
        return self.architecture  # type: ignore[return-value]

    def plan_on(self, device: torch.device, x: torch.Tensor | None = None):
        """``plan``, or the default plan of the backend that runs now (``archs/backend.py``)."""
        if self.plan is not None:
            return self.plan
        return self.our_architecture.plan_for(device, current_backend(self, device if x is None else x))

    def _infer(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Training (grad enabled) runs the reference graph; inference runs the plan."""
        if torch.is_grad_enabled():
            return model(x)
        y = self.plan_on(x.device, x).run(self.network, x)
        return model.resize(y) if isinstance(model, OutputResize) else y

    def window_steps(self, device: torch.device, height: int, width: int) -> int:
        """Windows one forward of an input this size walks on ``device`` (0: it runs whole)."""
        return self.plan_on(device).window_steps(self.network, height, width)

    def cost(self, device: torch.device, element_size: int) -> Cost:
        """Peak memory of one tile through this model, for the engine's tile size."""
        base = self.our_architecture.cost(self.network, self.plan_on(device), element_size)
        if isinstance(self.model, OutputResize):  # the resized output exists beside the network's
            return Cost(base.fixed, base.per_pixel + self.output_channels * self.scale**2 * element_size)
        return base

    def overlap(self) -> int:
        return self.our_architecture.overlap(self.network)


def _integer_scale(scale: int, factor: float) -> int:
    total = scale * factor
    if abs(total - round(total)) > 1e-6 or round(total) < 1:
        raise ModelLoadError(f"a {scale}x network followed by a x{factor} resize is not an integer scale")
    return int(round(total))


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

