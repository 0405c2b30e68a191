"""RRDBNet: the ESRGAN / Real-ESRGAN generator (basicsr key layout), the plain reference network.

Scale = 2**num_upsample / unshuffle: Real-ESRGAN x4plus has two upsample stages and no
unshuffle, RealESRGAN_x2plus pixel-unshuffles by 2 first, old-style x2/x1 ESRGAN models
simply have one / zero upsample stages. ``forward`` is the module graph as trained, for every
device and for training; the fast inference paths are in ``inference.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..padding import pad_bottom_right


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each fed the concatenation of the input and all earlier outputs."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x  # residual scaling 0.2, as trained


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        num_upsample: int = 2,
        unshuffle: int = 1,
    ):
        super().__init__()
        if unshuffle not in (1, 2, 4):
            raise ValueError(f"unshuffle must be 1, 2 or 4, not {unshuffle}")
        self.num_in_ch = num_in_ch
        self.num_out_ch = num_out_ch
        self.num_feat = num_feat
        self.num_grow_ch = num_grow_ch
        self.num_upsample = num_upsample
        self.unshuffle = unshuffle
        self.conv_first = nn.Conv2d(num_in_ch * unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        for i in range(1, num_upsample + 1):
            setattr(self, f"conv_up{i}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    @property
    def scale(self) -> float:
        return 2**self.num_upsample / self.unshuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.crop(self.tail(self.trunk(self.head(x))), x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel-unshuffle (padding bottom/right to fit, as spandrel's descriptor pads)."""
        if self.unshuffle > 1:
            h, w = x.shape[-2:]
            x = pad_bottom_right(x, -h % self.unshuffle, -w % self.unshuffle)
            x = F.pixel_unshuffle(x, self.unshuffle)
        return x

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        return feat + self.conv_body(self.body(feat))

    def tail(self, feat: torch.Tensor) -> torch.Tensor:
        """Upsampling stages, HR conv and last conv."""
        for i in range(1, self.num_upsample + 1):
            conv_up = getattr(self, f"conv_up{i}")
            feat = self.lrelu(conv_up(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))

    def crop(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Crop away what ``head``'s padding added."""
        if self.unshuffle == 1:
            return out
        s = 2**self.num_upsample // self.unshuffle
        h, w = x.shape[-2:]
        return out[..., : h * s, : w * s]
