"""Models and helpers the engine's test files share."""
from __future__ import annotations

import torch

from realesrgan_tiled.engine import call_model
from realesrgan_tiled.loading import build_descriptor
from realesrgan_tiled.loading.sniff import sniff


def descriptor_of(net: torch.nn.Module):
    return build_descriptor(sniff(net.state_dict(), getattr(net, "act_type", None)))


def direct(model, images: torch.Tensor) -> torch.Tensor:
    """Oracle: the whole image through the model in one call, no tiling."""
    x = images.movedim(-1, 1)
    with torch.inference_mode():
        return torch.cat([call_model(model, x[i : i + 1]) for i in range(len(x))]).clamp(0, 1).movedim(1, -1)


class Spy:
    """Wraps a descriptor's call: records every input it sees and can fail on chosen ones."""

    def __init__(self, call, fail=None):
        self.call, self.fail, self.calls = call, fail, []

    def __call__(self, module, x):
        self.calls.append((tuple(x.shape), torch.is_autocast_enabled(x.device.type)))
        if self.fail is not None:
            err = self.fail(x)
            if err is not None:
                raise err
        return self.call(module, x)


def spy_descriptor(model, fail=None):
    spy = Spy(model._call_fn, fail)
    model._call_fn = spy
    return model, spy


NAN_MARK = 0.25  # a tile whose top-left 4x4 input is this value gets a NaN in its half-precision output


def nan_where_marked(model):
    """(a copy of ``model`` whose half-precision output has a NaN for inputs marked with
    NAN_MARK in their top-left 4x4 corner, its Spy): for the NaN guard's tests."""
    model, spy = spy_descriptor(descriptor_of(model.model))
    inner = spy.call

    def poisoned(module, x):
        y = inner(module, x)
        if torch.is_autocast_enabled(x.device.type) and bool((x[..., :4, :4] == NAN_MARK).all()):
            y = y.clone()
            y[..., 5, 7] = float("nan")
        return y

    spy.call = poisoned
    return model, spy
