"""Model interpolation (interpolate.py, the node, the CLI option) against an independent oracle:
the weight-space blend computed here in float64, and a model built from that blend's file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from realesrgan_tiled.cli import main as cli_main
from realesrgan_tiled.errors import ModelLoadError
from realesrgan_tiled.loading import load_model
from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.loading.interpolate import interpolate, network_of
from realesrgan_tiled.nodes.upscale import interpolate_upscale_models

from .conftest import photo, upscaled
from .model_fixtures import save, srvgg_state


@pytest.fixture(scope="module")
def real_compact():
    return load_model(bundled_model_path("realesr-animevideov3-x4"))


@pytest.fixture(scope="module")
def other_compact(real_compact, tmp_path_factory):
    """Same shapes as the real model, other weights: the real ones perturbed by a fixed noise."""
    g = torch.Generator().manual_seed(3)
    sd = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in network_of(real_compact).state_dict().items()}
    return load_model(save(sd, tmp_path_factory.mktemp("b") / "other.safetensors"))


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_blend_equals_the_weight_space_oracle(real_compact, other_compact, weight, tmp_path):
    blended = interpolate(real_compact, other_compact, weight)
    sa, sb = network_of(real_compact).state_dict(), network_of(other_compact).state_dict()
    oracle = {k: ((1 - weight) * sa[k].double() + weight * sb[k].double()).float() for k in sa}
    got = network_of(blended).state_dict()
    assert got.keys() == oracle.keys()
    for k in oracle:
        assert torch.allclose(got[k], oracle[k], atol=1e-6, rtol=0), k
    from_file = load_model(save(oracle, tmp_path / "oracle.safetensors"))
    image = photo("astronaut", (20, 24))
    assert torch.allclose(upscaled(blended, image), upscaled(from_file, image), atol=2e-6)
    # the inputs are untouched
    assert torch.equal(network_of(real_compact).state_dict()["body.0.weight"], sa["body.0.weight"])


def test_models_that_do_not_match_name_the_first_difference(real_compact, tmp_path):
    rrdb = load_model(bundled_model_path("RealESRGAN_x4plus"))
    anime = load_model(bundled_model_path("RealESRGAN_x4plus_anime_6B"))
    with pytest.raises(ModelLoadError, match=r"body\.6\.rdb1\.conv1\.weight is in the first model only"):
        interpolate(rrdb, anime, 0.5)
    with pytest.raises(ModelLoadError, match="cannot interpolate a RRDBNet x4 model with a SRVGGNetCompact x4 model"):
        interpolate(rrdb, real_compact, 0.5)
    narrow = load_model(save(srvgg_state(num_feat=16, num_conv=16), tmp_path / "narrow.pth"))
    with pytest.raises(ModelLoadError, match=r"body\.0\.weight has shape \(64, 3, 3, 3\) in the first model and \(16, 3, 3, 3\)"):
        interpolate(real_compact, narrow, 0.5)


def test_bad_weights_and_non_finite_blends_are_refused(real_compact, tmp_path):
    zeros = {k: torch.zeros_like(v) for k, v in network_of(real_compact).state_dict().items()}
    dead = load_model(save(zeros, tmp_path / "zeros.safetensors"))
    # all-zero convs leave only the nearest-neighbour base: not constant, so allowed ...
    interpolate(real_compact, dead, 1.0)
    with pytest.raises(ModelLoadError, match="weight must be between 0 and 1"):
        interpolate(real_compact, dead, 1.5)
    nan_model = load_model(save(dict(zeros), tmp_path / "nan.safetensors"))
    with torch.no_grad():
        network_of(nan_model).body[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ModelLoadError, match=r"body\.0\.weight is not finite in the blend"):
        interpolate(real_compact, nan_model, 0.5)


def test_constant_output_is_refused(tmp_path):
    """An RRDBNet blend whose last conv is all zeros outputs its bias everywhere: constant."""
    rrdb = load_model(bundled_model_path("RealESRGAN_x4plus_anime_6B"))
    sd = {k: v.clone() for k, v in network_of(rrdb).state_dict().items()}
    sd["conv_last.weight"].zero_()
    flat = load_model(save(sd, tmp_path / "flat.safetensors"))
    with pytest.raises(ModelLoadError, match="constant image on a test pattern"):
        interpolate(rrdb, flat, 1.0)


def test_node_and_cli_give_the_same_blend(real_compact, other_compact, tmp_path):
    blended = interpolate_upscale_models(real_compact, other_compact, 0.25)
    assert torch.equal(network_of(blended).state_dict()["body.3.weight"],
                       network_of(interpolate(real_compact, other_compact, 0.25)).state_dict()["body.3.weight"])
    # the CLI: --model A --interpolate B --interpolate-weight W
    a_path = save(network_of(real_compact).state_dict(), tmp_path / "a.safetensors")
    b_path = save(network_of(other_compact).state_dict(), tmp_path / "b.safetensors")
    arr = (photo("astronaut", (16, 20))[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "in.png")
    assert cli_main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", str(a_path),
                     "--interpolate", str(b_path), "--interpolate-weight", "0.25", "--quiet"]) == 0
    out = np.asarray(Image.open(tmp_path / "out" / "in.png"))
    pixels = torch.from_numpy(arr.astype(np.float32) / 255).unsqueeze(0)
    expected = np.rint(upscaled(blended, pixels)[0].clamp(0, 1).numpy().astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(out, expected)


def test_cli_refuses_a_mismatch_in_one_line(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in.png")
    code = cli_main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", "RealESRGAN_x4plus",
                     "--interpolate", "realesr-animevideov3-x4", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot interpolate a RRDBNet x4 model with a SRVGGNetCompact x4 model") and "\n" not in err
