"""A fixed resize after a network, as ncnn exports of realesr-animevideov3 x2/x3 carry it
(an x4 network followed by a bicubic x0.5 / x0.75 Interp layer).

It reproduces ncnn's ``Interp`` with scale factors, checked against the ncnn runtime
(tests/test_ncnn_import.py):

* output size ``(int)(h * factor)``, computed in float32 as ncnn does;
* source coordinates mapped with the *given* factor, ``src = (dst + 0.5) / factor - 0.5``
  (nearest: ``floor(dst / factor)``), not with ``in_size / out_size``. The two differ whenever
  ``h * factor`` is not a whole number (e.g. an odd height times 0.5): torch's
  ``F.interpolate(size=...)`` would then sample up to half a pixel off;
* bicubic with a = -0.75 and border-clamped taps, no antialiasing: the same as torch.

So this is torch's ``interpolate(scale_factor=f, recompute_scale_factor=False)`` with ncnn's
float32 output size.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def ncnn_output_size(size: int, factor: float) -> int:
    """``(int)(size * factor)`` in float32, as ncnn's Interp computes its output size."""
    return int(np.float32(size) * np.float32(factor))


class OutputResize(nn.Module):
    def __init__(self, net: nn.Module, factor: float, mode: str):
        super().__init__()
        if mode not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"resize mode must be nearest, bilinear or bicubic, not {mode!r}")
        if not factor > 0:
            raise ValueError(f"resize factor must be positive, not {factor}")
        self.net = net
        self.factor = float(factor)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resize(self.net(x))

    def resize(self, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        size = [max(1, ncnn_output_size(h, self.factor)), max(1, ncnn_output_size(w, self.factor))]
        f = self.factor
        if self.mode == "nearest":
            return torch.ops.aten.upsample_nearest2d(y, size, f, f)
        if self.mode == "bilinear":
            return torch.ops.aten.upsample_bilinear2d(y, size, False, f, f)
        return torch.ops.aten.upsample_bicubic2d(y, size, False, f, f)
