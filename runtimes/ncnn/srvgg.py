"""SRVGGNetCompact on the ncnn backend (``runtimes/ncnn/runtime.py``): the conv body is one ncnn
stage run window by window; each window's pixel shuffle and nearest-upscaled base are added in
torch, so no full-size feature map exists. Equal to the reference network to fp32 rounding."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...archs.srvgg.network import SRVGGNetCompact
from ...archs.windows import Window, even_spans, worker_count
from .runtime import NCNN_WINDOW_FACTOR, Stage, StageCache, ncnn_weight_bytes, run_in_windows
from .writer import GraphWriter


def body_in_windows(net: SRVGGNetCompact, body, x: torch.Tensor, side: int, threads: int | None,
                    release: bool = False) -> torch.Tensor:
    """SRVGG's body (a runtime's stage) over ``x`` in windows of ``side``, each window's core
    plus the network's upsampled base written into the output (the ncnn and OpenVINO plans)."""
    x = x.float()
    n, _, h, w = x.shape
    up = net.upscale
    # channels-last: its HWC view is the engine's result as is
    out = torch.empty((n, net.num_out_ch, h * up, w * up), memory_format=torch.channels_last)

    def place(i: int, win: Window, result: torch.Tensor) -> None:
        rows, cols = win.core
        out[i, :, rows.start * up : rows.stop * up, cols.start * up : cols.stop * up] = \
            net.add_base(result.unsqueeze(0), x[i : i + 1, :, rows, cols])[0]

    run_in_windows(body, x, side, net.receptive_radius, place, threads=threads, release=release)
    return out


@dataclass(frozen=True)
class SRVGGNcnnPlan:
    window: int = 192  # window side before the halo
    threads: int | None = None  # window workers; None: torch's intra-op thread count
    backend = "ncnn"

    def run(self, net: SRVGGNetCompact, x: torch.Tensor) -> torch.Tensor:
        return body_in_windows(net, _STAGES.get(net), x, self.window, threads=self.threads, release=True)

    def window_steps(self, net: SRVGGNetCompact, height: int, width: int, element_size: int = 4) -> int:
        return len(even_spans(height, self.window)) * len(even_spans(width, self.window))

    def window_bytes(self, net: SRVGGNetCompact, element_size: int) -> int:
        side = self.window + 2 * net.receptive_radius
        per_worker = side**2 * net.num_feat * 4 * NCNN_WINDOW_FACTOR
        return int(per_worker * worker_count(self.threads) + ncnn_weight_bytes(net))

    def map_channels(self, net: SRVGGNetCompact) -> int:
        return 0  # no full-size feature map


PLAN = SRVGGNcnnPlan


def _body(net: SRVGGNetCompact) -> Stage:
    g = GraphWriter()
    h = g.data
    layers = list(net.body)
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.Conv2d):
            continue
        act = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(act, nn.PReLU):
            h = g.prelu(g.conv(h, layer.weight, layer.bias), act.weight)
        elif isinstance(act, nn.LeakyReLU):
            h = g.conv(h, layer.weight, layer.bias, act.negative_slope)
        elif isinstance(act, nn.ReLU):
            h = g.conv(h, layer.weight, layer.bias, "relu")
        else:
            h = g.conv(h, layer.weight, layer.bias)
    return Stage(g, h)


_STAGES = StageCache(_body)
