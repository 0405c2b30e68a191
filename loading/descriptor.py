"""The spandrel descriptor (ComfyUI's UPSCALE_MODEL) our networks travel in.

``build_model`` turns a ``ModelSpec`` into an ``OurModel``: the network from its architecture
package, wrapped so that ComfyUI core's node, any spandrel user and our engine can call it.
A call runs the plan of the backend that runs now (``runtimes/``); under autograd it runs the
plain reference network (training).
"""
from __future__ import annotations

import torch

from ..archs import ARCHITECTURES, ModelSpec, OurArchitecture
from ..archs.architecture import Cost
from ..archs.output_resize import OutputResize
from ..errors import ModelLoadError
from ..runtimes import backend, plan_for
from .sniff import unwrap_state_dict
from .spandrel_import import Architecture, ImageModelDescriptor, SizeRequirements


class SpandrelArchitecture(Architecture):
    """One of our architectures as spandrel sees one (``detect`` / ``load`` a state dict)."""

    def __init__(self, arch: OurArchitecture):
        super().__init__(id=arch.name, name=arch.name, detect=self._detects)
        self.ours = arch

    def _spec(self, state_dict: dict) -> ModelSpec | None:
        return self.ours.spec(unwrap_state_dict(state_dict))

    def _detects(self, state_dict: dict) -> bool:
        try:
            return self._spec(state_dict) is not None
        except ModelLoadError:
            return False

    def load(self, state_dict: dict) -> OurModel:
        spec = self._spec(state_dict)
        if spec is None:
            raise ModelLoadError(f"the state dict is not a {self.name}")
        return build_model(spec)


SPANDREL_ARCHITECTURES: dict[str, SpandrelArchitecture] = {name: SpandrelArchitecture(a) for name, a in ARCHITECTURES.items()}


def build_model(spec: ModelSpec, resize: tuple[float, str] | None = None) -> OurModel:
    """Our network for ``spec``, weights checked to fit exactly, wrapped for hosts."""
    arch = ARCHITECTURES[spec.architecture]
    hp = spec.hyperparameters
    return OurModel(arch, arch.build_network(spec), hp, spec.key_format, arch.tags(hp), arch.multiple_of(hp), resize)


class OurModel(ImageModelDescriptor):
    """A spandrel descriptor around one of our networks. Calling it runs ``plan``, or the
    default plan of the backend and device that run now; ``network`` is the plain reference
    network (``model`` adds a fixed resize where the file has one)."""

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
            architecture=SPANDREL_ARCHITECTURES[arch.name],
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
        self.our_architecture = arch
        self.network = net
        self.plan = None  # None: the default plan for the device the input is on

    def plan_on(self, device: torch.device, x: torch.Tensor | None = None):
        """``plan``, or the default plan of the backend that runs now (``runtimes/backend.py``)."""
        if self.plan is not None:
            return self.plan
        return plan_for(self.our_architecture, device, backend.current(self, device if x is None else x))

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
        plan = self.plan_on(device)
        if getattr(plan, "backend", "torch") != "torch":
            element_size = 4  # ncnn and OpenVINO hand fp32 maps between their stages, whatever precision runs inside
        base = self.our_architecture.cost(self.network, plan, element_size)
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
