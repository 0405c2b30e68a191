"""SRVGGNetCompact: the small VGG-style Real-ESRGAN network (realesr-animevideov3,
realesr-general-x4v3), the plain reference network; the fast inference paths are in
``inference.py``.

``body`` alternates conv and activation: conv at even indices, activation at odd ones.
PReLU activations have weights (``body.1.weight`` …); ReLU / LeakyReLU(0.1) have none, so
the same key set fits both and the activation must be given by the caller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
        self.num_feat = num_feat
        self.upscale = upscale
        self.act_type = act_type
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.add_base(out, x)

    def add_base(self, body_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = F.pixel_shuffle(body_out, self.upscale).contiguous()
        # the network learns the residual over a nearest-neighbour upscale of the input
        base = F.interpolate(x, scale_factor=self.upscale, mode="nearest")
        return out + base  # broadcasts a 1-channel input onto a 3-channel output

    @property
    def receptive_radius(self) -> int:
        """Pixels of input context each output pixel sees on every side: one per 3x3 conv."""
        return sum(isinstance(layer, nn.Conv2d) for layer in self.body)
