"""State dict -> which of our architectures, with what hyperparameters.

Training checkpoints are unwrapped first; then each architecture package reads its own key
layouts (``archs/<name>/keys.py``) and converts them to its canonical keys, so one network
class serves them all. ``None`` means "not ours, ask spandrel"; keys that are ours with shapes
that cannot make the network raise ModelLoadError.
"""
from __future__ import annotations

import torch

from .archs import ARCHITECTURES, ModelSpec
from .archs.srvgg.keys import DEFAULT_ACT as DEFAULT_SRVGG_ACT
from .archs.srvgg.keys import check_act_type

# Real-ESRGAN-compatible trainers save under these names; params_ema is the better weights.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "netG", "generator")
PREFIXES = ("module.", "netG.", "generator.", "model.module.")

__all__ = ["DEFAULT_SRVGG_ACT", "ModelSpec", "sniff", "unwrap_state_dict"]


def unwrap_state_dict(obj: object) -> dict:
    """Find the tensor dict inside a training checkpoint and strip DataParallel-style prefixes."""
    for _ in range(3):  # checkpoints nest at most a couple of levels
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        # first non-empty wrapper in preference order (an empty params_ema must not hide params)
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        return {}
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def sniff(state: dict, act_type: str | None = None) -> ModelSpec | None:
    """The first of our architectures that reads ``state`` as its own; ``None``: spandrel's turn.
    ``act_type`` only matters for SRVGGNetCompact files without PReLU weights."""
    check_act_type(act_type)
    for arch in ARCHITECTURES.values():
        spec = arch.spec(state, act_type)
        if spec is not None:
            return spec
    return None
