"""Sniffing edge cases, wrapper preference, spandrel fallback and the errors around it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from spandrel import ImageModelDescriptor

from realesrgan_tiled import loading
from realesrgan_tiled.errors import ModelLoadError
from realesrgan_tiled.loading import load_model, model_info
from realesrgan_tiled.loading.descriptor import SPANDREL_ARCHITECTURES
from realesrgan_tiled.loading.sniff import sniff, unwrap_state_dict

from .model_fixtures import image, rrdbnet_oracle, rrdbnet_state, save, srvgg_state

TOL = 1e-5


# ---- spandrel fallback -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def span_net():
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(0)
    return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=2).eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_spandrel_fallback_span(tmp_path, span_net, suffix):
    path = save(dict(span_net.state_dict()), tmp_path / f"span{suffix}")
    descriptor = load_model(path)
    info = model_info(descriptor)
    assert info["architecture"] == "SPAN"
    assert info["key_format"] == "spandrel"
    assert info["scale"] == 2 and info["in_channels"] == 3 and info["out_channels"] == 3
    x = image(12, 15)
    with torch.no_grad():
        ref = span_net(x)
        # SPAN fuses its reparameterised convs differently per instance: float rounding only
        assert (descriptor.model(x) - ref).abs().max().item() <= TOL * ref.abs().max().item()


def test_spandrel_fallback_inside_a_wrapper(tmp_path, span_net):
    path = save({"params_ema": dict(span_net.state_dict()), "iter": 1}, tmp_path / "span.pth")
    assert model_info(load_model(path))["architecture"] == "SPAN"


def test_unknown_state_dict_names_file_and_keys(tmp_path):
    sd = {"encoder.stem.weight": torch.randn(4, 3, 3, 3), "encoder.stem.bias": torch.randn(4),
          "decoder.head.weight": torch.randn(3, 4, 1, 1)}
    with pytest.raises(ModelLoadError) as err:
        load_model(save(sd, tmp_path / "mystery.safetensors"))
    msg = str(err.value)
    assert "mystery.safetensors" in msg and "not a supported upscale model" in msg
    assert "encoder.stem.weight" in msg and "decoder.head.weight" in msg


def test_torchvision_classifier_is_refused(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    sd = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(ModelLoadError, match=r"resnet\.pth: not a supported upscale model.*first keys: conv1\.weight"):
        load_model(save(sd, tmp_path / "resnet.pth"))


def test_inpainting_model_is_not_an_upscaler():
    """spandrel knows LaMa, but it is a masked inpainting model, not image-to-image."""
    from spandrel.architectures.LaMa import LaMa

    with pytest.raises(ModelLoadError, match=r"lama\.pth: is a LaMa inpainting model, not an image-to-image upscaler"):
        loading.loader._load_with_spandrel(Path("lama.pth"), LaMa().state_dict())


@pytest.mark.parametrize("obj, holds", [
    ({"lr": 0.1, "epoch": 3}, "a dict with keys lr (float), epoch (int)"),
    ([torch.zeros(3)], "a list of 1 item"),
    (torch.zeros(3, 3), "a single tensor [3, 3], not named weights"),
    ({"params_ema": {}, "params": {}}, "a dict with keys params_ema (dict of 0), params (dict of 0)"),
    ({"optimizer": {"state": {}}}, "a dict with keys optimizer (dict of 1)"),
    ({"a": srvgg_state(), "b": srvgg_state()}, "a dict with keys a (dict of"),  # two candidates: ambiguous
])
def test_files_without_a_state_dict_say_what_they_hold(tmp_path, obj, holds):
    with pytest.raises(ModelLoadError) as e:
        load_model(save(obj, tmp_path / "ckpt.pth"))
    assert str(e.value).startswith(f"ckpt.pth: no model weights found: the file holds {holds}")


# ---- wrappers and prefixes ------------------------------------------------------------------


def test_params_ema_preferred_over_params(tmp_path):
    ema, raw = rrdbnet_state(num_feat=8, num_grow_ch=4, seed=1), rrdbnet_state(num_feat=8, num_grow_ch=4, seed=2)
    for obj in ({"params": raw, "params_ema": ema}, {"params_ema": ema, "params": raw}):
        descriptor = load_model(save(obj, tmp_path / "both.pth"))
        x = image(9, 10)
        with torch.no_grad():
            assert (descriptor.model(x) - rrdbnet_oracle(ema, x)).abs().max().item() <= TOL


def test_empty_params_ema_falls_back_to_params(tmp_path):
    raw = rrdbnet_state(num_feat=8, num_grow_ch=4, seed=2)
    descriptor = load_model(save({"params_ema": {}, "params": raw}, tmp_path / "m.pth"))
    x = image(9, 10)
    with torch.no_grad():
        assert (descriptor.model(x) - rrdbnet_oracle(raw, x)).abs().max().item() <= TOL


def test_unwrap_nesting_and_prefixes():
    sd = {"conv.weight": torch.zeros(1)}
    assert unwrap_state_dict({"state_dict": {"params_ema": {"module.conv.weight": torch.zeros(1)}}}).keys() == sd.keys()
    assert unwrap_state_dict({"netG.conv.weight": torch.zeros(1), "step": 4}).keys() == sd.keys()
    assert unwrap_state_dict({"model": {"module.netG.conv.weight": torch.zeros(1)}}).keys() == sd.keys()
    # only a prefix that *every* key shares is stripped
    assert set(unwrap_state_dict({"module.a": torch.zeros(1), "b": torch.zeros(1)})) == {"module.a", "b"}
    assert unwrap_state_dict(None) == {} and unwrap_state_dict([1, 2]) == {}
    assert unwrap_state_dict({1: torch.zeros(1), "x": torch.zeros(1)}).keys() == {"x"}


# ---- sniffing edge cases -----------------------------------------------------------------------


def test_look_alikes_go_to_spandrel():
    """Networks that share some of our key names but are bigger are left to spandrel."""
    rrdb = rrdbnet_state(num_feat=8, num_grow_ch=4)
    mmrealsr_like = dict(rrdb, **{f"de_net.conv{i}.weight": torch.zeros(8, 8, 3, 3) for i in range(6)})
    assert sniff(mmrealsr_like) is None
    rcan_like = {"body.0.weight": torch.zeros(8, 8, 3, 3), "body.0.bias": torch.zeros(8),
                 **{f"body.1.body.{i}.body.0.weight": torch.zeros(8, 8, 3, 3) for i in range(5)}}
    assert sniff(rcan_like) is None
    esrgan_plus = dict(rrdb, **{"body.0.rdb1.conv1x1.weight": torch.zeros(4, 8, 1, 1)})
    assert sniff(esrgan_plus) is None
    assert sniff({"body.0.weight": torch.zeros(8)}) is None  # not a conv


def test_sniff_reads_shapes_not_defaults():
    spec = sniff(rrdbnet_state(num_feat=12, num_block=3, num_grow_ch=5, num_upsample=3))
    assert spec.architecture == "RRDBNet" and spec.scale == 8
    assert spec.hyperparameters | {} == dict(num_in_ch=3, num_out_ch=3, num_feat=12, num_block=3, num_grow_ch=5,
                                             num_upsample=3, unshuffle=1, scale=8)
    spec = sniff(srvgg_state(num_feat=7, num_conv=5, upscale=3))
    assert spec.hyperparameters == dict(num_in_ch=3, num_out_ch=3, num_feat=7, num_conv=5, upscale=3,
                                        act_type="prelu", scale=3)


def test_non_integer_unshuffle_scale(tmp_path):
    sd = rrdbnet_state(num_feat=8, num_grow_ch=4, num_upsample=1, unshuffle=4)  # 2 / 4: not an integer scale
    with pytest.raises(ModelLoadError, match=r"m\.pth: looks like RRDBNet but 1 upsample stage"):
        load_model(save(sd, tmp_path / "m.pth"))


def test_srvgg_body_ending_in_an_activation(tmp_path):
    sd = srvgg_state(num_feat=8, num_conv=1)
    sd["body.5.weight"] = torch.rand(8)  # a PReLU after the last conv
    with pytest.raises(ModelLoadError, match=r"m\.pth: looks like SRVGGNetCompact but its last layer is body\.5"):
        load_model(save(sd, tmp_path / "m.pth"))


# ---- files, dtypes, registry ----------------------------------------------------------------


def test_half_precision_weights_load(tmp_path):
    sd = {k: v.half() for k, v in rrdbnet_state(num_feat=8, num_grow_ch=4).items()}
    descriptor = load_model(save(sd, tmp_path / "fp16.safetensors"))
    x = image(8, 8)
    with torch.no_grad():
        ref = rrdbnet_oracle({k: v.float() for k, v in sd.items()}, x)
        assert (descriptor.model(x) - ref).abs().max().item() <= TOL
    assert next(descriptor.model.parameters()).dtype == torch.float32


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(ModelLoadError, match=r"nope\.pth: no such file"):
        load_model(tmp_path / "nope.pth")
    with pytest.raises(ModelLoadError, match=r"no such file"):
        load_model(tmp_path)  # a directory
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07")
    with pytest.raises(ModelLoadError, match=r"model\.onnx: unsupported file type \.onnx"):
        load_model(onnx)


def test_suffix_is_case_insensitive(tmp_path):
    sd = rrdbnet_state(num_feat=8, num_grow_ch=4)
    assert load_model(save(sd, tmp_path / "a.pth").rename(tmp_path / "A.PTH")).scale == 4
    save(sd, tmp_path / "b.safetensors").rename(tmp_path / "B.SafeTensors")
    assert load_model(tmp_path / "B.SafeTensors").scale == 4


def test_own_architectures_work_as_spandrel_architectures():
    sd = {"params_ema": rrdbnet_state(num_feat=8, num_grow_ch=4)}
    arch = SPANDREL_ARCHITECTURES["RRDBNet"]
    assert arch.detect(sd) and not SPANDREL_ARCHITECTURES["SRVGGNetCompact"].detect(sd)
    assert isinstance(arch.load(sd), ImageModelDescriptor)
    assert not arch.detect({"x": torch.zeros(1)})
    with pytest.raises(ModelLoadError):
        arch.load({"x": torch.zeros(1)})
