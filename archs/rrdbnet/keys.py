"""RRDBNet key layouts users have -> our canonical (basicsr) keys and hyperparameters.

Layouts: basicsr (``conv_first``, ``body.N.rdbM.convK`` …), original ESRGAN (``model.N…``) and
BSRGAN (``RRDB_trunk…``). Shapes are read from the weights, never assumed.
"""
from __future__ import annotations

import re

from ..architecture import ModelSpec, dims, is_mostly, not_buildable

NAME = "RRDBNet"

_RRDB_KEY = re.compile(r"(conv_first|conv_body|conv_up\d+|conv_hr|conv_last|body\.\d+\.rdb[123]\.conv[1-5])\.(weight|bias)$")
_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_CONV = re.compile(r"model\.(\d+)\.(weight|bias)$")


def read_spec(state: dict) -> ModelSpec | None:
    """Our reading of ``state``; ``None`` when it is not an RRDBNet we build (spandrel's turn)."""
    if any(".conv1x1." in k for k in state):
        return None  # ESRGAN+ (extra 1x1 convs): spandrel has it
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        return _spec(_from_old_esrgan(state), "esrgan-old")
    if "RRDB_trunk.0.RDB1.conv1.weight" in state and "trunk_conv.weight" in state:
        return _spec(_from_bsrgan(state), "bsrgan")
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        return _spec(dict(state), "basicsr")
    return None


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
        not_buildable(NAME, f"its layers after the trunk ({found}) are not the original ESRGAN "
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


def _spec(state: dict, key_format: str) -> ModelSpec | None:
    if not is_mostly(state, _RRDB_KEY):
        return None  # shares RRDBNet's names but is a bigger network (e.g. MMRealSR)
    num_feat, first_in = dims(state, "conv_first.weight", 4, NAME)[:2]
    out_ch = dims(state, "conv_last.weight", 4, NAME)[0]
    num_grow_ch = dims(state, "body.0.rdb1.conv1.weight", 4, NAME)[0]
    unshuffle = _unshuffle_factor(first_in, out_ch)
    blocks = {int(k.split(".")[1]) for k in state if re.match(r"body\.\d+\.rdb", k)}
    num_up = len({k.split(".")[0] for k in state if re.match(r"conv_up\d+\.weight$", k)})
    if 2**num_up % unshuffle:
        not_buildable(NAME, f"{num_up} upsample stage(s) after a {unshuffle}x pixel-unshuffle is not an integer scale")
    return ModelSpec(
        architecture=NAME,
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
