"""UNetDiscriminatorSN's keys (reading its files, which needs the checkpoint unwrapping, is
``loading/discriminator.py``).

The canonical layout is Real-ESRGAN's (``RealESRGAN_x4plus_netD.pth``, basicsr's ``net_d_*.pth``):
``conv0.weight/bias``, ``convN.weight_orig/weight_u/weight_v`` for N = 1..8 (spectral norm,
no bias) and ``conv9.weight/bias``. Files saved with torch's newer parametrization spectral
norm hold the same tensors as ``convN.parametrizations.weight.original`` / ``.weight.0._u`` /
``.weight.0._v`` and are renamed. The sizes (input channels, ``num_feat``) come from ``conv0.weight``;
``skip_connection`` leaves no trace in the weights, so it is the caller's (default True).
"""
from __future__ import annotations

import re

import torch

from ...errors import ModelLoadError
from ..architecture import check_weights_fit, dims, not_buildable
from .network import PLAIN_CONVS, SN_CONVS, UNetDiscriminatorSN

NAME = "UNetDiscriminatorSN"

# Checkpoints that hold a generator and a discriminator side by side keep the latter here;
# the generic unwrapping (loading.sniff.unwrap_state_dict) would pick the generator.
DISCRIMINATOR_WRAPPERS = ("net_d", "netD", "discriminator")

_PARAMETRIZED = re.compile(r"(conv[1-8])\.parametrizations\.weight\.(original|0\._u|0\._v)$")
_RENAME = {"original": "weight_orig", "0._u": "weight_u", "0._v": "weight_v"}
_SN_SUFFIXES = ("weight_orig", "weight_u", "weight_v")

EXPECTED_KEYS = frozenset(
    [f"{c}.{p}" for c in PLAIN_CONVS for p in ("weight", "bias")]
    + [f"{c}.{s}" for c in SN_CONVS for s in _SN_SUFFIXES]
)


def canonical_keys(state: dict) -> dict:
    """An unwrapped discriminator state dict with torch's parametrization names renamed."""
    return {_canonical(k): v for k, v in state.items()}


def _canonical(key: str) -> str:
    m = _PARAMETRIZED.match(key)
    return f"{m.group(1)}.{_RENAME[m.group(2)]}" if m else key


def read_hyperparameters(state: dict) -> dict:
    """``num_in_ch`` and ``num_feat`` of a canonical state dict; ModelLoadError naming what is
    wrong when it is not this discriminator."""
    if not state:
        raise ModelLoadError(f"not a {NAME}: the file holds no weights")
    if "conv0.weight" not in state or "conv9.weight" not in state:
        raise ModelLoadError(f"not a {NAME}: it has no conv0.weight / conv9.weight")
    plain = [c for c in SN_CONVS if f"{c}.weight" in state and f"{c}.weight_orig" not in state]
    if plain:
        not_buildable(NAME, f"{', '.join(plain[:3])}{' …' if len(plain) > 3 else ''} hold plain weights "
                      f"({plain[0]}.weight) instead of spectral-norm ones ({plain[0]}.weight_orig/_u/_v)")
    num_feat, num_in_ch, kh, kw = dims(state, "conv0.weight", 4, NAME)
    if (kh, kw) != (3, 3):
        not_buildable(NAME, f"conv0 is a {kh}x{kw} conv, expected 3x3")
    return dict(num_in_ch=num_in_ch, num_feat=num_feat)


def check_fit(state: dict, hp: dict) -> None:
    """Every key and shape against a network built on the meta device: a file whose conv0
    claims a huge ``num_feat`` is refused without allocating that network."""
    with torch.device("meta"):
        shapes = UNetDiscriminatorSN(**hp)
    check_weights_fit(shapes, state)
