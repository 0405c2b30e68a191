"""Which image channels go through the model together: RGB, alpha as gray, gray as RGB."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChannelPass:
    """One trip through the model: which image channels feed it (-1 = a constant 1 plane)
    and which image channels its output fills (from the model's first output channels, or
    their mean when one gray/alpha channel is filled from an RGB model)."""

    source: tuple[int, ...]
    dest: tuple[int, ...]


def channel_passes(image_channels: int, model_channels: int) -> list[ChannelPass]:
    """RGB models: RGBA runs RGB then alpha (as gray); gray runs as gray RGB. 1-channel models
    run each channel alone. 4-channel models get an opaque alpha for RGB and gray input."""
    c, m = image_channels, model_channels
    if m == 1:
        return [ChannelPass((i,), (i,)) for i in range(c)]
    if c == m:
        return [ChannelPass(tuple(range(c)), tuple(range(c)))]
    gray = (0,) * min(m, 3) + (-1,) * (m - 3)
    if c == 1:
        return [ChannelPass(gray, (0,))]
    rgb = (0, 1, 2) + (-1,) * (m - 3)
    if c == 3:
        return [ChannelPass(rgb, (0, 1, 2))]
    alpha = (3,) * min(m, 3) + (-1,) * (m - 3)
    return [ChannelPass(rgb, (0, 1, 2)), ChannelPass(alpha, (3,))]


def gather(image_chw: torch.Tensor, source: tuple[int, ...]) -> torch.Tensor:
    ones = torch.ones_like(image_chw[:1])
    return torch.cat([ones if i < 0 else image_chw[i : i + 1] for i in source])


def scatter(out_chw: torch.Tensor, n_dest: int) -> torch.Tensor:
    if n_dest == 1 and out_chw.shape[0] > 1:
        return out_chw[:3].mean(0, keepdim=True)
    if out_chw.shape[0] < n_dest:  # 1-channel output for a multi-channel destination
        return out_chw[:1].expand(n_dest, -1, -1)
    return out_chw[:n_dest]


def is_constant(x: torch.Tensor) -> bool:
    return bool((x == x.flatten()[0]).all())
