"""State dict -> which of our architectures, with what hyperparameters.

Training checkpoints are unwrapped first; then each architecture package reads its own key
layouts (``archs/<name>/keys.py``) and converts them to its canonical keys, so one network
class serves them all. ``None`` means "not ours, ask spandrel"; keys that are ours with shapes
that cannot make the network raise ModelLoadError.
"""
from __future__ import annotations

import torch

from ..archs import ARCHITECTURES, ModelSpec
from ..archs.srvgg.keys import DEFAULT_ACT as DEFAULT_SRVGG_ACT
from ..archs.srvgg.keys import check_act_type

# Where trainers put the weights (spandrel's canonicalisation knows these too); params_ema,
# the exponential moving average, is the better copy when a checkpoint has both.
WRAPPER_KEYS = ("params_ema", "params-ema", "params", "model_state_dict", "state_dict", "model", "net", "netG",
                "generator")
PREFIXES = ("module.", "netG.", "generator.", "model.module.")
MAX_NESTING = 6

__all__ = ["DEFAULT_SRVGG_ACT", "ModelSpec", "describe_contents", "sniff", "unwrap_state_dict"]


def unwrap_state_dict(obj: object) -> dict:
    """Find the tensor dict inside a training checkpoint and strip DataParallel-style prefixes.

    Each level takes the first non-empty wrapper key in preference order (an empty params_ema
    must not hide params), else the only value that holds tensors (single-key wrappers such as
    ``{"anything": weights}``, or weights beside an epoch counter)."""
    for _ in range(MAX_NESTING):
        if not isinstance(obj, dict) or (obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None:
            holders = [v for v in obj.values() if isinstance(v, dict) and _holds_tensors(v)]
            inner = holders[0] if len(holders) == 1 else None
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


def _holds_tensors(obj: object, depth: int = MAX_NESTING) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict) and depth > 0:
        return any(_holds_tensors(v, depth - 1) for v in obj.values())
    return False


def describe_contents(obj: object, limit: int = 6) -> str:
    """What a checkpoint holds, for an error that says why it is not weights: 'a dict with
    keys epoch (int), optimizer (dict of 2)', 'a list of 3 items', 'a single tensor [3, 4]'."""
    if isinstance(obj, torch.Tensor):
        return f"a single tensor {list(obj.shape)}, not named weights"
    if isinstance(obj, dict):
        if not obj:
            return "an empty dict"
        parts = [f"{k!s} ({_kind(v)})" for k, v in list(obj.items())[:limit]]
        more = f" and {len(obj) - limit} more" if len(obj) > limit else ""
        return f"a dict with keys {', '.join(parts)}{more}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} item{'' if len(obj) == 1 else 's'}"
    return f"a {type(obj).__name__}"


def _kind(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {list(value.shape)}"
    if isinstance(value, (dict, list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def sniff(state: dict, act_type: str | None = None) -> ModelSpec | None:
    """The first of our architectures that reads ``state`` as its own; ``None``: spandrel's turn.
    ``act_type`` only matters for SRVGGNetCompact files without PReLU weights."""
    check_act_type(act_type)
    for arch in ARCHITECTURES.values():
        spec = arch.spec(state, act_type)
        if spec is not None:
            return spec
    return None
