"""RRDBNet as an ncnn graph (realesrgan-ncnn-vulkan's x4plus / x2plus / anime_6B exports).

Matched backwards from the output: conv_last <- conv_hr <- (conv_upN <- nearest x2)* <- the
trunk sum ``feat + conv_body(RRDB chain(feat))``, ``feat = conv_first(input)`` or
``conv_first(Reorg(input))`` for the pixel-unshuffled x2/x1 models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...archs.rrdbnet import NAME
from .graph import TOL, Conv, Graph, Match, mode1_channel_order
from .param_file import Layer

RRDB_SLOPE = 0.2  # LeakyReLU slope inside RRDBNet
RESIDUAL_SCALE = 0.2  # RDB / RRDB residual scaling
LRELU = f"leakyrelu:{RRDB_SLOPE}"
# how this architecture's output is produced, for the error when no pattern recognises a graph
OUTPUT = "a Convolution (RRDBNet's conv_last)"


@dataclass
class RRDBNetMatch(Match):
    unshuffle: int = 1
    unshuffle_mode: int = 0
    num_upsample: int = 0
    num_block: int = 0


def recognises(graph: Graph, last: Layer | None) -> bool:
    """conv_last, with its fused or separate activation, produces the output."""
    return last is not None and last.type in ("Convolution", "ReLU")


def match(graph: Graph, out: str) -> RRDBNetMatch:
    m = RRDBNetMatch(NAME)
    trunk = _upsampler(graph, out, m)
    feat_blob, body_blob = _trunk_sum(graph, trunk)
    _conv_first(graph, feat_blob, m)
    body_conv = graph.conv(body_blob, None, "conv_body")
    m.convs[body_conv.layer.name] = "conv_body"
    _blocks(graph, body_conv.in_blob, feat_blob, m)
    return m


def graph_hyperparameters(m: RRDBNetMatch) -> dict:
    return {"num_block": m.num_block, "num_upsample": m.num_upsample, "unshuffle": m.unshuffle}


def fix_weights(m: RRDBNetMatch, key: str, layer: Layer, w: np.ndarray, b: np.ndarray,
                file_name: str) -> tuple[np.ndarray, np.ndarray]:
    """conv_first after a mode-1 Reorg reads its input channels in Reorg's order, not torch's
    pixel_unshuffle order: reorder its input dimension."""
    if key == "conv_first" and m.unshuffle > 1 and m.unshuffle_mode == 1:
        w = w[:, mode1_channel_order(w.shape[1], m.unshuffle)]
    return w, b


# ---- the pieces, output first ----------------------------------------------------------------

def _upsampler(graph: Graph, out: str, m: RRDBNetMatch) -> str:
    """conv_last <- conv_hr <- (conv_upN <- nearest x2 Interp)*: returns the trunk's output blob."""
    last = graph.conv(out, None, "conv_last")
    m.convs[last.layer.name] = "conv_last"
    hr = graph.conv(last.in_blob, LRELU, "conv_hr")
    m.convs[hr.layer.name] = "conv_hr"
    blob = hr.in_blob
    ups = []
    while (p := graph.prod(blob)) is not None and p.type in ("Convolution", "ReLU"):
        up = graph.conv(blob, LRELU, "an upsampling conv (conv_upN)")
        interp = graph.take(up.in_blob, ("Interp",), "a nearest x2 Interp before the upsampling conv")
        graph.nearest_up(interp, 2, "before conv_upN")
        ups.append(up)
        blob = interp.bottoms[0]
    for i, up in enumerate(reversed(ups), 1):
        m.convs[up.layer.name] = f"conv_up{i}"
    m.num_upsample = len(ups)
    return blob


def _trunk_sum(graph: Graph, blob: str) -> tuple[str, str]:
    """trunk = feat + conv_body(body(feat)): returns (feat, conv_body's output)."""
    terms = graph.sum_terms(blob, "the trunk sum conv_first + conv_body")
    if [abs(c - 1.0) < TOL for c, _ in terms] != [True, True]:
        raise graph.fail(graph.prod(blob), f"the trunk sum with coefficients 1, 1, found {[c for c, _ in terms]}")
    return _split_trunk(graph, terms, blob)


def _split_trunk(graph: Graph, terms: list[tuple[float, str]], blob: str) -> tuple[str, str]:
    """Which operand of the trunk sum is conv_first's output (feat) and which conv_body's."""
    found = []
    for i, (_, b) in enumerate(terms):
        p = graph.prod(b)
        if p is not None and p.type == "Convolution" and len(p.bottoms) == 1:
            src = graph.prod(p.bottoms[0])
            if graph.same(p.bottoms[0], graph.data) or (src is not None and src.type == "Reorg"):
                found.append(i)
    if len(found) != 1:
        raise graph.fail(graph.prod(blob), "the trunk sum of conv_first's output (read from the network input) and conv_body's output")
    feat = terms[found[0]][1]
    return feat, terms[1 - found[0]][1]


def _conv_first(graph: Graph, feat_blob: str, m: RRDBNetMatch) -> None:
    """conv_first reads the network input, or one pixel-unshuffle (Reorg) of it."""
    first = graph.conv(feat_blob, None, "conv_first")
    m.convs[first.layer.name] = "conv_first"
    if graph.same(first.in_blob, graph.data):
        return
    reorg = graph.take(first.in_blob, ("Reorg",),
                       "the network input, or a pixel-unshuffle (Reorg) of it, feeding conv_first")
    graph.one_in(reorg)
    if not graph.same(reorg.bottoms[0], graph.data) or reorg.p(0, 1) not in (2, 4) or reorg.p(1, 0) not in (0, 1):
        raise graph.fail(reorg, "a pixel-unshuffle of the network input: Reorg with stride 2 or 4 (0=), mode 0 or 1 (1=)")
    m.unshuffle, m.unshuffle_mode = reorg.p(0, 1), reorg.p(1, 0)


def _blocks(graph: Graph, blob: str, feat_blob: str, m: RRDBNetMatch) -> None:
    """The RRDB chain from conv_body's input back to conv_first's output."""
    blocks = []
    while not graph.same(blob, feat_blob):
        if len(blocks) > len(graph.layers):
            raise graph.fail(graph.prod(blob), "the RRDB chain to end at conv_first's output")
        block_in, rdbs = _rrdb(graph, blob)
        blocks.append(rdbs)
        blob = block_in
    for n, rdbs in enumerate(reversed(blocks)):
        for r, convs in enumerate(rdbs, 1):
            for j, conv in enumerate(convs, 1):
                m.convs[conv.layer.name] = f"body.{n}.rdb{r}.conv{j}"
    m.num_block = len(blocks)


def _rrdb(graph: Graph, out: str) -> tuple[str, list[list[Conv]]]:
    """``out = 0.2 * rdb3(rdb2(rdb1(x))) + x``: returns x and the RDBs' convs in order."""
    y, x = graph.scaled_residual(out, RESIDUAL_SCALE, "the end of an RRDB (0.2 * rdb3 + input)")
    rdbs = []
    for _ in range(3):
        y, convs = _rdb(graph, y)
        rdbs.append(convs)
    if not graph.same(y, x):
        raise graph.fail(graph.prod(out), "the RRDB's residual input to be the input of its first RDB")
    return x, rdbs[::-1]


def _rdb(graph: Graph, out: str) -> tuple[str, list[Conv]]:
    """``out = 0.2 * conv5(cat(x, x1..x4)) + x``, ``xk = lrelu(convk(cat(x, x1..x_{k-1})))``."""
    y, x = graph.scaled_residual(out, RESIDUAL_SCALE, "the end of a residual dense block (0.2 * conv5 + input)")
    conv5 = graph.conv(y, None, "RDB conv5")
    convs = [conv5]
    cat = graph.take(conv5.in_blob, ("Concat",), "the Concat(x, x1, x2, x3, x4) feeding RDB conv5")
    if len(cat.bottoms) != 5 or cat.p(0, 0) != 0 or not graph.same(cat.bottoms[0], x):
        raise graph.fail(cat, "a channel Concat (0=0) of the RDB input and conv1..conv4 outputs, in that order")
    expected_inputs = cat.bottoms
    for k in range(4, 0, -1):
        conv = graph.conv(expected_inputs[k], LRELU, f"RDB conv{k}")
        convs.insert(0, conv)
        if k == 1:
            if not graph.same(conv.in_blob, x):
                raise graph.fail(conv.layer, "RDB conv1 to read the block input")
        else:
            sub = graph.take(conv.in_blob, ("Concat",), f"a Concat feeding RDB conv{k}")
            if sub.p(0, 0) != 0 or len(sub.bottoms) != k or not all(
                graph.same(a, b) for a, b in zip(sub.bottoms, expected_inputs[:k])
            ):
                raise graph.fail(sub, f"a channel Concat of the RDB input and conv1..conv{k - 1} outputs, in that order")
    return x, convs
