"""RRDBNet: the ESRGAN / Real-ESRGAN generator (basicsr key layout).

Shapes are read from the weights by ``sniff``; this module only builds the network.
Scale = 2**num_upsample / unshuffle: Real-ESRGAN x4plus has two upsample stages and no
unshuffle, RealESRGAN_x2plus pixel-unshuffles by 2 first, old-style x2/x1 ESRGAN models
simply have one / zero upsample stages.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import for_each_window, windows


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
        h, w = x.shape[-2:]
        if self.unshuffle > 1:
            x = _pad_to_multiple(x, self.unshuffle)
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        body = self.body(feat) if torch.is_grad_enabled() else _trunk_for_inference(self.body, feat)
        feat = feat + self.conv_body(body)
        out = self._tail(feat) if torch.is_grad_enabled() else self._tail_in_windows(feat)
        if self.unshuffle > 1:  # crop away what the padding added
            s = 2**self.num_upsample // self.unshuffle
            out = out[..., : h * s, : w * s]
        return out


    def _tail(self, feat: torch.Tensor) -> torch.Tensor:
        """Upsampling stages, HR conv and last conv."""
        for i in range(1, self.num_upsample + 1):
            conv_up = getattr(self, f"conv_up{i}")
            feat = self.lrelu(conv_up(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))

    def _tail_in_windows(self, feat: torch.Tensor, window: tuple[int, int] | None = None) -> torch.Tensor:
        """``_tail`` window by window over the trunk features, for inference.

        The tail's feature maps are 4**num_upsample times the trunk's: they dominated peak
        memory (x4plus: 3 x 64 channels at 16x the pixels) and, on CPU, ran at half speed when
        they did not fit in cache. Its convolutions only see 1 px around, so a window plus
        TAIL_HALO trunk px on each side (clipped at the map's edge, where the convs' own zero
        padding is the right one) gives exactly the whole-map result. On CPU the windows are
        TAIL_BLOCK px squares (x4plus tail: 53 -> 112 GFLOP/s measured); elsewhere they are
        full-width strips of TAIL_STRIP_BYTES, which keeps big GPU convs big.
        """
        n, nf, h, w = feat.shape
        up = 2**self.num_upsample
        if window is not None:
            rows, cols = window
        elif feat.device.type == "cpu":
            rows = cols = TAIL_BLOCK
        else:
            row_bytes = 3 * nf * w * up * up * feat.element_size() * n
            rows, cols = max(1, TAIL_STRIP_BYTES // max(row_bytes, 1)), w
        if rows >= h and cols >= w:
            return self._tail(feat)
        out = []  # allocated by the first window, which knows the output's dtype

        def one_window(win) -> None:
            part = self._tail(feat[:, :, win.source[0], win.source[1]])
            if not out:
                out.append(torch.empty((n, part.shape[1], h * up, w * up), dtype=part.dtype, device=part.device))
            (rows_in, cols_in), (src_rows, src_cols) = win.core, win.source
            top, left = (rows_in.start - src_rows.start) * up, (cols_in.start - src_cols.start) * up
            out[0][:, :, rows_in.start * up : rows_in.stop * up, cols_in.start * up : cols_in.stop * up] = part[
                :, :, top : top + (rows_in.stop - rows_in.start) * up, left : left + (cols_in.stop - cols_in.start) * up
            ]

        first, *rest = windows(h, w, (rows, cols), TAIL_HALO)
        for_each_window(one_window, [first])
        # off CPU: full-width strips, one at a time, big convs that use the whole device
        for_each_window(one_window, rest, parallel=feat.device.type == "cpu")
        return out[0]


TAIL_STRIP_BYTES = 256 << 20  # working set of one tail strip off CPU; large enough to keep convs efficient
TAIL_BLOCK = 48  # CPU tail window side in trunk px (32-64 measured within 5 %)
TAIL_HALO = 2  # trunk rows each side: covers the tail's 3x3 convs at every resolution


BLOCK = 96  # CPU trunk block side: the dense buffer of a window (192 ch x 106^2 px) stays in cache
RDB_HALO = 5  # one px per 3x3 conv of a dense block
WHOLE_MAP_MAX_PIXELS = 192 * 192  # up to here the whole map ran as fast as blocks (measured)


def _trunk_for_inference(body: nn.Sequential, feat: torch.Tensor) -> torch.Tensor:
    if feat.device.type == "cpu" and feat.shape[-2] * feat.shape[-1] > WHOLE_MAP_MAX_PIXELS and len(body):
        return _body_in_blocks(body, feat)
    return _body_without_concat(body, feat)


def _body_in_blocks(body: nn.Sequential, feat: torch.Tensor) -> torch.Tensor:
    """The RRDB trunk for CPU inference on large maps: each dense block runs window by window
    (``archs/blocks.py``), so its five convs and their 192-channel input stay in cache. x4plus
    on a 768x512 map: 1.4-1.6x faster per dense block than the whole-map path (README)."""
    x = feat.clone()  # the RRDB input, updated in place
    a, b = torch.empty_like(feat), torch.empty_like(feat)
    for rrdb in body:
        _dense_block_in_windows(rrdb.rdb1, x, a)
        _dense_block_in_windows(rrdb.rdb2, a, b)
        _dense_block_in_windows(rrdb.rdb3, b, a)
        x.add_(a, alpha=0.2)  # RRDB residual: input + 0.2 * rdb3(...)
    return x


def _dense_block_in_windows(rdb: ResidualDenseBlock, x: torch.Tensor, out: torch.Tensor) -> None:
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

    for_each_window(one_window, windows(x.shape[-2], x.shape[-1], (BLOCK, BLOCK), RDB_HALO))


def _body_without_concat(body: nn.Sequential, feat: torch.Tensor) -> torch.Tensor:
    """The RRDB trunk for inference, same arithmetic as ``body(feat)`` without ``torch.cat``.

    All dense blocks share one buffer [x | x1 | x2 | x3 | x4]: every conv reads a leading slice
    (contiguous for a batch of one), its activation is written straight into the next slice,
    and the block result overwrites x in place for the next block. On CPU the concatenations
    were a quarter of x4plus's run time (torch.profiler), and one buffer instead of the
    growing copies also lowers peak memory.
    """
    if not body:
        return feat
    first = body[0].rdb1
    nf, grow = first.conv1.in_channels, first.conv1.out_channels
    buf = torch.empty((feat.shape[0], nf + 4 * grow, *feat.shape[2:]), dtype=feat.dtype, device=feat.device)
    x = buf[:, :nf]
    x.copy_(feat)
    for rrdb in body:
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


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right so pixel-unshuffle fits, the way spandrel's descriptor pads (so calling
    the module directly or through the descriptor agrees)."""
    h, w = x.shape[-2:]
    return pad_bottom_right(x, -h % multiple, -w % multiple)


def pad_bottom_right(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Reflect as far as the image allows (reflect needs pad < size), replicate the rest."""
    h, w = x.shape[-2:]
    reflect_h, reflect_w = min(pad_h, h - 1), min(pad_w, w - 1)
    if reflect_h or reflect_w:
        x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
    if pad_h > reflect_h or pad_w > reflect_w:
        x = F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return x
