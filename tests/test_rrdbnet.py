"""RRDBNet through ``load_model``, every variant x every key layout x .pth/.safetensors,
checked against spandrel (grow channels 32, which spandrel hard-codes) or, where spandrel
cannot serve, against the functional oracle in ``model_fixtures``."""
from __future__ import annotations

import pytest
import torch
from spandrel import ModelLoader

from .model_fixtures import EXPECTED_KEY_FORMAT, LAYOUTS, image, rrdbnet_oracle, rrdbnet_state, save
from realesrgan_tiled.loading import load_model, model_info

TOL = 1e-5

# name -> (rrdbnet_state kwargs, scale, oracle)
VARIANTS = {
    "x4": (dict(num_feat=16, num_block=1, num_upsample=2), 4, "spandrel"),
    "x8": (dict(num_feat=16, num_block=1, num_upsample=3), 8, "spandrel"),
    "x2-unshuffle": (dict(num_feat=16, num_block=2, num_upsample=2, unshuffle=2), 2, "spandrel"),
    "x1-unshuffle": (dict(num_feat=16, num_block=1, num_upsample=2, unshuffle=4), 1, "spandrel"),
    "x2-old": (dict(num_feat=16, num_block=1, num_upsample=1), 2, "spandrel"),
    "x1-old": (dict(num_feat=16, num_block=1, num_upsample=0), 1, "spandrel"),
    # grow channels other than 32: spandrel would build the wrong network
    "x4-gc8-nb3": (dict(num_feat=24, num_block=3, num_grow_ch=8, num_upsample=2), 4, "functional"),
    "x8-gc16": (dict(num_feat=20, num_block=1, num_grow_ch=16, num_upsample=3), 8, "functional"),
    "x2-unshuffle-gc12": (dict(num_feat=16, num_block=2, num_grow_ch=12, num_upsample=2, unshuffle=2), 2, "functional"),
    "x1-unshuffle-gc8": (dict(num_feat=32, num_block=1, num_grow_ch=8, num_upsample=2, unshuffle=4), 1, "functional"),
    "x2-old-gc16": (dict(num_feat=16, num_block=2, num_grow_ch=16, num_upsample=1), 2, "functional"),
    "x4-gray": (dict(num_feat=16, num_block=1, num_grow_ch=8, in_ch=1, out_ch=1), 4, "functional"),
    "x2-unshuffle-gray": (dict(num_feat=16, num_block=1, num_grow_ch=8, unshuffle=2, in_ch=1, out_ch=1), 2, "functional"),
}
SIZES = [(16, 16), (17, 23)]  # the odd size exercises the unshuffle padding
_state_cache: dict = {}
_ref_cache: dict = {}


def state(variant: str) -> dict:
    if variant not in _state_cache:
        _state_cache[variant] = rrdbnet_state(**VARIANTS[variant][0], seed=len(_state_cache))
    return _state_cache[variant]


def reference(variant: str, size: tuple[int, int]) -> torch.Tensor:
    """The oracle's raw (unclamped) output for ``image(*size)``."""
    key = (variant, size)
    if key not in _ref_cache:
        sd, oracle = state(variant), VARIANTS[variant][2]
        x = image(*size, c=sd["conv_first.weight"].shape[1] // _unshuffle(variant) ** 2)
        with torch.no_grad():
            if oracle == "spandrel":
                ref_model = ModelLoader().load_from_state_dict(dict(sd)).model.eval()
                _ref_cache[key] = ref_model(x)
                # the functional oracle must agree with spandrel wherever both apply
                assert (rrdbnet_oracle(sd, x) - _ref_cache[key]).abs().max() <= TOL
            else:
                _ref_cache[key] = rrdbnet_oracle(sd, x)
    return _ref_cache[key]


def _unshuffle(variant: str) -> int:
    return VARIANTS[variant][0].get("unshuffle", 1)


def _cases():
    for variant in VARIANTS:
        for layout, (_, flat) in LAYOUTS.items():
            for suffix in (".pth", ".safetensors") if flat else (".pth",):
                yield pytest.param(variant, layout, suffix, id=f"{variant}-{layout}{suffix}")


@pytest.mark.parametrize("variant,layout,suffix", list(_cases()))
def test_every_layout_matches_oracle(tmp_path, variant, layout, suffix):
    kwargs, scale, _ = VARIANTS[variant]
    path = save(LAYOUTS[layout][0](state(variant)), tmp_path / f"model{suffix}")
    descriptor = load_model(path)
    for size in SIZES:
        ref = reference(variant, size)
        x = image(*size, c=ref.shape[1])
        with torch.no_grad():
            out = descriptor.model(x)
        assert out.shape == (1, ref.shape[1], size[0] * scale, size[1] * scale)
        assert (out - ref).abs().max().item() <= TOL, f"{variant} {layout}{suffix} {size}"

    info = model_info(descriptor)
    assert info["architecture"] == "RRDBNet"
    assert info["scale"] == scale == descriptor.scale
    assert info["in_channels"] == kwargs.get("in_ch", 3)
    assert info["out_channels"] == kwargs.get("out_ch", 3)
    assert info["key_format"] == EXPECTED_KEY_FORMAT.get(layout, "basicsr")
    assert info["num_feat"] == kwargs["num_feat"]
    assert info["num_block"] == kwargs["num_block"]
    assert info["num_grow_ch"] == kwargs.get("num_grow_ch", 32)
    assert info["num_upsample"] == kwargs.get("num_upsample", 2)
    assert info["unshuffle"] == kwargs.get("unshuffle", 1)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 2), (5, 7)])
def test_tiny_and_odd_inputs(tmp_path, variant, size):
    """Inputs smaller than the unshuffle factor: padding must still be defined (reflect as far
    as possible, then replicate) and the output cropped back to exactly size x scale."""
    sd = state(variant)
    scale = VARIANTS[variant][1]
    descriptor = load_model(save(sd, tmp_path / "m.safetensors"))
    x = image(*size, c=descriptor.input_channels, seed=7)
    with torch.no_grad():
        direct = descriptor.model(x)
        via_descriptor = descriptor(x)  # spandrel pads to multiple_of first, then crops
        ref = rrdbnet_oracle(sd, x)
    assert direct.shape == ref.shape == (1, descriptor.output_channels, size[0] * scale, size[1] * scale)
    assert (direct - ref).abs().max().item() <= TOL
    assert (via_descriptor - ref.clamp(0, 1)).abs().max().item() <= TOL


@pytest.mark.parametrize("variant", ["x4", "x2-unshuffle", "x1-unshuffle"])
def test_descriptor_call_matches_spandrel_descriptor(tmp_path, variant):
    """The host-facing call (padding, clamping) agrees with spandrel's network. (Not with
    spandrel's descriptor call for x2: that pads to a multiple of 4, Real-ESRGAN pads to 2.)"""
    sd = state(variant)
    ours = load_model(save(sd, tmp_path / "m.pth"))
    theirs = ModelLoader().load_from_state_dict(dict(sd))
    assert ours.scale == theirs.scale
    x = image(19, 13, seed=3)
    with torch.no_grad():
        assert (ours(x) - theirs.model.eval()(x).clamp(0, 1)).abs().max().item() <= TOL


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin"])
def test_other_pickle_suffixes(tmp_path, suffix):
    sd = state("x4")
    descriptor = load_model(save({"params_ema": sd}, tmp_path / f"m{suffix}"))
    x = image(16, 16, seed=0)
    with torch.no_grad():
        assert (descriptor.model(x) - reference("x4", (16, 16))).abs().max().item() <= TOL


def test_nested_prefixes_and_wrappers(tmp_path):
    """DataParallel inside a training checkpoint: {'params_ema': {'module.conv_first.weight': …}}."""
    sd = state("x2-unshuffle")
    wrapped = {"params_ema": {f"module.{k}": v for k, v in sd.items()}, "iter": 5}
    descriptor = load_model(save(wrapped, tmp_path / "m.pth"))
    assert descriptor.scale == 2
    with torch.no_grad():
        out = descriptor.model(image(17, 23))
    assert (out - reference("x2-unshuffle", (17, 23))).abs().max().item() <= TOL


def test_fp16_and_bf16_flags(tmp_path):
    descriptor = load_model(save(state("x4"), tmp_path / "m.safetensors"))
    info = model_info(descriptor)
    assert info["supports_half"] and info["supports_bfloat16"]
    assert descriptor.purpose == "SR"
    assert load_model(save(state("x1-old"), tmp_path / "x1.safetensors")).purpose == "Restoration"
