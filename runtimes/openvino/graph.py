"""Builds OpenVINO graphs from torch weights with OpenVINO's own operator set: no tracing or
conversion step (``openvino.convert_model`` of x4plus took 24 s here; these take milliseconds).
Inputs are dynamic [1, C, H, W]; ``runtime.Stage`` compiles them per shape."""
from __future__ import annotations

import numpy as np
import torch


def _ops():
    from openvino import opset13

    return opset13


def data(channels: int):
    """The graph's input: [1, channels, H, W] fp32, H and W dynamic."""
    return _ops().parameter([1, channels, -1, -1], np.float32, name="data")


def model(output, data_node):
    import openvino

    return openvino.Model([_ops().result(output)], [data_node], "stage")


def const(t: torch.Tensor | np.ndarray | float):
    arr = t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)
    return _ops().constant(np.ascontiguousarray(arr, dtype=np.float32))


def conv(x, weight: torch.Tensor, bias: torch.Tensor | None, slope: float | None = None):
    """A stride-1 kxk conv with "same" zero padding (as the torch modules), bias, and an optional
    LeakyReLU of ``slope``."""
    ops = _ops()
    pad = weight.shape[-1] // 2
    y = ops.convolution(x, const(weight), [1, 1], [pad, pad], [pad, pad], [1, 1])
    if bias is not None:
        y = ops.add(y, const(bias.reshape(1, -1, 1, 1)))
    return y if slope is None else leaky_relu(y, slope)


def leaky_relu(x, slope: float):
    return _ops().prelu(x, const(np.array([slope], dtype=np.float32)))


def prelu(x, slopes: torch.Tensor):
    return _ops().prelu(x, const(slopes.reshape(-1)))


def relu(x):
    return _ops().relu(x)


def concat(xs):
    return _ops().concat(xs, 1)


def add(a, b):
    return _ops().add(a, b)


def scaled_add(a, scale: float, b):
    """a * scale + b"""
    ops = _ops()
    return ops.add(ops.multiply(a, const(np.array(scale, dtype=np.float32))), b)


def nearest_2x(x):
    """F.interpolate(x, scale_factor=2, mode="nearest"): out[i] = in[floor(i / 2)]."""
    ops = _ops()
    return ops.interpolate(x, const(np.array([2.0, 2.0], dtype=np.float32)), "nearest", "scales",
                           coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                           axes=_ops().constant(np.array([2, 3], dtype=np.int64)))
