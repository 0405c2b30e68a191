"""SRVGGNetCompact as an ncnn graph (realesr-animevideov3 and other compact exports).

Matched backwards from the output: ``PixelShuffle(last conv) + nearest_up(input)``, then the
chain of convs, each with the same activation (PReLU layer, or ReLU / LeakyReLU fused or
separate), back to the network input.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...archs.srvgg import NAME
from ...errors import ModelLoadError
from .graph import Conv, Graph, Match, act_text, mode1_channel_order
from .param_file import Layer

SRVGG_LEAKY_SLOPE = 0.1
# how this architecture's output is produced, for the error when no pattern recognises a graph
OUTPUT = "a BinaryOp adding a PixelShuffle and an upscaled input (SRVGGNetCompact)"


@dataclass
class SRVGGMatch(Match):
    shuffle: int = 1
    shuffle_mode: int = 0


def recognises(graph: Graph, last: Layer | None) -> bool:
    """A BinaryOp with a PixelShuffle among its operands produces the output."""
    return last is not None and last.type == "BinaryOp" and any(
        (p := graph.prod(b)) is not None and p.type == "PixelShuffle" for b in last.bottoms
    )


def match(graph: Graph, out: str) -> SRVGGMatch:
    m = SRVGGMatch(NAME)
    ps = _output_sum(graph, out, m)
    convs, acts = _conv_chain(graph, ps.bottoms[0])
    m.act_type = _act_type(graph, convs, acts)
    for i, conv in enumerate(convs):
        m.convs[conv.layer.name] = f"body.{2 * i}"
        if conv.act == "prelu":
            m.prelus[conv.act_layer.name] = f"body.{2 * i + 1}"
    return m


def graph_hyperparameters(m: SRVGGMatch) -> dict:
    return {"upscale": m.shuffle, "act_type": m.act_type}


def fix_weights(m: SRVGGMatch, key: str, layer: Layer, w: np.ndarray, b: np.ndarray,
                file_name: str) -> tuple[np.ndarray, np.ndarray]:
    """A mode-1 PixelShuffle reads offset k of channel c from ``k*C + c`` (the same channel
    permutation as Reorg mode 1, seen from the other side): reorder the last conv's outputs
    into torch's pixel_shuffle order."""
    if m.shuffle_mode == 1 and key == _last_body_key(m):
        out = w.shape[0]
        if out % (m.shuffle * m.shuffle):
            raise ModelLoadError(f"{file_name}: {layer.label()}: {out} outputs cannot be pixel-shuffled by {m.shuffle}")
        order = mode1_channel_order(out, m.shuffle)
        w, b = w[order], b[order]
    return w, b


def _last_body_key(m: SRVGGMatch) -> str:
    return f"body.{2 * (len(m.convs) - 1)}"


# ---- the pieces, output first ----------------------------------------------------------------

def _output_sum(graph: Graph, out: str, m: SRVGGMatch) -> Layer:
    """``out = PixelShuffle(last conv) + nearest_up(input)``: returns the PixelShuffle."""
    add = graph.take(out, ("BinaryOp",), "the final add (BinaryOp 0=0)")
    if add.p(0, 0) != 0 or add.p(1, 0) != 0 or len(add.bottoms) != 2:
        raise graph.fail(add, "the final residual add: BinaryOp add (0=0) of two blobs")
    first = graph.prod(add.bottoms[0])
    order = [0, 1] if first is not None and first.type == "PixelShuffle" else [1, 0]
    ps = graph.take(add.bottoms[order[0]], ("PixelShuffle",), "the PixelShuffle of the last conv")
    up = graph.take(add.bottoms[order[1]], ("Interp",), "a nearest upscale (Interp) of the network input")
    graph.one_in(ps)
    r = ps.p(0, 1)
    if not isinstance(r, int) or r < 1 or ps.p(1, 0) not in (0, 1):
        raise graph.fail(ps, "a PixelShuffle with an integer factor (0=) and mode 0 or 1 (1=)")
    m.shuffle, m.shuffle_mode = r, ps.p(1, 0)
    graph.nearest_up(up, r, "the upscaled input added to the PixelShuffle output")
    if not graph.same(up.bottoms[0], graph.data):
        raise graph.fail(up, "the Interp to upscale the network input")
    return ps


def _conv_chain(graph: Graph, blob: str) -> tuple[list[Conv], list[Conv]]:
    """The last conv (no activation) producing ``blob``, and before it the activated body convs
    back to the network input: (all convs in order, the activated ones in order)."""
    convs = [graph.conv(blob, None, "the last conv")]
    acts: list[Conv] = []
    blob = convs[0].in_blob
    while not graph.same(blob, graph.data):
        if len(convs) > len(graph.layers):
            raise graph.fail(graph.prod(blob), "the conv chain to start at the network input")
        p = graph.prod(blob)
        if p is not None and p.type == "PReLU":
            prelu = graph.take(blob, ("PReLU",), "a PReLU")
            graph.one_in(prelu)
            conv = graph.conv(prelu.bottoms[0], None, "a body conv before the PReLU")
            conv.act, conv.act_layer = "prelu", prelu
        else:
            conv = graph.conv(blob, "any", "a body conv with its activation")
        acts.insert(0, conv)
        convs.insert(0, conv)
        blob = conv.in_blob
    return convs, acts


def _act_type(graph: Graph, convs: list[Conv], acts: list[Conv]) -> str:
    """The one activation all body convs share, as SRVGGNetCompact's act_type."""
    kinds = {c.act for c in acts}
    if len(acts) < 1 or len(kinds) != 1:
        raise graph.fail(convs[0].layer, f"SRVGGNetCompact convs all with the same activation, found {sorted(map(str, kinds))}")
    kind = kinds.pop()
    if kind not in ("prelu", "relu", f"leakyrelu:{SRVGG_LEAKY_SLOPE}"):
        raise graph.fail(acts[0].act_layer or acts[0].layer,
                         f"a PReLU, ReLU or LeakyReLU({SRVGG_LEAKY_SLOPE}) activation, found {act_text(kind)}")
    return kind.split(":")[0]

