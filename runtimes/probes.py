"""What ``auto`` times (``backend.py``): for one network and one shape class, a representative
piece of it on every candidate that could win, each as the engine would run it:

- ``torch``: our windowed CPU plans;
- ``torch-whole``: our torch plan over the whole map (what ComfyUI core's plain forward
  computes, without its concatenation copies);
- ``ncnn`` (fp32 only) and ``openvino``: the other backends' plans;

each in fp32, and in bf16 too where ``auto`` precision may pick it. An RRDBNet's piece is one
RRDB (x4plus: 23 of them are 92 % of the work) over the trunk map of a probe-sized input; an
SRVGGNetCompact's is the whole network on such an input.

Each piece is a ``Probe``, timed once, first call included: that is what a single image pays
(torch's and ncnn's one-time setup is milliseconds against a probe's 0.1-1 s). A piece whose
first call compiles (OpenVINO's stages) runs a second time, and the difference is its compile:
a forward's estimate is then the compile once plus the compute grown from the piece's map to the
shape class's (timed as one, the compile was grown with the map and misranked OpenVINO:
README, "The same on an Intel Xeon with AMX"). A warm-up call for every candidate doubled the
probes' cost, which a first image pays on top of its own run; the second call of a compiled
piece costs its compute alone.
"""
from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..archs.rrdbnet.inference import RRDBNetPlan
from ..archs.srvgg.inference import SRVGGPlan
from . import ncnn, openvino

PROBE_MIN_SIDE = 32  # input px
PROBE_MAX_SIDE = {"RRDBNet": 192, "SRVGGNetCompact": 384}  # input px: the probes' cost stays a fraction of an image's
FIDELITY_DB = 50.0  # bf16 against fp32 on a real photo: below this, auto keeps fp32
SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.png"  # a real photo, shipped


TAIL_PROBE_SHRINK = 2  # the tail is timed on a map this many times smaller a side (x4plus: its maps are 16x the trunk's)


@dataclass
class Probe:
    run: Callable[[], None]
    weight: float = 1.0  # how many times a whole forward runs this piece
    scale: float = 1.0  # the shape class's pixels over the piece's: its compute grows by this, a compile does not
    compiles: bool = False  # its first call compiles (OpenVINO): timed twice, the compile kept apart from the compute


def shape_class(net: torch.nn.Module, arch_name: str, pixels: int | None) -> int:
    """The shape class of an input of ``pixels``: the next power of two of its side (a square's),
    at least PROBE_MIN_SIDE. The probes run at this side up to PROBE_MAX_SIDE; past it, the
    plans walk the windows they would walk on the real input, over a smaller map."""
    side = math.sqrt(pixels) if pixels else 1024
    return max(PROBE_MIN_SIDE, 2 ** math.ceil(math.log2(max(side, 1))))


def network_key(arch_name: str, net: torch.nn.Module) -> tuple:
    """What decides the candidates' relative speed besides the input size."""
    if arch_name == "RRDBNet":
        return net.num_feat, net.num_grow_ch, len(net.body), net.num_upsample, net.unshuffle
    return net.num_feat, net.act_type, net.upscale, net.receptive_radius


def candidates(arch_name: str, net: torch.nn.Module, side: int, dtypes, runnable: Callable[[str, torch.dtype], bool]) -> dict:
    """{(run name, dtype): [Probe, ...]} for the candidates ``runnable`` allows: a forward's
    time is about the sum of each probe's time times its weight."""
    make = {"RRDBNet": _rrdbnet_probes, "SRVGGNetCompact": _srvgg_probes}[arch_name]
    out = {}
    for dtype in dtypes:
        for name, probe in make(net, side, dtype).items():
            if runnable(name, dtype):
                out[(name, dtype)] = probe
    return out


def _autocast(dtype: torch.dtype, fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            fn()

    return run


def _rrdbnet_probes(net, side: int, dtype: torch.dtype) -> dict:
    """One RRDB (weighted by the number of RRDBs) and the upsampling tail, on a trunk map of a
    ``side`` px input."""
    trunk = max(1, min(side, PROBE_MAX_SIDE["RRDBNet"]) // net.unshuffle)
    grow = (side / net.unshuffle / trunk) ** 2  # the shape class's trunk map over the probe's
    feat = torch.rand(1, net.num_feat, trunk, trunk)
    small = feat[..., : max(1, trunk // TAIL_PROBE_SHRINK), : max(1, trunk // TAIL_PROBE_SHRINK)].contiguous()
    tail_weight = (trunk / small.shape[-1]) ** 2
    one = types.SimpleNamespace(body=net.body[:1])  # a one-RRDB trunk for the torch plans
    blocks = len(net.body)
    windowed, whole = RRDBNetPlan(), RRDBNetPlan(trunk_window=None, tail_window=None)
    if windowed.trunk_in_windows(one, (side // net.unshuffle) ** 2):  # the real input's trunk walks windows
        windowed = RRDBNetPlan(whole_map_max_pixels=0)
    probes = {"torch-whole": [Probe(_autocast(dtype, lambda: whole._trunk(one, feat)), blocks, grow),
                              Probe(_autocast(dtype, lambda: whole._tail(net, small)), tail_weight, grow)]}
    probes["torch"] = [Probe(_autocast(dtype, lambda: windowed._trunk(one, feat)), blocks, grow),
                       Probe(_autocast(dtype, lambda: windowed._tail(net, small)), tail_weight, grow)]
    if not windowed.trunk_in_windows(one, trunk * trunk):  # the same trunk run: timed once
        probes["torch"][0] = probes["torch-whole"][0]
    if dtype == torch.float32 and ncnn.available():
        stages, tail = _ncnn_stages(net)
        on_ncnn = ncnn.rrdbnet.RRDBNetNcnnPlan()
        probes["ncnn"] = [Probe(lambda: on_ncnn._trunk([stages], feat), blocks, grow),
                          Probe(lambda: _ncnn_tail(on_ncnn, tail, net, small), tail_weight, grow)]
    if openvino.available():  # new stages: their first call compiles, as each stage of a new shape does
        openvino.runtime.warm_up()
        # one RRDB, compiled and run: compiling scales with the weights, so blocks x this is
        # about the trunk's stages compiled and run once
        rrdb = openvino.rrdbnet.rrdb_stage(list(net.body[:1]), net.num_feat)
        ov_tail, on_openvino = openvino.rrdbnet.tail_stage(net), openvino.rrdbnet.RRDBNetOpenVINOPlan()
        probes["openvino"] = [Probe(_autocast(dtype, lambda: rrdb.run(feat[0].numpy())), blocks, grow, compiles=True),
                              Probe(_autocast(dtype, lambda: on_openvino.run_tail(ov_tail, net, small)), tail_weight, grow,
                                    compiles=True)]
    if not blocks:
        for parts in probes.values():
            del parts[0]
    return probes


def _ncnn_tail(plan, tail, net, feat: torch.Tensor) -> None:
    up = 2**net.num_upsample
    out = torch.empty((1, net.num_out_ch, feat.shape[-2] * up, feat.shape[-1] * up))
    tail_halo = ncnn.rrdbnet.NCNN_TAIL_HALO
    ncnn.runtime.run_in_windows(tail, feat, plan.tail_window, tail_halo, ncnn.runtime.into(out, up), up, release=True)


_ncnn_built: dict = {}


def _ncnn_stages(net):
    """Built once per network (not timed: the ncnn backend builds its stages once per network)."""
    if id(net) not in _ncnn_built:
        _ncnn_built.clear()
        rrdb = net.body[0] if len(net.body) else None
        blocks = None if rrdb is None else tuple(ncnn.rrdbnet._dense_block(r) for r in (rrdb.rdb1, rrdb.rdb2, rrdb.rdb3))
        _ncnn_built[id(net)] = blocks, ncnn.rrdbnet._tail(net)
    return _ncnn_built[id(net)]


def _srvgg_probes(net, side: int, dtype: torch.dtype) -> dict:
    """The whole network on a ``side`` px input."""
    small = min(side, PROBE_MAX_SIDE["SRVGGNetCompact"])
    grow = (side / small) ** 2
    x = torch.rand(1, net.num_in_ch, small, small)
    windowed, whole = SRVGGPlan(whole_map_max_pixels=0), SRVGGPlan(window=None)
    probes = {"torch-whole": [Probe(_autocast(dtype, lambda: whole.run(net, x)), scale=grow)]}
    probes["torch"] = [Probe(_autocast(dtype, lambda: windowed.run(net, x)), scale=grow)] \
        if SRVGGPlan().in_windows(side * side) else probes["torch-whole"]
    if dtype == torch.float32 and ncnn.available():
        plan = ncnn.srvgg.SRVGGNcnnPlan()
        plan.run(net, x[..., :8, :8])  # builds its stage once per network, as the engine's run would
        probes["ncnn"] = [Probe(lambda: plan.run(net, x), scale=grow)]
    if openvino.available():
        openvino.runtime.warm_up()
        stage = openvino.srvgg.body_stage(net)  # new: its first call compiles
        probes["openvino"] = [Probe(_autocast(dtype, lambda: stage.run(x[0].numpy())), scale=grow, compiles=True)]
    return probes


def bf16_fidelity(net: torch.nn.Module, plan) -> float:
    """PSNR (dB) of ``plan`` in bf16 against the fp32 reference network on a real photo (a
    crop of the shipped sample), both clamped to 0..1 as the engine's output is."""
    import numpy as np
    from PIL import Image

    side = 64
    with Image.open(SAMPLE) as im:
        arr = np.asarray(im.convert("RGB"))[:side, :side]
    x = torch.from_numpy(np.ascontiguousarray(arr)).float().div(255).permute(2, 0, 1).unsqueeze(0)
    x = x[:, : getattr(net, "num_in_ch", 3)]
    with torch.inference_mode():
        reference = net(x).clamp(0, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = plan.run(net, x).float().clamp(0, 1)
    mse = torch.mean((reference.double() - half.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
