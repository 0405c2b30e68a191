"""RRDBNet on the ncnn backend (``runtimes/ncnn/runtime.py``): every dense block, and the
upsampling tail, is an ncnn stage run window by window; the cheap convs at trunk resolution
(``conv_first``, ``conv_body``: 0.2 % of the work) and the residual sums stay in torch.
Equal to the reference network to fp32 rounding (tests: against ``forward`` and spandrel)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...archs.rrdbnet.inference import RDB_HALO
from ...archs.rrdbnet.network import ResidualDenseBlock, RRDBNet
from ...archs.windows import even_spans, worker_count
from .runtime import NCNN_WINDOW_FACTOR, Stage, StageCache, into, ncnn_weight_bytes, run_in_windows
from .writer import GraphWriter

NCNN_TAIL_HALO = 3  # trunk px: the tail's convs reach 2.25 trunk px (1 at 2x, 3 at 4x, ...) at most


@dataclass(frozen=True)
class RRDBNetNcnnPlan:
    trunk_window: int = 96  # dense-block window side (trunk px): 64 measured slower (more halo), 128 alike
    tail_window: int = 32  # tail window side in trunk px: its maps are 4**num_upsample times larger, and so is ncnn's memory
    threads: int | None = None  # window workers; None: torch's intra-op thread count
    backend = "ncnn"

    def run(self, net: RRDBNet, x: torch.Tensor) -> torch.Tensor:
        dense_blocks, tail = _STAGES.get(net)
        feat = net.conv_first(net.head(x)).float()
        body = self._trunk(dense_blocks, feat)
        feat = feat + net.conv_body(body)
        del body
        up = 2**net.num_upsample
        n, _, h, w = feat.shape
        # channels-last: its HWC view is the engine's result as is
        out = torch.empty((n, net.num_out_ch, h * up, w * up), memory_format=torch.channels_last)
        run_in_windows(tail, feat, self.tail_window, NCNN_TAIL_HALO, into(out, up), up, self.threads, release=True)
        return net.crop(out, x)

    def _trunk(self, dense_blocks: list[tuple[Stage, Stage, Stage]], feat: torch.Tensor) -> torch.Tensor:
        x = feat.clone()  # the RRDB input, updated in place
        a, b = torch.empty_like(feat), torch.empty_like(feat)
        side = self.trunk_window
        for rdb1, rdb2, rdb3 in dense_blocks:
            # pools kept between these small windows: handing them back each time measured 10-20 % slower
            run_in_windows(rdb1, x, side, RDB_HALO, into(a), threads=self.threads)
            run_in_windows(rdb2, a, side, RDB_HALO, into(b), threads=self.threads)
            run_in_windows(rdb3, b, side, RDB_HALO, into(a), threads=self.threads)
            x.add_(a, alpha=0.2)  # RRDB residual: input + 0.2 * rdb3(...)
        return x

    def window_steps(self, net: RRDBNet, height: int, width: int, element_size: int = 4) -> int:
        """Windows ``run`` walks for an input of this size (progress within a tile)."""
        h, w = -(-height // net.unshuffle), -(-width // net.unshuffle)  # the trunk map
        trunk = len(even_spans(h, self.trunk_window)) * len(even_spans(w, self.trunk_window))
        tail = len(even_spans(h, self.tail_window)) * len(even_spans(w, self.tail_window))
        return 3 * len(net.body) * trunk + tail

    def window_bytes(self, net: RRDBNet, element_size: int) -> int:
        """Per worker: one window's ncnn blobs and Winograd buffers (against the measured peak:
        tests/test_ncnn_backend.py), plus the ncnn copy of the weights."""
        nf, grow = net.num_feat, net.num_grow_ch
        up = 4**net.num_upsample
        trunk = (self.trunk_window + 2 * RDB_HALO) ** 2 * (nf + 4 * grow) * 4
        tail = (self.tail_window + 2 * NCNN_TAIL_HALO) ** 2 * nf * up * 4
        per_worker = max(trunk, tail) * NCNN_WINDOW_FACTOR
        return int(per_worker * worker_count(self.threads) + ncnn_weight_bytes(net))

    def map_channels(self, net: RRDBNet) -> int:
        """Trunk-resolution channels alive at the peak: the first features, the RRDB input and
        two dense-block outputs."""
        return 4 * net.num_feat


PLAN = RRDBNetNcnnPlan


def _dense_block(rdb: ResidualDenseBlock) -> Stage:
    g = GraphWriter()
    feeds = [g.data]
    for conv in (rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4):
        feeds.append(g.conv(feeds[0] if len(feeds) == 1 else g.concat(feeds), conv.weight, conv.bias, 0.2))
    out = g.eltwise_sum([g.conv(g.concat(feeds), rdb.conv5.weight, rdb.conv5.bias), g.data], [0.2, 1.0])
    return Stage(g, out)


def _tail(net: RRDBNet) -> Stage:
    g = GraphWriter()
    h = g.data
    for i in range(1, net.num_upsample + 1):
        conv = getattr(net, f"conv_up{i}")
        h = g.conv(g.interp(h, 1, 2.0), conv.weight, conv.bias, 0.2)  # Interp 1: nearest, as F.interpolate
    h = g.conv(h, net.conv_hr.weight, net.conv_hr.bias, 0.2)
    return Stage(g, g.conv(h, net.conv_last.weight, net.conv_last.bias))


def _build(net: RRDBNet):
    blocks = [(_dense_block(r.rdb1), _dense_block(r.rdb2), _dense_block(r.rdb3)) for r in net.body]
    return blocks, _tail(net)


_STAGES = StageCache(_build)
