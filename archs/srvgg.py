"""SRVGGNetCompact: the small VGG-style Real-ESRGAN network (realesr-animevideov3,
realesr-general-x4v3).

``body`` alternates conv and activation: conv at even indices, activation at odd ones.
PReLU activations have weights (``body.1.weight`` …); ReLU / LeakyReLU(0.1) have none, so
the same key set fits both and the activation must be given by the caller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import for_each_window, windows

ACT_TYPES = ("prelu", "relu", "leakyrelu")


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU(inplace=True)
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)
    raise ValueError(f"act_type must be one of {ACT_TYPES}, not {act_type!r}")


class SRVGGNetCompact(nn.Module):
    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: str = "prelu",
    ):
        super().__init__()
        self.num_in_ch = num_in_ch
        self.num_out_ch = num_out_ch
        self.upscale = upscale
        self.act_type = act_type
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.device.type == "cpu" and x.shape[-2] * x.shape[-1] > WHOLE_MAP_MAX_PIXELS:
            return self._forward_in_windows(x)
        # oneDNN runs these 64->64 convs ~1.4x faster on CPU in channels-last layout (measured
        # on x86 with animevideov3); the values are the same
        out = x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x
        for layer in self.body:
            out = layer(out)
        return self._add_base(out, x)

    def _add_base(self, body_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = F.pixel_shuffle(body_out, self.upscale).contiguous()
        # the network learns the residual over a nearest-neighbour upscale of the input
        base = F.interpolate(x, scale_factor=self.upscale, mode="nearest")
        return out + base  # broadcasts a 1-channel input onto a 3-channel output

    def _forward_in_windows(self, x: torch.Tensor) -> torch.Tensor:
        """The whole network window by window (``archs/blocks.py``), for CPU inference on large
        inputs: every window's feature maps stay in cache instead of streaming 64-channel
        full-size maps through memory 2 x 18 times, and no full-size map exists at all. The
        halo is one px per conv; each conv shrinks the window by one px per side."""
        n, _, h, w = x.shape
        up = self.upscale
        out = []  # allocated by the first window, which knows the output's dtype and channels

        def one_window(win) -> None:
            t = x.new_empty((n, x.shape[1], *win.size))
            win.load(t, x)
            t = t.contiguous(memory_format=torch.channels_last)
            shrink = 0
            for layer in self.body:
                if isinstance(layer, nn.Conv2d):
                    t, shrink = F.conv2d(t, layer.weight, layer.bias), shrink + 1
                else:
                    t = layer(t)
                    win.zero_outside_map(t, shrink)  # what zero padding feeds the next conv
            rows, cols = win.core
            part = self._add_base(t, x[:, :, rows, cols])
            if not out:
                out.append(part.new_empty((n, part.shape[1], h * up, w * up)))
            out[0][:, :, rows.start * up : rows.stop * up, cols.start * up : cols.stop * up] = part

        # one window at a time, each conv on all threads: these 256 px windows are big enough
        # to keep every thread busy (one window per thread measured no faster) and the working
        # set stays one window's, whatever the core count
        for_each_window(one_window, windows(h, w, BLOCK, self.receptive_radius), parallel=False)
        return out[0]

    @property
    def receptive_radius(self) -> int:
        """Pixels of input context each output pixel sees on every side: one per 3x3 conv."""
        return sum(isinstance(layer, nn.Conv2d) for layer in self.body)


BLOCK = (256, 256)  # CPU window core (rows, cols), before the halo
WHOLE_MAP_MAX_PIXELS = 256 * 256
