"""The engine's memory estimate of one tile (engine/memory.py) against the peak measured while
that tile runs, on real weights: for our networks (each architecture's cost profile, under the
plan that runs) and for spandrel's networks (measured on two probe tiles, then extrapolated).
An estimate below the peak is what sends a GPU out of memory; a tile size is only as good as it."""
from __future__ import annotations

import pytest
import torch
from spandrel import ImageModelDescriptor, ModelLoader, SizeRequirements

from realesrgan_tiled.archs import ARCHITECTURES, RRDBNetPlan, SRVGGPlan
from realesrgan_tiled.engine import call_model
from realesrgan_tiled.engine.memory import AllocationTracker, measured_cost, model_cost, peak_bytes
from realesrgan_tiled.loading import OurModel, build_descriptor
from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.loading.ncnn import read_ncnn

from .conftest import photo

CPU = torch.device("cpu")
# bundled model, side of the measured tile (large enough for the CPU plans' window paths)
MODELS = {"realesr-animevideov3-x4": 320, "RealESRGAN_x4plus_anime_6B": 208}
PLANS = {  # the plans our networks run: CPU windows (one worker, so the tracker sees every window) and whole maps
    "realesr-animevideov3-x4": {"windows": SRVGGPlan(), "whole-map": SRVGGPlan(window=None, channels_last=False),
                                "cuda-plan": SRVGGPlan.for_device(torch.device("cuda"))},
    "RealESRGAN_x4plus_anime_6B": {"windows": RRDBNetPlan(threads=1), "whole-map": RRDBNetPlan(trunk_window=None, tail_window=None),
                                   "cuda-plan": RRDBNetPlan.for_device(torch.device("cuda"))},
}


def _models(name: str, who: str):
    spec, _ = read_ncnn(bundled_model_path(name))
    if who == "spandrel":
        return ModelLoader().load_from_state_dict(dict(spec.state_dict)).eval()
    model = build_descriptor(spec)
    model.plan = PLANS[name][who]
    return model


@pytest.mark.parametrize("who", ["windows", "whole-map", "cuda-plan", "spandrel"])
@pytest.mark.parametrize("name", list(MODELS))
def test_estimate_is_at_least_the_measured_peak(name, who):
    model = _models(name, who)
    assert isinstance(model, OurModel) == (who != "spandrel")  # spandrel's twin is not costed as ours
    side = MODELS[name]
    x = photo("astronaut", (side, side)).permute(0, 3, 1, 2).contiguous()
    estimate = model_cost(model, CPU, torch.float32, call_model).bytes_for(side * side)
    peak = peak_bytes(lambda: call_model(model, x), CPU)
    assert peak <= estimate, f"{who}: measured {peak / side**2:.0f} B/px, estimated {estimate / side**2:.0f} B/px"
    assert estimate <= 4 * peak, "an estimate this loose would make tiles needlessly small"


def test_tracker_counts_what_is_alive_at_once():
    """The measuring stick itself: three 1 MiB tensors, at most two alive together."""
    with torch.inference_mode(), AllocationTracker() as tracker:
        a = torch.empty(1 << 18)
        b = a + 1
        del a
        c = b * 2
        del b, c
    assert tracker.peak == 2 << 20 and tracker.now == 0


def test_models_with_large_size_requirements_get_two_probe_sizes():
    """A model that needs inputs of at least 128 px in multiples of 64 is probed at two sizes
    that both meet that, so the per-pixel slope is measured, not divided by zero."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    model = ImageModelDescriptor(net, net.state_dict(), architecture=ARCHITECTURES["RRDBNet"], purpose="SR", tags=[],
                                 supports_half=True, supports_bfloat16=True, scale=2, input_channels=3, output_channels=3,
                                 size_requirements=SizeRequirements(minimum=128, multiple_of=64))
    sizes = []
    cost = measured_cost(model, CPU, torch.float32, lambda m, x: sizes.append(x.shape[-1]) or call_model(m, x))
    assert sizes == [128, 192]
    assert cost.per_pixel >= (8 + 12) * 4  # the two conv outputs per input pixel, at least


def test_without_procfs_the_ram_figure_comes_from_psutil_not_a_guess(tmp_path):
    """Windows and macOS have no /proc/meminfo: the budget must be the machine's, not 4 GiB."""
    import psutil

    from realesrgan_tiled.engine import memory

    got = memory.system_available_memory(meminfo=str(tmp_path / "no-such-file"))
    expected = psutil.virtual_memory().available
    assert got != memory.UNKNOWN_FREE and abs(got - expected) < 0.1 * expected


def test_accelerator_tiles_stay_under_2_to_the_31_elements():
    """On a GPU the automatic tile is capped so that a 64-channel map at the output scale stays
    below 2**31 elements, even when memory would allow the whole image; the CPU is not capped."""
    from realesrgan_tiled.engine.settings import auto_tile_size, device_tile_cap

    for scale in (1, 2, 4, 8):
        cap = device_tile_cap(torch.device("cuda"), scale)
        assert 64 * (cap * scale) ** 2 < 2**31 and 64 * ((cap + 8) * scale) ** 2 >= 2**31 * 0.9
    huge_budget = float(1 << 40)
    assert auto_tile_size((6000, 6000), 0, 1000, huge_budget, device_tile_cap(torch.device("cuda"), 4)) == 1448
    assert auto_tile_size((6000, 6000), 0, 1000, huge_budget, device_tile_cap(torch.device("cpu"), 4)) == 6000


def test_bf16_is_native_only_where_the_hardware_has_it():
    from realesrgan_tiled.engine.settings import native_bf16

    assert not native_bf16(torch.device("cpu"))
