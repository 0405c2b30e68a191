"""Model interpolation (DNI, deep network interpolation): a model whose every weight is
``(1 - weight) * a + weight * b``. Real-ESRGAN's ``--denoise_strength`` blends
realesr-general-x4v3 with its -wdn twin this way; any two models of one architecture and the
same shapes (a fine-tune and its base, say) blend the same way.
"""
from __future__ import annotations

import copy
import math

import torch

from ..errors import ModelLoadError
from .descriptor import OurModel
from .spandrel_import import ImageModelDescriptor


def network_of(descriptor: ImageModelDescriptor) -> torch.nn.Module:
    """The module whose state dict is the model's weights (ours wraps it for a fixed resize)."""
    return descriptor.network if isinstance(descriptor, OurModel) else descriptor.model


def interpolate(a: ImageModelDescriptor, b: ImageModelDescriptor, weight: float) -> ImageModelDescriptor:
    """A new model: ``a`` at weight 0, ``b`` at weight 1. Raises ModelLoadError naming the
    first tensor that differs in name or shape, and refuses a degenerate blend (non-finite
    weights, or a constant output on a test pattern)."""
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise ModelLoadError(f"interpolation weight must be between 0 and 1, not {weight!r}")
    net_a, net_b = network_of(a), network_of(b)
    if type(net_a) is not type(net_b) or a.scale != b.scale:
        raise ModelLoadError(f"cannot interpolate a {_kind(a)} model with a {_kind(b)} model: "
                             "both must be the same architecture at the same scale")
    state_a, state_b = net_a.state_dict(), net_b.state_dict()
    _check_same_layout(state_a, state_b)
    blended = {name: _blend(name, state_a[name], state_b[name], weight) for name in state_a}
    result = copy.deepcopy(a)
    network_of(result).load_state_dict(blended)
    _check_not_degenerate(result)
    return result


def _kind(descriptor: ImageModelDescriptor) -> str:
    return f"{descriptor.architecture.name} x{descriptor.scale}"


def _check_same_layout(state_a: dict, state_b: dict) -> None:
    for name in state_a:
        if name not in state_b:
            raise ModelLoadError(f"cannot interpolate: {name} is in the first model only")
        if state_a[name].shape != state_b[name].shape:
            raise ModelLoadError(f"cannot interpolate: {name} has shape {tuple(state_a[name].shape)} in the first model "
                                 f"and {tuple(state_b[name].shape)} in the second")
    extra = next((name for name in state_b if name not in state_a), None)
    if extra is not None:
        raise ModelLoadError(f"cannot interpolate: {extra} is in the second model only")


def _blend(name: str, a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    if not a.is_floating_point():  # counters and the like must agree; there is nothing to blend
        if not torch.equal(a, b):
            raise ModelLoadError(f"cannot interpolate: {name} holds different integer values in the two models")
        return a.clone()
    out = torch.lerp(a.float(), b.float().to(a.device), weight)
    if not torch.isfinite(out).all():
        raise ModelLoadError(f"cannot interpolate: {name} is not finite in the blend")
    return out.to(a.dtype)


def _check_not_degenerate(model: ImageModelDescriptor) -> None:
    """A blend that maps a varied test pattern to one constant image is no upscaler."""
    h = w = 32
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    planes = [ys, xs, (torch.sin(12 * xs) * torch.cos(9 * ys) + 1) / 2, 1 - ys * xs]
    pattern = torch.stack([planes[i % len(planes)] for i in range(model.input_channels)]).unsqueeze(0)
    parameter = next(network_of(model).parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    with torch.no_grad():
        out = model(pattern.to(device, dtype)).float()
    if not torch.isfinite(out).all():
        raise ModelLoadError("cannot interpolate: the blended model gives non-finite output on a test pattern")
    if float(out.flatten(2).std(-1).max()) < 1e-6:  # every channel flat
        raise ModelLoadError("cannot interpolate: the blended model gives a constant image on a test pattern")
