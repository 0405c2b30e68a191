"""How RRDBNet runs for inference: an explicit plan beside the reference ``forward``.

Every path computes exactly the module graph (tests: against ``forward`` and spandrel):

- **whole map**: the trunk without ``torch.cat`` (``_trunk_without_concat``): all dense
  blocks share one buffer ``[x | x1 | x2 | x3 | x4]``; each conv reads a leading slice and
  writes its activation straight into the next one;
- **trunk windows** (CPU): each dense block runs window by window (``archs/windows.py``), so
  its five convs and their 192-channel input stay in cache;
- **tail windows** (CPU) or **tail strips** (elsewhere): the upsampling tail's maps are
  4**num_upsample times the trunk's; its convs see 1 px around, so windows with a 2 trunk-px
  halo give exactly the whole-map result. Full-width strips keep big GPU convs big.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..windows import check_for_cancel, even_spans, for_each_window, windows, worker_count
from .network import ResidualDenseBlock, RRDBNet

RDB_HALO = 5  # one px per 3x3 conv of a dense block
TAIL_HALO = 2  # trunk px each side: covers the tail's 3x3 convs at every resolution


@dataclass(frozen=True)
class RRDBNetPlan:
    trunk_window: int | None = 96  # dense-block window side; None: whole map. 96: the buffer (192 ch x 106^2) stays in cache
    whole_map_max_pixels: int = 192 * 192  # maps up to this size run whole even with trunk windows
    tail_window: int | None = 48  # tail window side in trunk px; None: full-width strips of tail_strip_bytes
    tail_strip_bytes: int = 256 << 20  # one tail strip's working set: large enough to keep convs efficient
    threads: int | None = None  # window workers; None: torch's intra-op thread count
    # whole maps in channels-last through the reference graph (torch.cat): the shared buffer's
    # channel slices would be strided in that layout. Faster with cuDNN (README: GPU check)
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device) -> RRDBNetPlan:
        """Windows on CPU (cache locality), whole maps and tail strips elsewhere."""
        if device.type == "cpu":
            return cls()
        return cls(trunk_window=None, tail_window=None, channels_last=device.type == "cuda")

    def run(self, net: RRDBNet, x: torch.Tensor) -> torch.Tensor:
        feat = net.conv_first(net.head(x))
        if self.channels_last:  # after the head: pixel-unshuffle returns the standard layout
            feat = feat.contiguous(memory_format=torch.channels_last)
        body = self._trunk(net, feat)
        feat = feat + net.conv_body(body)
        return net.crop(self._tail(net, feat), x)

    def window_steps(self, net: RRDBNet, height: int, width: int, element_size: int = 4) -> int:
        """Windows ``run`` walks for an input of this size (progress within a tile); 0: none."""
        h, w = -(-height // net.unshuffle), -(-width // net.unshuffle)  # the trunk map
        trunk = 0
        if self.trunk_in_windows(net, h * w):
            trunk = 3 * len(net.body) * len(even_spans(h, self.trunk_window)) * len(even_spans(w, self.trunk_window))
        up = 2**net.num_upsample
        if self.tail_window is not None:
            rows = cols = self.tail_window
        else:
            rows, cols = max(1, self.tail_strip_bytes // max(3 * net.num_feat * w * up * up * element_size, 1)), w
        tail = 0 if rows >= h and cols >= w else len(even_spans(h, rows)) * len(even_spans(w, cols))
        return trunk + tail

    def window_bytes(self, net: RRDBNet, element_size: int) -> int:
        """Memory of the per-window buffers, which does not grow with the image."""
        if self.tail_window is None:
            return self.tail_strip_bytes
        nf, grow = net.num_feat, net.num_grow_ch
        tail = (self.tail_window + 2 * TAIL_HALO) ** 2 * 3 * nf * 4**net.num_upsample
        trunk = 0 if self.trunk_window is None else (self.trunk_window + 2 * RDB_HALO) ** 2 * (2 * nf + 5 * grow)
        return max(trunk, tail) * element_size * worker_count(self.threads)  # one window per worker

    def map_channels(self, net: RRDBNet) -> int:
        """Trunk-resolution channels alive at the peak: four nf maps with trunk windows (its
        input, the RRDB input, two dense-block outputs), else the dense buffer and five nf maps."""
        if self.trunk_window is not None:
            return 4 * net.num_feat
        if self.channels_last:  # the reference graph's growing concatenations
            return 9 * net.num_feat + 4 * net.num_grow_ch
        return 6 * net.num_feat + 4 * net.num_grow_ch

    # ---- trunk --------------------------------------------------------------------------

    def trunk_in_windows(self, net: RRDBNet, map_pixels: int) -> bool:
        """Whether the trunk walks a map of ``map_pixels`` (trunk px) in windows, or runs it whole."""
        return self.trunk_window is not None and map_pixels > self.whole_map_max_pixels and len(net.body) > 0

    def _trunk(self, net: RRDBNet, feat: torch.Tensor) -> torch.Tensor:
        body = net.body
        if self.trunk_in_windows(net, feat.shape[-2] * feat.shape[-1]):
            return self._trunk_in_windows(body, feat)
        if self.channels_last:
            for rrdb in body:  # x4plus: 23 steps a cancel is seen between (the whole map has no windows)
                check_for_cancel()
                feat = rrdb(feat)
            return feat
        return _trunk_without_concat(body, feat)

    def _trunk_in_windows(self, body: nn.Sequential, feat: torch.Tensor) -> torch.Tensor:
        x = feat.clone()  # the RRDB input, updated in place
        a, b = torch.empty_like(feat), torch.empty_like(feat)
        for rrdb in body:
            self._dense_block_in_windows(rrdb.rdb1, x, a)
            self._dense_block_in_windows(rrdb.rdb2, a, b)
            self._dense_block_in_windows(rrdb.rdb3, b, a)
            x.add_(a, alpha=0.2)  # RRDB residual: input + 0.2 * rdb3(...)
        return x

    def _dense_block_in_windows(self, rdb: ResidualDenseBlock, x: torch.Tensor, out: torch.Tensor) -> None:
        """out = rdb(x), one window at a time; ``x`` is left unchanged (neighbours read its halo)."""
        nf, grow = rdb.conv1.in_channels, rdb.conv1.out_channels

        def one_window(win) -> None:
            buf = torch.empty((x.shape[0], nf + 4 * grow, *win.size), dtype=x.dtype, device=x.device)
            win.load(buf[:, :nf], x)
            height, width = win.size
            for k, conv in enumerate((rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4), start=1):
                channels = nf + (k - 1) * grow
                y = F.conv2d(buf[:, :channels, k - 1 : height - k + 1, k - 1 : width - k + 1], conv.weight, conv.bias)
                x_k = buf[:, channels : channels + grow, k : height - k, k : width - k]
                torch.ops.aten.leaky_relu.out(y.to(buf.dtype), 0.2, out=x_k)
                win.zero_outside_map(x_k, k)
            y = F.conv2d(buf[:, :, 4 : height - 4, 4 : width - 4], rdb.conv5.weight, rdb.conv5.bias)
            rows, cols = win.core
            torch.add(x[:, :, rows, cols], y.to(buf.dtype), alpha=0.2, out=out[:, :, rows, cols])

        side = self.trunk_window
        for_each_window(one_window, windows(x.shape[-2], x.shape[-1], (side, side), RDB_HALO), self.threads)

    # ---- tail ---------------------------------------------------------------------------

    def _tail(self, net: RRDBNet, feat: torch.Tensor) -> torch.Tensor:
        n, nf, h, w = feat.shape
        up = 2**net.num_upsample
        if self.tail_window is not None:
            rows = cols = self.tail_window
        else:
            row_bytes = 3 * nf * w * up * up * feat.element_size() * n
            rows, cols = max(1, self.tail_strip_bytes // max(row_bytes, 1)), w
        if rows >= h and cols >= w:
            return net.tail(feat)
        out = []  # allocated by the first window, which knows the output's dtype

        def one_window(win) -> None:
            part = net.tail(feat[:, :, win.source[0], win.source[1]])
            if not out:
                out.append(torch.empty((n, part.shape[1], h * up, w * up), dtype=part.dtype, device=part.device,
                                       memory_format=torch.channels_last))  # HWC: the engine's result as is
            (rows_in, cols_in), (src_rows, src_cols) = win.core, win.source
            top, left = (rows_in.start - src_rows.start) * up, (cols_in.start - src_cols.start) * up
            out[0][:, :, rows_in.start * up : rows_in.stop * up, cols_in.start * up : cols_in.stop * up] = part[
                :, :, top : top + (rows_in.stop - rows_in.start) * up, left : left + (cols_in.stop - cols_in.start) * up
            ]

        first, *rest = windows(h, w, (rows, cols), TAIL_HALO)
        for_each_window(one_window, [first], threads=1)
        # strips (off CPU) run one at a time: big convs that use the whole device
        for_each_window(one_window, rest, threads=self.threads if self.tail_window is not None else 1)
        return out[0]


def _trunk_without_concat(body: nn.Sequential, feat: torch.Tensor) -> torch.Tensor:
    """``body(feat)`` without ``torch.cat``: on CPU the concatenations were a quarter of
    x4plus's run time, and one buffer instead of the growing copies lowers peak memory."""
    if not body:
        return feat
    first = body[0].rdb1
    nf, grow = first.conv1.in_channels, first.conv1.out_channels
    buf = torch.empty((feat.shape[0], nf + 4 * grow, *feat.shape[2:]), dtype=feat.dtype, device=feat.device)
    x = buf[:, :nf]
    x.copy_(feat)
    for rrdb in body:
        check_for_cancel()
        block_input = x.clone()
        for rdb in (rrdb.rdb1, rrdb.rdb2, rrdb.rdb3):
            _dense_block_in_place(rdb, buf)
        torch.add(block_input, x, alpha=0.2, out=x)  # RRDB residual: input + 0.2 * rdb3(...)
    return x


def _dense_block_in_place(rdb: ResidualDenseBlock, buf: torch.Tensor) -> None:
    """``buf[:, :nf]`` holds the block input x; leaves ``x + 0.2 * conv5(...)`` there."""
    nf, grow = rdb.conv1.in_channels, rdb.conv1.out_channels
    for k, conv in enumerate((rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4)):
        width = nf + k * grow
        # under autocast the conv runs in half precision; the buffer keeps the trunk's dtype
        torch.ops.aten.leaky_relu.out(conv(buf[:, :width]).to(buf.dtype), 0.2, out=buf[:, width : width + grow])
    buf[:, :nf].add_(rdb.conv5(buf).to(buf.dtype), alpha=0.2)  # conv5 has read x already
