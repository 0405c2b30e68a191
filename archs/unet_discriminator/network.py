"""UNetDiscriminatorSN: Real-ESRGAN's U-Net discriminator with spectral normalisation, the plain
reference network the GAN fine-tuning trains beside a generator. It is not an upscaler and is
not among ``archs.ARCHITECTURES``.

It scores every pixel: the output is [B, 1, H, W] for a [B, num_in_ch, H, W] input, whose H and
W must be divisible by 8 (three stride-2 convs down, three x2 upsamplings back up, with skip
additions that need the sizes to meet again).

Spectral norm is the hook-based ``torch.nn.utils.spectral_norm``, not the newer
``torch.nn.utils.parametrizations.spectral_norm``: the hook version stores each normalised
weight as ``convN.weight_orig`` with its power-iteration vectors ``convN.weight_u`` /
``convN.weight_v``, the keys of Real-ESRGAN's published discriminators
(``RealESRGAN_x4plus_netD.pth``), so those load as they are and ours load in Real-ESRGAN.
The parametrization version names them ``convN.parametrizations.weight.original`` /
``.weight.0._u`` / ``.weight.0._v``; ``keys.py`` renames such files on loading.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

NEGATIVE_SLOPE = 0.2
# conv0 (the first) and conv9 (the 1-channel output) are plain convs with a bias; conv1..conv8
# are spectral-normalised and bias-free
SN_CONVS = tuple(f"conv{i}" for i in range(1, 9))
PLAIN_CONVS = ("conv0", "conv9")
SIZE_MULTIPLE = 8


def _sn_conv(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Conv2d:
    return spectral_norm(nn.Conv2d(in_ch, out_ch, kernel, stride, 1, bias=False))


class UNetDiscriminatorSN(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        self.num_in_ch = num_in_ch
        self.num_feat = num_feat
        self.skip_connection = skip_connection
        f = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        # down: 4x4 stride-2 convs, f -> 2f -> 4f -> 8f channels at 1/2, 1/4, 1/8 size
        self.conv1 = _sn_conv(f, f * 2, 4, 2)
        self.conv2 = _sn_conv(f * 2, f * 4, 4, 2)
        self.conv3 = _sn_conv(f * 4, f * 8, 4, 2)
        # up: bilinear x2, then a 3x3 conv back to the channel count of the matching down level
        self.conv4 = _sn_conv(f * 8, f * 4, 3, 1)
        self.conv5 = _sn_conv(f * 4, f * 2, 3, 1)
        self.conv6 = _sn_conv(f * 2, f, 3, 1)
        # two extra convs at full size, then one score per pixel
        self.conv7 = _sn_conv(f, f, 3, 1)
        self.conv8 = _sn_conv(f, f, 3, 1)
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = _act(self.conv0(x))
        x1 = _act(self.conv1(x0))
        x2 = _act(self.conv2(x1))
        x3 = _act(self.conv3(x2))

        x4 = self._up(self.conv4, x3, x2)
        x5 = self._up(self.conv5, x4, x1)
        x6 = self._up(self.conv6, x5, x0)

        out = _act(self.conv7(x6))
        out = _act(self.conv8(out))
        return self.conv9(out)

    def _up(self, conv: nn.Conv2d, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Bilinear x2, conv, activation, then (with skip connections) add the down-path map."""
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        out = _act(conv(x))
        return out + skip if self.skip_connection else out


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope=NEGATIVE_SLOPE)
