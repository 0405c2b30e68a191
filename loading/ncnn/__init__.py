"""ncnn ``.param`` + ``.bin`` pairs -> a ``ModelSpec`` with canonical (basicsr / ``body.N``) keys.

Real-ESRGAN's ncnn exports (realesrgan-ncnn-vulkan, sr-vulkan) are plain graphs of
Convolution / Concat / Eltwise / Interp / PixelShuffle / PReLU layers. We do not run the graph:
we check that it *is* one of our architectures, layer by layer, and lift the weights into the
state dict our own networks load. Anything that does not fit exactly is refused with an error
naming the file, the layer and what was expected there.

The pieces: ``param_file`` and ``bin_file`` read the two files; ``graph`` holds the matching
primitives; each architecture's pattern (``rrdbnet.py``, ``srvgg.py`` here) says what its graph looks like
(``recognises`` / ``match``), how its weights need reordering (``fix_weights``) and which
hyperparameters the graph fixes (``graph_hyperparameters``), checked here against what the
weights' shapes say.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from ...errors import ModelLoadError
from ..sniff import ModelSpec, sniff
from . import rrdbnet as rrdbnet_pattern
from . import srvgg as srvgg_pattern
from .bin_file import read_weights
from .graph import Graph, Match
from .param_file import Layer, parse_param

# Asked in turn which one produced the network output. Listed here rather than taken from
# archs.ARCHITECTURES: the networks know nothing of file formats.
PATTERNS = (rrdbnet_pattern, srvgg_pattern)

__all__ = ["read_ncnn"]


def read_ncnn(path: Path) -> tuple[ModelSpec, tuple[float, str] | None]:
    """Read an ncnn model (``.param`` or ``.bin``; the other file must sit beside it)."""
    path = Path(path)
    param_path, bin_path = _pair(path)
    layers = parse_param(param_path)
    pattern, match = _match_graph(Graph(layers, param_path.name))
    weights = read_weights(layers, bin_path)
    state = _state_dict(pattern, match, layers, weights, param_path.name)
    try:
        spec = sniff(state, match.act_type)
    except (ModelLoadError, ValueError, KeyError, IndexError) as e:
        raise ModelLoadError(f"{param_path.name}: the weights do not form a valid {match.architecture}: {e}") from None
    if spec is None or spec.architecture != match.architecture:
        raise ModelLoadError(f"{param_path.name}: the graph is an {match.architecture} but its weights are not")
    _check_hyperparameters(spec, pattern.graph_hyperparameters(match), param_path.name)
    spec.key_format = "ncnn"
    return spec, match.resize


def _pair(path: Path) -> tuple[Path, Path]:
    suffix = path.suffix.lower()
    if suffix == ".param":
        param_path, bin_path = path, path.with_suffix(".bin")
    elif suffix == ".bin":
        param_path, bin_path = path.with_suffix(".param"), path
    else:
        raise ModelLoadError(f"{path.name}: an ncnn model is a .param file with a .bin beside it")
    for p, role in ((param_path, "graph (.param)"), (bin_path, "weights (.bin)")):
        if not p.is_file():
            raise ModelLoadError(
                f"{path.name}: the ncnn {role} file {p.name} is missing; it must sit beside {path.name} with the same name"
            )
    return param_path, bin_path


def _match_graph(graph: Graph) -> tuple[ModuleType, Match]:
    """The pattern whose output the graph ends in, and what it matched; the whole graph must be
    that network, plus at most one trailing resize."""
    out, resize = graph.network_output()
    last = graph.prod(out)
    pattern = next((p for p in PATTERNS if p.recognises(graph, last)), None)
    if pattern is None:
        raise graph.fail(last, "the network output to come from " + " or from ".join(p.OUTPUT for p in PATTERNS), out)
    match = pattern.match(graph, out)
    match.resize = resize
    graph.check_nothing_left()
    return pattern, match


def _state_dict(pattern: ModuleType, m: Match, layers: list[Layer], weights, name: str) -> dict[str, torch.Tensor]:
    by_name = {layer.name: layer for layer in layers}
    state: dict[str, torch.Tensor] = {}
    for lname, key in m.convs.items():
        layer = by_name[lname]
        out = int(layer.p(0))
        w = weights[lname]["weight"].reshape(out, -1, 3, 3)
        b = weights[lname].get("bias")
        if b is None:
            b = np.zeros(out, dtype=np.float32)
        w, b = pattern.fix_weights(m, key, layer, w, b, name)
        state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        state[f"{key}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    for lname, key in m.prelus.items():
        state[f"{key}.weight"] = _prelu_slopes(weights[lname]["weight"], state, key, by_name[lname], name)
    return state


def _prelu_slopes(slopes: np.ndarray, state: dict, key: str, layer: Layer, name: str) -> torch.Tensor:
    """One slope per channel of the conv before it (``body.N-1``); a single shared slope is spread."""
    conv_key = f"body.{int(key.split('.')[1]) - 1}.weight"
    num_feat = state[conv_key].shape[0]
    if slopes.size == 1:
        slopes = np.repeat(slopes, num_feat)
    if slopes.size != num_feat:
        raise ModelLoadError(f"{name}: {layer.label()}: expected 1 or {num_feat} slopes, found {slopes.size}")
    return torch.from_numpy(np.ascontiguousarray(slopes, dtype=np.float32))


def _check_hyperparameters(spec: ModelSpec, graph: dict, name: str) -> None:
    """What the graph says (from its pattern) against what the weights' shapes say (``sniff``)."""
    hp = spec.hyperparameters
    bad = {k: (hp.get(k), v) for k, v in graph.items() if hp.get(k) != v}
    if bad:
        detail = ", ".join(f"{k}: weights say {a}, graph says {b}" for k, (a, b) in bad.items())
        raise ModelLoadError(f"{name}: the weights' shapes disagree with the graph ({detail})")
