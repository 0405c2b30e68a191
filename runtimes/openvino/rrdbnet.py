"""RRDBNet on the OpenVINO backend (``runtimes/openvino/runtime.py``): every RRDB is one
OpenVINO stage over the whole trunk map (exact: no window cut, no halo), and the upsampling
tail one stage run window by window (its maps are 4**num_upsample times the trunk's); the
cheap convs at trunk resolution (``conv_first``, ``conv_body``: 0.2 % of the work) and the
residual sum stay in torch. Equal to the reference network to fp32 rounding (tests)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...archs.rrdbnet.network import RRDB, ResidualDenseBlock, RRDBNet
from ...archs.windows import even_spans
from ..ncnn.rrdbnet import NCNN_TAIL_HALO
from ..ncnn.runtime import StageCache, into, run_in_windows
from . import graph
from .runtime import Stage

# measured (tests/test_openvino_backend.py, against the process's peak RSS): OpenVINO's live
# memory in a stage is about this many times its input and output maps (its padded, blocked
# copies and the dense block's concatenation buffers)
OPENVINO_MAP_FACTOR = 3
# RRDBs per OpenVINO stage: fewer, larger stages have fewer hand-offs through torch; the
# host's cancel check and progress still come between them (x4plus: 4 stages and the tail)
RRDBS_PER_STAGE = 6
# measured: a compiled stage holds about 5x its fp32 weights (OpenVINO's own constants, their
# packed copies, its memory arenas) whatever the map size (tests: the memory estimate)
OPENVINO_WEIGHT_FACTOR = 6


@dataclass(frozen=True)
class RRDBNetOpenVINOPlan:
    tail_window: int | None = 64  # tail window side in trunk px; None: the whole map at once
    backend = "openvino"

    def run(self, net: RRDBNet, x: torch.Tensor) -> torch.Tensor:
        rrdbs, tail = _STAGES.get(net)
        feat = net.conv_first(net.head(x)).float()
        n, _, h, w = feat.shape
        body = feat
        for stage in rrdbs:  # each a whole-map window: the host's cancel check and progress between them
            out = torch.empty_like(feat)
            run_in_windows(stage, body, max(h, w), 0, into(out), threads=1)
            body = out
        feat = feat + net.conv_body(body)
        del body
        return net.crop(self.run_tail(tail, net, feat), x)

    def run_tail(self, tail: Stage, net: RRDBNet, feat: torch.Tensor) -> torch.Tensor:
        n, _, h, w = feat.shape
        up = 2**net.num_upsample
        # channels-last: its HWC view is the engine's result as is
        out = torch.empty((n, net.num_out_ch, h * up, w * up), memory_format=torch.channels_last)
        side = max(h, w) if self.tail_window is None else self.tail_window
        run_in_windows(tail, feat, side, NCNN_TAIL_HALO, into(out, up), up, threads=1)
        return out

    def window_steps(self, net: RRDBNet, height: int, width: int, element_size: int = 4) -> int:
        """Stages and windows ``run`` walks for an input of this size (progress within a tile)."""
        h, w = -(-height // net.unshuffle), -(-width // net.unshuffle)  # the trunk map
        tail = 1 if self.tail_window is None else len(even_spans(h, self.tail_window)) * len(even_spans(w, self.tail_window))
        return len(trunk_groups(net)) + tail

    def window_bytes(self, net: RRDBNet, element_size: int) -> int:
        """A tail window's OpenVINO maps, plus what its compiled stages hold beside the weights."""
        if self.tail_window is None:
            tail = 0
        else:
            tail = (self.tail_window + 2 * NCNN_TAIL_HALO) ** 2 * net.num_feat * 4**net.num_upsample * 4 * OPENVINO_MAP_FACTOR
        return int(tail + OPENVINO_WEIGHT_FACTOR * _weight_bytes(net))

    def map_channels(self, net: RRDBNet) -> int:
        """Trunk-resolution fp32 channels alive at the peak: the first features, the RRDB input
        and output (torch), and OpenVINO's copies inside an RRDB (its input, the dense block's
        concatenation, its output)."""
        nf, grow = net.num_feat, net.num_grow_ch
        return 3 * nf + OPENVINO_MAP_FACTOR * (2 * nf + 4 * grow)

    def whole_tail_channels(self, net: RRDBNet) -> int:
        """Output-resolution channels a whole-map tail holds (0 with tail windows)."""
        return 0 if self.tail_window is not None else OPENVINO_MAP_FACTOR * net.num_feat


PLAN = RRDBNetOpenVINOPlan


def _weight_bytes(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters()) * 4


def _dense_block(x, rdb: ResidualDenseBlock):
    feeds = [x]
    for conv in (rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4):
        feeds.append(graph.conv(feeds[0] if len(feeds) == 1 else graph.concat(feeds), conv.weight, conv.bias, 0.2))
    return graph.scaled_add(graph.conv(graph.concat(feeds), rdb.conv5.weight, rdb.conv5.bias), 0.2, x)


def _rrdb(x, rrdb: RRDB):
    out = _dense_block(_dense_block(_dense_block(x, rrdb.rdb1), rrdb.rdb2), rrdb.rdb3)
    return graph.scaled_add(out, 0.2, x)


def rrdb_stage(rrdbs: list[RRDB], num_feat: int) -> Stage:
    """Consecutive RRDBs as one stage."""
    x = graph.data(num_feat)
    h = x
    for rrdb in rrdbs:
        h = _rrdb(h, rrdb)
    return Stage(graph.model(h, x))


def tail_stage(net: RRDBNet) -> Stage:
    x = graph.data(net.num_feat)
    h = x
    for i in range(1, net.num_upsample + 1):
        conv = getattr(net, f"conv_up{i}")
        h = graph.conv(graph.nearest_2x(h), conv.weight, conv.bias, 0.2)
    h = graph.conv(h, net.conv_hr.weight, net.conv_hr.bias, 0.2)
    return Stage(graph.model(graph.conv(h, net.conv_last.weight, net.conv_last.bias), x))


def trunk_groups(net: RRDBNet) -> list[list[RRDB]]:
    """The RRDBs in RRDBS_PER_STAGE near-equal groups (x4plus: 6, 6, 6, 5)."""
    blocks = list(net.body)
    count = -(-len(blocks) // RRDBS_PER_STAGE)
    return [blocks[span] for span in even_spans(len(blocks), -(-len(blocks) // max(count, 1)))] if blocks else []


def _build(net: RRDBNet):
    return [rrdb_stage(group, net.num_feat) for group in trunk_groups(net)], tail_stage(net)


_STAGES = StageCache(_build)
