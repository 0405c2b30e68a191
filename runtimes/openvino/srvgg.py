"""SRVGGNetCompact on the OpenVINO backend (``runtimes/openvino/runtime.py``): the conv body is
one OpenVINO stage, over the whole map or window by window; each window's pixel shuffle and
nearest-upscaled base are added in torch, as on ncnn. Equal to the reference to fp32 rounding."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...archs.srvgg.network import SRVGGNetCompact
from ...archs.windows import even_spans
from ..ncnn.runtime import StageCache
from ..ncnn.srvgg import body_in_windows
from . import graph
from .rrdbnet import OPENVINO_MAP_FACTOR, OPENVINO_WEIGHT_FACTOR
from .runtime import Stage


@dataclass(frozen=True)
class SRVGGOpenVINOPlan:
    window: int | None = None  # window side before the halo; None: the whole map (measured faster than 192 px windows)
    backend = "openvino"

    def run(self, net: SRVGGNetCompact, x: torch.Tensor) -> torch.Tensor:
        side = max(x.shape[-2:]) if self.window is None else self.window
        return body_in_windows(net, _STAGES.get(net), x, side, threads=1)

    def window_steps(self, net: SRVGGNetCompact, height: int, width: int, element_size: int = 4) -> int:
        if self.window is None:
            return 1
        return len(even_spans(height, self.window)) * len(even_spans(width, self.window))

    def window_bytes(self, net: SRVGGNetCompact, element_size: int) -> int:
        weights = OPENVINO_WEIGHT_FACTOR * sum(p.numel() for p in net.parameters()) * 4
        if self.window is None:
            return weights
        side = self.window + 2 * net.receptive_radius
        return int(side**2 * net.num_feat * 4 * OPENVINO_MAP_FACTOR + weights)

    def map_channels(self, net: SRVGGNetCompact) -> int:
        """Input-resolution fp32 channels alive at the peak of a whole-map run: OpenVINO's maps,
        its output, and the pixel-shuffled copy and base at the output's scale."""
        if self.window is not None:
            return 0
        body_out = net.num_out_ch * net.upscale**2
        return OPENVINO_MAP_FACTOR * net.num_feat + 3 * body_out


PLAN = SRVGGOpenVINOPlan


def body_stage(net: SRVGGNetCompact) -> Stage:
    x = graph.data(net.num_in_ch)
    h = x
    layers = list(net.body)
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.Conv2d):
            continue
        act = layers[i + 1] if i + 1 < len(layers) else None
        h = graph.conv(h, layer.weight, layer.bias)
        if isinstance(act, nn.PReLU):
            h = graph.prelu(h, act.weight)
        elif isinstance(act, nn.LeakyReLU):
            h = graph.leaky_relu(h, act.negative_slope)
        elif isinstance(act, nn.ReLU):
            h = graph.relu(h)
    return Stage(graph.model(h, x))


_STAGES = StageCache(body_stage)
