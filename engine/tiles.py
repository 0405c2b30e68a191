"""Tile layout and blend weights.

Tiles are equal-sized and spread evenly (no thin last strip), stay inside the image, and start
on multiples of the model's pixel-unshuffle factor. In each overlap the tile edges (least
context) get weight 0 and the middle is a smooth ramp; weights are normalised per axis, so
every output pixel's weights sum to exactly 1 and the sum needs no normalisation buffer.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

MIN_TILE = 16  # below this an OOM is reported instead of splitting further


@dataclass(frozen=True)
class Span:
    """A tile's extent along one axis (input pixels) and its blend weights (output pixels)."""

    start: int
    end: int
    weight: torch.Tensor


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def round_tile(tile: int, multiple: int) -> int:
    return max(round_up(max(tile, MIN_TILE), multiple), multiple)


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Evenly spaced tile starts covering ``length`` with tiles of ``tile`` px (the last one
    runs to the edge): no thin last strip, neighbours overlap by about ``overlap`` or more,
    and starts sit on multiples of ``multiple`` (pixel-unshuffle models must see the same
    2x2 / 4x4 groups as an untiled run)."""
    if length <= tile:
        return [0]
    overlap = min(overlap, tile // 2)  # OOM sub-tiles can be smaller than the planned overlap
    count = math.ceil((length - overlap) / (tile - overlap))
    last = (length - tile) // multiple * multiple
    return sorted({round(i * last / (count - 1) / multiple) * multiple for i in range(count)})


def count_tiles(h: int, w: int, tile: int, overlap: int, multiple: int) -> int:
    return len(tile_starts(h, tile, overlap, multiple)) * len(tile_starts(w, tile, overlap, multiple))


@functools.lru_cache(maxsize=32)  # every frame of a batch and every channel pass shares one layout
def axis_spans(length: int, tile: int, overlap: int, scale: int, multiple: int = 1) -> list[Span]:
    """Tiles along one axis with weights that sum to exactly 1 at every output pixel.

    In the overlap [a, b) of two neighbours, the outer 3/8 on each side goes wholly to the
    tile that is not near its own edge (tile edges lack context), the middle quarter is a
    raised-cosine cross-fade. Normalising per axis makes the 2-D products sum to 1 too.
    """
    starts = tile_starts(length, tile, overlap, multiple)
    ends = [s + tile for s in starts[:-1]] + [length]
    coords = (torch.arange(length * scale, dtype=torch.float64) + 0.5) / scale
    weights = []
    for i, (start, end) in enumerate(zip(starts, ends)):
        w = ((coords >= start) & (coords < end)).double()
        if i > 0:
            w *= _ramp(coords, start, ends[i - 1])
        if i + 1 < len(starts):
            w *= 1 - _ramp(coords, starts[i + 1], end)
        weights.append(w)
    total = torch.stack(weights).sum(0)
    assert bool((total > 0).all()), "tile layout leaves a gap"  # a bug, not a user error
    return [Span(s, e, (w / total)[s * scale : e * scale].float()) for s, e, w in zip(starts, ends, weights)]


def _ramp(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """0 up to a + 3/8 (b - a), 1 from b - 3/8 (b - a), raised cosine between."""
    lo, hi = a + 0.375 * (b - a), b - 0.375 * (b - a)
    t = ((x - lo) / max(hi - lo, 1e-9)).clamp(0, 1)
    return 0.5 - 0.5 * torch.cos(math.pi * t)
