"""Exact evaluation of conv stacks block by block, for CPU cache locality.

On CPU a 3x3 conv over a whole feature map streams it through main memory, and oneDNN copies it
into its blocked layout and back on every layer; over a block whose window stays in cache the
same convolutions ran 1.4-1.6x faster (bench/README). Tiling the *image* would buy the same
locality at the price of overlap and seams; here the network itself walks the map in blocks:

- a block's window is the block plus ``halo`` px on every side (one px per 3x3 conv), so its
  centre is computed from exactly the same inputs as in the whole-map run;
- each conv runs without padding and shrinks the window by one px per side, so the halo is paid
  once per stack rather than per layer;
- where the window sticks out of the map, every layer's output there is set to zero: that is
  what the whole-map run's zero padding feeds the next conv.

The result equals the whole-map computation up to the summation order inside oneDNN (tests:
≤ 1e-5 against the whole-map path and against spandrel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Window:
    core: tuple[slice, slice]  # the block, in map coordinates: the rows/cols it produces
    source: tuple[slice, slice]  # map rows/cols copied in: core + halo, clipped to the map
    inside: tuple[slice, slice]  # where the source lands in the window
    size: tuple[int, int]  # block + 2 * halo

    def load(self, window: torch.Tensor, feature_map: torch.Tensor) -> None:
        """Copy the map into ``window`` (N, C, *size), zeros where the window leaves the map."""
        if self.size != (self.inside[0].stop - self.inside[0].start, self.inside[1].stop - self.inside[1].start):
            window.zero_()
        window[..., self.inside[0], self.inside[1]] = feature_map[..., self.source[0], self.source[1]]

    def zero_outside_map(self, layer_out: torch.Tensor, shrink: int) -> None:
        """``layer_out`` covers the window less ``shrink`` px per side; zero its part off the map."""
        for dim, inside, length in ((-2, self.inside[0], self.size[0]), (-1, self.inside[1], self.size[1])):
            before, after = inside.start - shrink, (length - shrink) - inside.stop
            if before > 0:
                layer_out.narrow(dim, 0, before).zero_()
            if after > 0:
                layer_out.narrow(dim, layer_out.shape[dim] - after, after).zero_()


def windows(height: int, width: int, block: tuple[int, int], halo: int) -> Iterator[Window]:
    """Blocks of about ``block`` (rows, cols) px, near-equal sizes with no thin last one, covering the map."""
    for rows in even_spans(height, block[0]):
        for cols in even_spans(width, block[1]):
            source = (_clip(rows, halo, height), _clip(cols, halo, width))
            inside = tuple(slice(s.start - (c.start - halo), s.stop - (c.start - halo)) for s, c in zip(source, (rows, cols)))
            size = (rows.stop - rows.start + 2 * halo, cols.stop - cols.start + 2 * halo)
            yield Window((rows, cols), source, inside, size)


def even_spans(length: int, target: int) -> list[slice]:
    count = max(1, math.ceil(length / target))
    edges = [round(i * length / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(edges, edges[1:])]


def _clip(span: slice, halo: int, length: int) -> slice:
    return slice(max(0, span.start - halo), min(length, span.stop + halo))
