"""The ncnn import against the real ncnn runtime: the bundled Real-ESRGAN exports, small
random-weight graphs written here, and the files it must refuse."""
from __future__ import annotations

import shutil

import pytest
import torch

from realesrgan_tiled.archs import RRDBNet, SRVGGNetCompact
from realesrgan_tiled.archs.output_resize import OutputResize
from realesrgan_tiled.errors import ModelLoadError
from realesrgan_tiled.loading import load_model
from realesrgan_tiled.loading.bundled import BUNDLED, bundled_model_path
from realesrgan_tiled.loading.ncnn import read_ncnn

from .conftest import photo
from .ncnn_fixtures import (
    GraphWriter,
    blob_names,
    one_torch_thread,  # noqa: F401  (autouse)
    run_ncnn,
    write_rrdbnet,
    write_srvgg,
)

pytest.importorskip("ncnn")

TOL = 1e-4

# bundled model -> (crop h, w, photo, expected architecture, scale); odd sizes where the graph allows
BUNDLED_CASES = {
    "RealESRGAN_x4plus": (40, 48, "astronaut", "RRDBNet", 4),
    "RealESRGAN_x4plus_anime_6B": (41, 47, "chelsea", "RRDBNet", 4),
    "realesr-animevideov3-x4": (63, 57, "coffee", "SRVGGNetCompact", 4),
    "realesr-animevideov3-x3": (61, 59, "astronaut", "SRVGGNetCompact", 3),
    "realesr-animevideov3-x2": (57, 65, "chelsea", "SRVGGNetCompact", 2),
}


def _image(name: str, h: int, w: int) -> torch.Tensor:
    return photo(name, (h, w)).permute(0, 3, 1, 2).contiguous()


def _ours(param, x: torch.Tensor) -> torch.Tensor:
    descriptor = load_model(param)
    with torch.no_grad():
        return descriptor.model(x)  # unclamped network output (the descriptor's __call__ clamps)


def _assert_matches_ncnn(param, x: torch.Tensor, tol: float = TOL) -> torch.Tensor:
    ours = _ours(param, x)
    ref = run_ncnn(param, x)
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} vs the ncnn runtime"
    return ours


def test_bundled_cases_cover_every_bundled_model():
    assert set(BUNDLED_CASES) == set(BUNDLED)


@pytest.mark.parametrize("name", list(BUNDLED_CASES))
def test_bundled_model_matches_ncnn_runtime(name):
    h, w, image, arch, scale = BUNDLED_CASES[name]
    param = bundled_model_path(name)
    descriptor = load_model(param)
    assert descriptor.architecture.name == arch
    assert descriptor.scale == scale
    assert descriptor.model.key_format == "ncnn"
    x = _image(image, h, w)
    out = _assert_matches_ncnn(param, x)
    assert out.shape == (1, 3, h * scale, w * scale)
    assert out.std() > 0.05  # a real picture came out, not a constant


def test_bundled_hyperparameters():
    spec, resize = read_ncnn(bundled_model_path("RealESRGAN_x4plus"))
    assert spec.architecture == "RRDBNet" and spec.key_format == "ncnn" and resize is None
    assert spec.hyperparameters == dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32,
                                        num_upsample=2, unshuffle=1, scale=4)
    spec, resize = read_ncnn(bundled_model_path("RealESRGAN_x4plus_anime_6B"))
    assert spec.hyperparameters["num_block"] == 6
    for name, factor in (("realesr-animevideov3-x4", None), ("realesr-animevideov3-x3", 0.75),
                         ("realesr-animevideov3-x2", 0.5)):
        spec, resize = read_ncnn(bundled_model_path(name))
        assert spec.hyperparameters == dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4,
                                            act_type="prelu", scale=4)
        assert resize == (None if factor is None else (factor, "bicubic"))


def test_bin_path_loads_the_same_model(tmp_path):
    param = bundled_model_path("realesr-animevideov3-x4")
    by_param, _ = read_ncnn(param)
    by_bin, _ = read_ncnn(param.with_suffix(".bin"))
    assert by_param.state_dict.keys() == by_bin.state_dict.keys()
    assert all(torch.equal(by_param.state_dict[k], by_bin.state_dict[k]) for k in by_param.state_dict)
    assert load_model(param.with_suffix(".bin")).scale == 4


# ---- synthetic graphs ----------------------------------------------------------------------

def _random_rrdbnet(seed: int, **kw) -> tuple[RRDBNet, dict]:
    torch.manual_seed(seed)
    net = RRDBNet(num_feat=16, num_block=2, num_grow_ch=8, **kw)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in net.state_dict().items()}  # non-zero biases too
    return net, state


def _random_srvgg(seed: int, act: str, upscale: int) -> dict:
    torch.manual_seed(seed)
    net = SRVGGNetCompact(num_feat=16, num_conv=3, upscale=upscale, act_type=act)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in net.state_dict().items()}
    for k in state:
        if state[k].ndim == 1 and act == "prelu" and int(k.split(".")[1]) % 2:
            state[k] = torch.rand_like(state[k]) * 0.5  # PReLU slopes in 0..0.5
    return state


def _assert_same_weights(spec, state, fp16: bool):
    assert spec.state_dict.keys() == state.keys()
    for k, v in state.items():
        expected = v.half().float() if fp16 and v.ndim == 4 else v  # conv weights stored as fp16
        assert torch.equal(spec.state_dict[k], expected), k


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("sum_style", ["eltwise", "binaryop"])
def test_synthetic_rrdbnet_matches_ncnn(tmp_path, fp16, sum_style):
    _, state = _random_rrdbnet(1)
    param = write_rrdbnet(tmp_path / "rrdb", state, num_block=2, num_upsample=2, fp16=fp16, sum_style=sum_style)
    spec, resize = read_ncnn(param)
    assert resize is None
    assert spec.hyperparameters == dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=2, num_grow_ch=8,
                                        num_upsample=2, unshuffle=1, scale=4)
    _assert_same_weights(spec, state, fp16)
    _assert_matches_ncnn(param, _image("coffee", 21, 26))


@pytest.mark.parametrize("mode", [0, 1])
def test_synthetic_rrdbnet_pixel_unshuffle_matches_ncnn(tmp_path, mode):
    """Real-ESRGAN x2plus layout: Reorg (pixel-unshuffle by 2) before conv_first."""
    _, state = _random_rrdbnet(2, unshuffle=2)
    param = write_rrdbnet(tmp_path / "x2", state, num_block=2, num_upsample=2, unshuffle=2, unshuffle_mode=mode)
    spec, _ = read_ncnn(param)
    assert spec.hyperparameters["unshuffle"] == 2 and spec.hyperparameters["scale"] == 2
    assert torch.equal(spec.state_dict["conv_first.weight"], state["conv_first.weight"])
    out = _assert_matches_ncnn(param, _image("astronaut", 22, 28))
    assert out.shape[-2:] == (44, 56)


def test_synthetic_rrdbnet_one_upsample_with_trailing_resize(tmp_path):
    _, state = _random_rrdbnet(3, num_upsample=1)
    param = write_rrdbnet(tmp_path / "r", state, num_block=2, num_upsample=1, resize=(2, 1.5))
    spec, resize = read_ncnn(param)
    assert resize == (1.5, "bilinear") and spec.hyperparameters["scale"] == 2
    assert load_model(param).scale == 3
    _assert_matches_ncnn(param, _image("chelsea", 19, 23))


@pytest.mark.parametrize(
    "act, upscale, fp16, fused",
    [("relu", 2, False, True), ("relu", 3, True, False), ("leakyrelu", 2, True, True),
     ("leakyrelu", 3, False, False), ("prelu", 2, True, False), ("prelu", 3, False, False)],
)
def test_synthetic_srvgg_matches_ncnn(tmp_path, act, upscale, fp16, fused):
    state = _random_srvgg(10 + upscale, act, upscale)
    param = write_srvgg(tmp_path / "vgg", state, upscale, act, fp16=fp16, fused=fused)
    spec, resize = read_ncnn(param)
    assert resize is None
    assert spec.hyperparameters == dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=3, upscale=upscale,
                                        act_type=act, scale=upscale)
    _assert_same_weights(spec, state, fp16)
    _assert_matches_ncnn(param, _image("coffee", 27, 31))


@pytest.mark.parametrize("upscale, mode, factor, size", [(4, 3, 0.5, (17, 23)), (3, 3, 2 / 3, (19, 20)), (4, 2, 0.75, (21, 15)),
                                                         (2, 1, 0.5, (15, 13)), (2, 3, 1.5, (13, 17)), (3, 2, 1 / 3, (11, 14))])
def test_synthetic_srvgg_trailing_resize_matches_ncnn(tmp_path, upscale, mode, factor, size):
    state = _random_srvgg(20 + upscale, "prelu", upscale)
    param = write_srvgg(tmp_path / "vgg", state, upscale, "prelu", resize=(mode, factor))
    spec, resize = read_ncnn(param)
    assert resize[1] == {1: "nearest", 2: "bilinear", 3: "bicubic"}[mode]
    assert abs(resize[0] - factor) < 1e-6
    assert load_model(param).scale == round(upscale * factor)
    _assert_matches_ncnn(param, _image("astronaut", *size))


@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize("factor, size", [(0.5, (7, 9)), (0.75, (9, 7)), (1.5, (5, 11)), (1 / 3, (8, 10)), (2.0, (6, 5))])
def test_output_resize_matches_ncnn_interp(tmp_path, mode, factor, size):
    """OutputResize on its own against a lone ncnn Interp, on sizes where ``h * factor`` is not
    whole: ncnn maps coordinates with the factor itself, not with in/out sizes."""
    g = GraphWriter()
    param = g.save(tmp_path / "interp", g.interp(g.data, mode, factor))
    factor_in_file = float(f"{factor:e}")
    resize = OutputResize(torch.nn.Identity(), factor_in_file, {1: "nearest", 2: "bilinear", 3: "bicubic"}[mode])
    x = _image("chelsea", *size)
    ref = run_ncnn(param, x)
    ours = resize(x)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-5


def test_synthetic_srvgg_pixel_shuffle_mode1_matches_ncnn(tmp_path):
    state = _random_srvgg(30, "relu", 2)
    param = write_srvgg(tmp_path / "vgg", state, 2, "relu", shuffle_mode=1)
    spec, _ = read_ncnn(param)
    _assert_same_weights(spec, state, False)
    _assert_matches_ncnn(param, _image("coffee", 16, 18))


def test_fp16_weights_with_odd_count_are_padded(tmp_path):
    """fp16 weight blocks are padded to 4 bytes: a 1-channel 1-feature net has 9-value convs."""
    torch.manual_seed(5)
    net = SRVGGNetCompact(num_in_ch=1, num_out_ch=1, num_feat=1, num_conv=1, upscale=1, act_type="relu")
    state = {k: v + 0.1 * torch.randn_like(v) for k, v in net.state_dict().items()}
    param = write_srvgg(tmp_path / "tiny", state, 1, "relu", fp16=True)
    spec, _ = read_ncnn(param)
    _assert_same_weights(spec, state, True)
    x = _image("coffee", 9, 11)[:, :1]
    _assert_matches_ncnn(param, x)


def test_lookup_table_weights(tmp_path):
    """ncnn's third storage: a 256-value table and one uint8 index per weight."""
    state = _random_srvgg(40, "relu", 2)
    param = write_srvgg(tmp_path / "table", state, 2, "relu", fp16="table")
    spec, _ = read_ncnn(param)
    w = spec.state_dict["body.0.weight"]
    assert 2 < w.unique().numel() <= 256  # quantised to the table
    assert (w - state["body.0.weight"]).abs().max() < 0.01
    _assert_matches_ncnn(param, _image("coffee", 15, 17))


def test_reshape_permute_unshuffle_is_refused_with_a_hint(tmp_path):
    g = GraphWriter()
    x = g.layer("Reshape", [g.data], {0: 20, 1: 16, 2: 12})
    param = g.save(tmp_path / "reshape", g.conv(x, torch.randn(3, 12, 3, 3), torch.zeros(3)))
    _refused(param, param.name, "Reshape", "Reorg")


# ---- files that must be refused ------------------------------------------------------------

def _copy_bundled(tmp_path, name="realesr-animevideov3-x4"):
    src = bundled_model_path(name)
    param = tmp_path / src.name
    shutil.copy(src, param)
    shutil.copy(src.with_suffix(".bin"), param.with_suffix(".bin"))
    return param


def _refused(path, *fragments):
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_bad_magic(tmp_path):
    param = _copy_bundled(tmp_path)
    text = param.read_text().splitlines()
    param.write_text("\n".join(["7767518", *text[1:]]) + "\n")
    _refused(param, param.name, "magic")


@pytest.mark.parametrize("delta", [-1, 1, -4, 7])
def test_bin_wrong_size(tmp_path, delta):
    param = _copy_bundled(tmp_path)
    bin_path = param.with_suffix(".bin")
    data = bin_path.read_bytes()
    bin_path.write_bytes(data[:delta] if delta < 0 else data + b"\0" * delta)
    word = "short" if delta < 0 else "long"
    _refused(param, bin_path.name, f"{abs(delta)} byte(s) too {word}")


def test_bin_short_in_the_middle_says_at_least(tmp_path):
    param = _copy_bundled(tmp_path)
    bin_path = param.with_suffix(".bin")
    bin_path.write_bytes(bin_path.read_bytes()[:1000])
    _refused(param, bin_path.name, "too short (at least", "Conv_0")


def test_missing_bin(tmp_path):
    param = _copy_bundled(tmp_path)
    param.with_suffix(".bin").unlink()
    _refused(param, param.name, param.with_suffix(".bin").name, "missing")


def test_missing_param_next_to_bin(tmp_path):
    param = _copy_bundled(tmp_path)
    param.unlink()
    with pytest.raises(ModelLoadError, match="REALESRGAN_ANIMAVIDEOV3_UP4X.param"):
        read_ncnn(param.with_suffix(".bin"))


def test_unexpected_layer_type(tmp_path):
    param = _copy_bundled(tmp_path)
    lines = param.read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("PReLU"))
    lines[i] = lines[i].replace("PReLU   ", "Sigmoid ", 1).split(" 0=")[0]
    param.write_text("\n".join(lines) + "\n")
    _refused(param, param.name, "PRelu_1", "Sigmoid")


def test_unexpected_graph_structure(tmp_path):
    """Valid ncnn, wrong network: the RDB residual scaled by 0.3 instead of 0.2."""
    _, state = _random_rrdbnet(4)
    param = write_rrdbnet(tmp_path / "bad_scale", state, num_block=2, num_upsample=2)
    text = param.read_text()
    param.write_text(text.replace("-23301=2,2.000000e-01,1.000000e+00", "-23301=2,3.000000e-01,1.000000e+00", 1))
    run_ncnn(param, _image("coffee", 8, 8))  # the runtime accepts it: only our structure check refuses it
    _refused(param, param.name, "Eltwise", "0.2")


def test_missing_activation_on_conv_hr(tmp_path):
    _, state = _random_rrdbnet(5)
    param = write_rrdbnet(tmp_path / "no_act", state, num_block=2, num_upsample=2)
    lines = param.read_text().splitlines()
    last_convs = [n for n, line in enumerate(lines) if line.startswith("Convolution")][-2]  # conv_hr
    lines[last_convs] = lines[last_convs].replace(" 9=2 -23310=1,2.000000e-01", "")
    param.write_text("\n".join(lines) + "\n")
    _refused(param, param.name, "conv_hr", "LeakyReLU(0.2)")


def test_concat_order_checked(tmp_path):
    _, state = _random_rrdbnet(6)
    param = write_rrdbnet(tmp_path / "order", state, num_block=2, num_upsample=2)
    lines = param.read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("Concat") and " 2 1 " in line)
    tok = lines[i].split()
    tok[4], tok[5] = tok[5], tok[4]
    lines[i] = " ".join(tok)
    param.write_text("\n".join(lines) + "\n")
    run_ncnn(param, _image("coffee", 8, 8))  # channel counts still fit, so ncnn runs it
    _refused(param, param.name, "Concat")


def test_extra_output_branch(tmp_path):
    g = GraphWriter()
    w = torch.randn(4, 3, 3, 3)
    a = g.conv(g.data, w, torch.zeros(4))
    g.relu(a)  # a dangling second output
    param = g.save(tmp_path / "two_outputs", g.conv(a, torch.randn(3, 4, 3, 3), torch.zeros(3)))
    _refused(param, param.name, "one output blob")


def test_layer_count_mismatch_and_garbage_param(tmp_path):
    param = _copy_bundled(tmp_path)
    lines = param.read_text().splitlines()
    param.write_text("\n".join([lines[0], "41 41", *lines[2:]]) + "\n")
    _refused(param, param.name, "declares 41 layers")
    param.write_bytes(b"\x00\xff\x13binary garbage")
    _refused(param, param.name)


def test_blob_names_from_file():
    assert blob_names(bundled_model_path("RealESRGAN_x4plus")) == ("data", "output")
