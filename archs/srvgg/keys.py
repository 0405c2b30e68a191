"""SRVGGNetCompact's ``body.N`` keys -> hyperparameters. ReLU / LeakyReLU models carry no
activation weights, so for them the activation is the caller's (``DEFAULT_ACT`` otherwise)."""
from __future__ import annotations

import math
import re

from ...errors import ModelLoadError
from ..architecture import ModelSpec, dims, is_mostly, not_buildable
from .network import ACT_TYPES

NAME = "SRVGGNetCompact"
DEFAULT_ACT = "relu"  # only used when the weights cannot tell (no PReLU weights)

_SRVGG_KEY = re.compile(r"body\.(\d+)\.(weight|bias)$")


def check_act_type(act_type: str | None) -> None:
    if act_type is not None and act_type not in ACT_TYPES:
        raise ModelLoadError(f"act_type must be one of {', '.join(ACT_TYPES)}, not {act_type!r}")


def read_spec(state: dict, act_type: str | None) -> ModelSpec | None:
    """``body`` = conv, act, (conv, act) * num_conv, conv: convs at even indices, the last one
    holds out_ch * scale**2 filters for the pixel shuffle."""
    if "body.0.weight" not in state or "conv_first.weight" in state:
        return None
    if not is_mostly(state, _SRVGG_KEY) or state["body.0.weight"].ndim != 4:
        return None  # some other network with a ``body`` (RCAN, EDSR, …)
    last = max(int(m.group(1)) for k in state if (m := _SRVGG_KEY.match(k)))
    if last < 2 or last % 2:
        not_buildable(NAME, f"its last layer is body.{last}; expected an even index >= 2 (a conv)")
    num_feat, in_ch = dims(state, "body.0.weight", 4, NAME)[:2]
    last_out = dims(state, f"body.{last}.weight", 4, NAME)[0]
    scale, out_ch = _scale(last_out, in_ch)
    if scale is None:
        not_buildable(NAME, f"body.{last} has {last_out} filters, not output channels x scale^2 "
                      f"for an output that can take the {in_ch}-channel input as its residual")
    return ModelSpec(
        architecture=NAME,
        key_format="srvgg",
        hyperparameters=dict(
            num_in_ch=in_ch,
            num_out_ch=out_ch,
            num_feat=num_feat,
            num_conv=last // 2 - 1,
            upscale=scale,
            act_type=_activation(state, act_type),
            scale=scale,
        ),
        state_dict=dict(state),
    )


def _activation(state: dict, act_type: str | None) -> str:
    """PReLU slopes are in the file; ReLU / LeakyReLU leave no trace, so the caller decides."""
    if "body.1.weight" in state:
        if act_type not in (None, "prelu"):
            not_buildable(NAME, f"the weights carry PReLU slopes (body.1.weight), so act_type {act_type!r} cannot apply")
        return "prelu"
    if act_type == "prelu":
        not_buildable(NAME, "act_type 'prelu' was asked for but the file has no PReLU slopes (body.1.weight)")
    return act_type or DEFAULT_ACT


def _scale(last_out: int, in_ch: int) -> tuple[int | None, int]:
    """Split the last conv's filters into out_ch * scale**2. The network adds the upscaled
    input to its output, so out_ch must equal in_ch, or the input must be 1 channel (broadcast)."""
    candidates = (1, 3, 4) if in_ch == 1 else (in_ch,)
    for out_ch in candidates:
        scale = math.isqrt(last_out // out_ch) if last_out % out_ch == 0 else 0
        if scale and scale * scale * out_ch == last_out:
            return scale, out_ch
    return None, in_ch
