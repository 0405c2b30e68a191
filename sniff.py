"""State dict -> architecture + hyperparameters, for the key layouts users actually have.

Every layout is converted to our canonical keys (basicsr names for RRDBNet, ``body.N`` for
SRVGGNetCompact) so one network class serves them all. Anything we do not recognise returns
``None`` and goes to spandrel's loader.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from .archs import ACT_TYPES

# Real-ESRGAN-compatible trainers save under these names; params_ema is the better weights.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "netG", "generator")
PREFIXES = ("module.", "netG.", "generator.", "model.module.")
DEFAULT_SRVGG_ACT = "relu"  # only used when the weights cannot tell (no PReLU weights)


@dataclass
class ModelSpec:
    architecture: str  # "RRDBNet" or "SRVGGNetCompact"
    key_format: str  # "basicsr", "esrgan-old", "bsrgan", "srvgg" (or "ncnn", set by the ncnn import)
    hyperparameters: dict
    state_dict: dict = field(repr=False)

    @property
    def scale(self) -> int:
        return int(self.hyperparameters["scale"])


def unwrap_state_dict(obj: object) -> dict:
    """Find the tensor dict inside a training checkpoint and strip DataParallel-style prefixes."""
    for _ in range(3):  # checkpoints nest at most a couple of levels
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
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
    """Recognise our architectures; ``None`` means "not ours, ask spandrel"."""
    if any(".conv1x1." in k for k in state):
        return None  # ESRGAN+ (extra 1x1 convs): spandrel has it
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        return _rrdbnet_spec(_from_old_esrgan(state), "esrgan-old")
    if "RRDB_trunk.0.RDB1.conv1.weight" in state and "trunk_conv.weight" in state:
        return _rrdbnet_spec(_from_bsrgan(state), "bsrgan")
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        return _rrdbnet_spec(dict(state), "basicsr")
    if "body.0.weight" in state and "conv_first.weight" not in state and _ndim(state, "body.0.weight") == 4:
        return _srvgg_spec(state, act_type)
    return None


def _ndim(state: dict, key: str) -> int:
    return state[key].ndim


# ---- RRDBNet ---------------------------------------------------------------------------

_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_CONV = re.compile(r"model\.(\d+)\.(weight|bias)$")


def _from_old_esrgan(state: dict) -> dict:
    """Original ESRGAN layout: model.0 conv_first, model.1.sub.* trunk, then a flat Sequential
    of [upsample, conv, lrelu]* + HR conv + last conv, so the conv indices tell the stage count."""
    out: dict = {}
    trunk = [int(m.group(1)) for k in state if (m := _OLD_RDB.match(k))]
    num_block = max(trunk) + 1 if trunk else 0
    tail_convs = sorted({int(m.group(1)) for k in state if (m := _OLD_CONV.match(k))} - {0})
    names = {0: "conv_first"}
    if len(tail_convs) >= 2:
        *ups, hr, last = tail_convs
        names.update({i: f"conv_up{n}" for n, i in enumerate(ups, 1)})
        names.update({hr: "conv_hr", last: "conv_last"})
    for key, value in state.items():
        if m := _OLD_RDB.match(key):
            blk, rdb, conv, kind = m.groups()
            out[f"body.{blk}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif key.startswith(f"model.1.sub.{num_block}."):
            out["conv_body." + key.rsplit(".", 1)[1]] = value
        elif (m := _OLD_CONV.match(key)) and int(m.group(1)) in names:
            out[f"{names[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            out[key] = value  # unknown: left for the strict load to report
    return out


_BSRGAN_NAMES = {"trunk_conv": "conv_body", "HRconv": "conv_hr", "upconv1": "conv_up1",
                 "upconv2": "conv_up2", "upconv3": "conv_up3"}


def _from_bsrgan(state: dict) -> dict:
    out: dict = {}
    for key, value in state.items():
        if key.startswith("RRDB_trunk."):
            key = "body." + key[len("RRDB_trunk."):].replace(".RDB", ".rdb")
        else:
            head, _, tail = key.partition(".")
            key = f"{_BSRGAN_NAMES.get(head, head)}.{tail}"
        out[key] = value
    return out


def _rrdbnet_spec(state: dict, key_format: str) -> ModelSpec:
    first, last = state["conv_first.weight"], state.get("conv_last.weight")
    if last is None or first.ndim != 4 or last.ndim != 4:
        return _not_buildable("RRDBNet", "conv_first / conv_last weights are missing or not 4-D")
    out_ch = last.shape[0]
    unshuffle = _unshuffle_factor(first.shape[1], out_ch)
    blocks = {int(k.split(".")[1]) for k in state if re.match(r"body\.\d+\.rdb", k)}
    num_up = len({k.split(".")[0] for k in state if re.match(r"conv_up\d+\.weight$", k)})
    if 2**num_up % unshuffle:
        return _not_buildable("RRDBNet", f"{num_up} upsample stages after a {unshuffle}x unshuffle is not an integer scale")
    return ModelSpec(
        architecture="RRDBNet",
        key_format=key_format,
        hyperparameters=dict(
            num_in_ch=first.shape[1] // unshuffle**2,
            num_out_ch=out_ch,
            num_feat=first.shape[0],
            num_block=len(blocks),
            num_grow_ch=state["body.0.rdb1.conv1.weight"].shape[0],
            num_upsample=num_up,
            unshuffle=unshuffle,
            scale=2**num_up // unshuffle,
        ),
        state_dict=state,
    )


def _unshuffle_factor(first_in: int, out_ch: int) -> int:
    """conv_first sees in_ch * f**2 channels after pixel-unshuffle by f (x2 models: f=2, x1: f=4)."""
    for f in (4, 2):
        if first_in == out_ch * f * f:
            return f
    return 1


# ---- SRVGGNetCompact -------------------------------------------------------------------

def _srvgg_spec(state: dict, act_type: str | None) -> ModelSpec | None:
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k))})
    conv_idx = [i for i in indices if f"body.{i}.weight" in state and state[f"body.{i}.weight"].ndim == 4]
    last = conv_idx[-1]
    first = state["body.0.weight"]
    in_ch, num_feat = first.shape[1], first.shape[0]
    has_prelu = "body.1.weight" in state
    if has_prelu:
        if act_type not in (None, "prelu"):
            raise ValueError(f"the weights carry PReLU slopes (body.1.weight), so act_type {act_type!r} cannot apply")
        act = "prelu"
    else:
        act = act_type or DEFAULT_SRVGG_ACT
        if act not in ACT_TYPES:
            raise ValueError(f"act_type must be one of {ACT_TYPES}, not {act!r}")
    scale, out_ch = _srvgg_scale(state[f"body.{last}.weight"].shape[0], in_ch)
    if scale is None:
        return _not_buildable("SRVGGNetCompact", f"last conv has {state[f'body.{last}.weight'].shape[0]} outputs, not channels x scale^2")
    return ModelSpec(
        architecture="SRVGGNetCompact",
        key_format="srvgg",
        hyperparameters=dict(
            num_in_ch=in_ch,
            num_out_ch=out_ch,
            num_feat=num_feat,
            num_conv=last // 2 - 1,
            upscale=scale,
            act_type=act,
            scale=scale,
        ),
        state_dict=dict(state),
    )


def _srvgg_scale(last_out: int, in_ch: int) -> tuple[int | None, int]:
    for out_ch in dict.fromkeys((in_ch, 3, 1, 4)):
        scale = math.isqrt(last_out // out_ch) if last_out % out_ch == 0 else 0
        if scale and scale * scale * out_ch == last_out:
            return scale, out_ch
    return None, in_ch


def _not_buildable(arch: str, why: str):
    raise ValueError(f"looks like {arch} but {why}")
