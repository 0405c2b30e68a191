"""State dict -> architecture + hyperparameters, for the key layouts users actually have.

Every layout is converted to our canonical keys (basicsr names for RRDBNet, ``body.N`` for
SRVGGNetCompact) so one network class serves them all. Anything we do not recognise returns
``None`` and goes to spandrel's loader; keys that are ours with shapes that cannot make the
network raise ModelLoadError.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from .archs import ACT_TYPES
from .errors import ModelLoadError

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
    """Recognise our architectures; ``None`` means "not ours, ask spandrel".

    Raises ModelLoadError when the keys say "ours" but the shapes cannot make a network."""
    if act_type is not None and act_type not in ACT_TYPES:
        raise ModelLoadError(f"act_type must be one of {', '.join(ACT_TYPES)}, not {act_type!r}")
    if any(".conv1x1." in k for k in state):
        return None  # ESRGAN+ (extra 1x1 convs): spandrel has it
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        return _rrdbnet_spec(_from_old_esrgan(state), "esrgan-old")
    if "RRDB_trunk.0.RDB1.conv1.weight" in state and "trunk_conv.weight" in state:
        return _rrdbnet_spec(_from_bsrgan(state), "bsrgan")
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        return _rrdbnet_spec(dict(state), "basicsr")
    if "body.0.weight" in state and "conv_first.weight" not in state:
        return _srvgg_spec(state, act_type)
    return None


# A network that merely shares a few key names with ours (MMRealSR has RRDBNet's, with whole
# extra sub-networks) has many keys outside our layout: that goes to spandrel. A handful of
# stray keys in an otherwise exact layout is a damaged file of ours, and the strict load
# names them.
MAX_FOREIGN_KEYS = 4


def _is_mostly(state: dict, pattern: re.Pattern) -> bool:
    return sum(1 for k in state if not pattern.match(k)) <= MAX_FOREIGN_KEYS


def _dims(state: dict, key: str, ndim: int, arch: str) -> tuple[int, ...]:
    """Shape of a weight that must exist with ``ndim`` dims and no zero-sized dimension."""
    t = state.get(key)
    if t is None:
        _not_buildable(arch, f"the weight {key} is missing")
    if t.ndim != ndim or 0 in t.shape:
        _not_buildable(arch, f"{key} has shape {tuple(t.shape)}, expected a {ndim}-D weight")
    return tuple(t.shape)


# ---- RRDBNet ---------------------------------------------------------------------------

_RRDB_KEY = re.compile(r"(conv_first|conv_body|conv_up\d+|conv_hr|conv_last|body\.\d+\.rdb[123]\.conv[1-5])\.(weight|bias)$")
_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_CONV = re.compile(r"model\.(\d+)\.(weight|bias)$")


def _from_old_esrgan(state: dict) -> dict:
    """Original ESRGAN layout: model.0 conv_first, model.1.sub.* trunk, then a flat Sequential
    of [upsample, conv, lrelu]* + HR conv + last conv, so the conv indices tell the stage count."""
    out: dict = {}
    trunk = [int(m.group(1)) for k in state if (m := _OLD_RDB.match(k))]
    num_block = max(trunk) + 1 if trunk else 0
    tail_convs = sorted({int(m.group(1)) for k in state if (m := _OLD_CONV.match(k))} - {0})
    # n upsample stages put convs at 3, 6, …, 3n, then HR conv at 3n+2 and the last at 3n+4;
    # any other index set is a damaged file (or a pixel-shuffle variant) we must not guess at
    n = len(tail_convs) - 2
    if n < 0 or tail_convs != [3 * i for i in range(1, n + 1)] + [3 * n + 2, 3 * n + 4]:
        found = ", ".join(f"model.{i}" for i in tail_convs) or "none"
        _not_buildable("RRDBNet", f"its layers after the trunk ({found}) are not the original ESRGAN "
                       "sequence of upsample convs, HR conv and last conv")
    names = {0: "conv_first", 3 * n + 2: "conv_hr", 3 * n + 4: "conv_last"}
    names.update({3 * i: f"conv_up{i}" for i in range(1, n + 1)})
    for key, value in state.items():
        if m := _OLD_RDB.match(key):
            blk, rdb, conv, kind = m.groups()
            out[f"body.{blk}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif key in (f"model.1.sub.{num_block}.weight", f"model.1.sub.{num_block}.bias"):
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


def _rrdbnet_spec(state: dict, key_format: str) -> ModelSpec | None:
    if not _is_mostly(state, _RRDB_KEY):
        return None  # shares RRDBNet's names but is a bigger network (e.g. MMRealSR)
    num_feat, first_in = _dims(state, "conv_first.weight", 4, "RRDBNet")[:2]
    out_ch = _dims(state, "conv_last.weight", 4, "RRDBNet")[0]
    num_grow_ch = _dims(state, "body.0.rdb1.conv1.weight", 4, "RRDBNet")[0]
    unshuffle = _unshuffle_factor(first_in, out_ch)
    blocks = {int(k.split(".")[1]) for k in state if re.match(r"body\.\d+\.rdb", k)}
    num_up = len({k.split(".")[0] for k in state if re.match(r"conv_up\d+\.weight$", k)})
    if 2**num_up % unshuffle:
        _not_buildable("RRDBNet", f"{num_up} upsample stage(s) after a {unshuffle}x pixel-unshuffle is not an integer scale")
    return ModelSpec(
        architecture="RRDBNet",
        key_format=key_format,
        hyperparameters=dict(
            num_in_ch=first_in // unshuffle**2,
            num_out_ch=out_ch,
            num_feat=num_feat,
            num_block=len(blocks),
            num_grow_ch=num_grow_ch,
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

_SRVGG_KEY = re.compile(r"body\.(\d+)\.(weight|bias)$")


def _srvgg_spec(state: dict, act_type: str | None) -> ModelSpec | None:
    """``body`` = conv, act, (conv, act) * num_conv, conv: convs at even indices, the last one
    holds out_ch * scale**2 filters for the pixel shuffle."""
    if not _is_mostly(state, _SRVGG_KEY) or state["body.0.weight"].ndim != 4:
        return None  # some other network with a ``body`` (RCAN, EDSR, …)
    last = max(int(m.group(1)) for k in state if (m := _SRVGG_KEY.match(k)))
    if last < 2 or last % 2:
        _not_buildable("SRVGGNetCompact", f"its last layer is body.{last}; expected an even index >= 2 (a conv)")
    num_feat, in_ch = _dims(state, "body.0.weight", 4, "SRVGGNetCompact")[:2]
    last_out = _dims(state, f"body.{last}.weight", 4, "SRVGGNetCompact")[0]
    scale, out_ch = _srvgg_scale(last_out, in_ch)
    if scale is None:
        _not_buildable("SRVGGNetCompact", f"body.{last} has {last_out} filters, not output channels x scale^2 "
                       f"for an output that can take the {in_ch}-channel input as its residual")
    return ModelSpec(
        architecture="SRVGGNetCompact",
        key_format="srvgg",
        hyperparameters=dict(
            num_in_ch=in_ch,
            num_out_ch=out_ch,
            num_feat=num_feat,
            num_conv=last // 2 - 1,
            upscale=scale,
            act_type=_srvgg_activation(state, act_type),
            scale=scale,
        ),
        state_dict=dict(state),
    )


def _srvgg_activation(state: dict, act_type: str | None) -> str:
    """PReLU slopes are in the file; ReLU / LeakyReLU leave no trace, so the caller decides."""
    if "body.1.weight" in state:
        if act_type not in (None, "prelu"):
            _not_buildable("SRVGGNetCompact", f"the weights carry PReLU slopes (body.1.weight), so act_type {act_type!r} cannot apply")
        return "prelu"
    if act_type == "prelu":
        _not_buildable("SRVGGNetCompact", "act_type 'prelu' was asked for but the file has no PReLU slopes (body.1.weight)")
    return act_type or DEFAULT_SRVGG_ACT


def _srvgg_scale(last_out: int, in_ch: int) -> tuple[int | None, int]:
    """Split the last conv's filters into out_ch * scale**2. The network adds the upscaled
    input to its output, so out_ch must equal in_ch, or the input must be 1 channel (broadcast)."""
    candidates = (1, 3, 4) if in_ch == 1 else (in_ch,)
    for out_ch in candidates:
        scale = math.isqrt(last_out // out_ch) if last_out % out_ch == 0 else 0
        if scale and scale * scale * out_ch == last_out:
            return scale, out_ch
    return None, in_ch


def _not_buildable(arch: str, why: str):
    raise ModelLoadError(f"looks like {arch} but {why}")
