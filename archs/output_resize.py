"""A fixed resize after a network, as ncnn exports of realesr-animevideov3 x2/x3 carry it
(an x4 network followed by a bicubic x0.5 / x0.75 Interp layer)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OutputResize(nn.Module):
    def __init__(self, net: nn.Module, factor: float, mode: str):
        super().__init__()
        self.net = net
        self.factor = factor
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        h, w = y.shape[-2:]
        size = (int(h * self.factor), int(w * self.factor))
        align = False if self.mode in ("bilinear", "bicubic") else None
        return F.interpolate(y, size=size, mode=self.mode, align_corners=align)
