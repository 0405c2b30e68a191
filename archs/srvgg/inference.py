"""How SRVGGNetCompact runs for inference: an explicit plan beside the reference ``forward``.

On CPU large inputs run the whole network window by window (``archs/windows.py``): every
window's feature maps stay in cache instead of streaming 64-channel full-size maps through
memory twice per layer, and no full-size feature map exists at all. The halo is one px per
conv; each conv shrinks the window by one px per side. oneDNN runs these 64->64 convs faster in
channels-last layout on CPU; the values are the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..windows import even_spans, for_each_window, windows
from .network import SRVGGNetCompact


@dataclass(frozen=True)
class SRVGGPlan:
    window: tuple[int, int] | None = (256, 256)  # window core (rows, cols) before the halo; None: whole map
    whole_map_max_pixels: int = 256 * 256  # inputs up to this size run whole
    channels_last: bool = True

    @classmethod
    def for_device(cls, device: torch.device) -> SRVGGPlan:
        if device.type == "cpu":
            return cls()
        return cls(window=None, channels_last=device.type == "cuda")  # faster with cuDNN too (README: GPU check)

    def in_windows(self, pixels: int) -> bool:
        """Whether an input of ``pixels`` runs window by window, or whole."""
        return self.window is not None and pixels > self.whole_map_max_pixels

    def run(self, net: SRVGGNetCompact, x: torch.Tensor) -> torch.Tensor:
        if self.in_windows(x.shape[-2] * x.shape[-1]):
            return self._in_windows(net, x)
        out = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        for layer in net.body:
            out = layer(out)
        return net.add_base(out, x)

    def window_steps(self, net: SRVGGNetCompact, height: int, width: int, element_size: int = 4) -> int:
        """Windows ``run`` walks for an input of this size (progress within a tile); 0: none."""
        if not self.in_windows(height * width):
            return 0
        return len(even_spans(height, self.window[0])) * len(even_spans(width, self.window[1]))

    def window_bytes(self, net: SRVGGNetCompact, element_size: int) -> int:
        """Memory of one window's feature maps (about three at a time)."""
        if self.window is None:
            return 0
        rows, cols = (side + 2 * net.receptive_radius for side in self.window)
        return 3 * net.num_feat * rows * cols * element_size

    def map_channels(self, net: SRVGGNetCompact) -> int:
        """Input-resolution channels alive at the peak: none with windows, else a few feature maps."""
        return 0 if self.window is not None else 3 * net.num_feat

    def _in_windows(self, net: SRVGGNetCompact, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        up = net.upscale
        out = []  # allocated by the first window, which knows the output's dtype and channels

        def one_window(win) -> None:
            t = x.new_empty((n, x.shape[1], *win.size))
            win.load(t, x)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            shrink = 0
            for layer in net.body:
                if isinstance(layer, nn.Conv2d):
                    t, shrink = F.conv2d(t, layer.weight, layer.bias), shrink + 1
                else:
                    t = layer(t)
                    win.zero_outside_map(t, shrink)  # what zero padding feeds the next conv
            rows, cols = win.core
            part = net.add_base(t, x[:, :, rows, cols])
            if not out:
                # channels-last: its HWC view is the engine's result as is
                out.append(torch.empty((n, part.shape[1], h * up, w * up), dtype=part.dtype, device=part.device,
                                       memory_format=torch.channels_last))
            out[0][:, :, rows.start * up : rows.stop * up, cols.start * up : cols.stop * up] = part

        # one window at a time, each conv on all threads: these windows are big enough to keep
        # every thread busy (one window per thread measured no faster) and the working set
        # stays one window's, whatever the core count
        for_each_window(one_window, windows(h, w, self.window, net.receptive_radius), threads=1)
        return out[0]
