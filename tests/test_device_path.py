"""The tile loop's device path (engine/run.py ACCUMULATE_ON, engine/tile_loop.py Run.on_device):
tiles add into a result kept on the device, the image goes up once and the result comes home
once, and the NaN guard reads the image's finite flags after its last tile. CUDA takes it; here
the CPU is made to take it, so the same code runs against the host path as oracle."""
from __future__ import annotations

import pytest
import torch

from realesrgan_tiled.engine import run as engine_run
from realesrgan_tiled.engine.memory import model_overlap

from .conftest import photo, run_engine, upscaled
from .engine_fixtures import NAN_MARK, descriptor_of, nan_where_marked, spy_descriptor


@pytest.fixture
def device_path(monkeypatch):
    """The CPU takes the device path, as CUDA does where the result fits."""
    monkeypatch.setattr(engine_run, "ACCUMULATE_ON", ("cpu",))
    took = []
    real = engine_run._result_fits_on_device
    monkeypatch.setattr(engine_run, "_result_fits_on_device", lambda *a: took.append(real(*a)) or took[-1])
    return took


def images(n: int = 2, size=(48, 64), alpha: bool = False) -> torch.Tensor:
    big = photo("astronaut")[0]
    batch = torch.stack([big[40 * i : 40 * i + size[0], 50 * i : 50 * i + size[1]] for i in range(n)])
    if alpha:  # a real gradient alpha: its own model pass
        ramp = torch.linspace(0, 1, size[1]).expand(n, size[0], size[1])
        batch = torch.cat([batch, ramp.unsqueeze(-1)], -1)
    return batch


@pytest.mark.parametrize("case", [
    dict(),
    dict(alpha=True),
    dict(output_size=(150, 170)),
    dict(output_dtype=torch.uint8),
])
def test_the_device_path_equals_the_host_path(compact, device_path, case):
    case = dict(case)
    batch = images(alpha=case.pop("alpha", False))
    kwargs = dict(tile_size=32, overlap=8, **case)
    on_device = run_engine(compact, batch, **kwargs)
    assert device_path == [True]
    device_path.clear()
    engine_run.ACCUMULATE_ON = ()
    on_host = run_engine(compact, batch, **kwargs)
    assert device_path == [False]
    assert on_device.ran.tiles == on_host.ran.tiles > 2 * batch.shape[0]
    assert torch.equal(on_device.images, on_host.images)  # the same tiles added in the same order


def test_the_device_path_is_seam_free(compact, device_path):
    """Against an untiled run: tiles with enough overlap reproduce the whole image."""
    batch = images(1, (64, 80))
    tiled = upscaled(compact, batch, tile_size=32, overlap=model_overlap(compact))
    whole = upscaled(compact, batch, tile_size=80)
    assert device_path == [True]
    assert (tiled - whole).abs().max() < 1e-5


def test_the_nan_flag_reruns_only_its_tile_after_the_images_last_tile(compact, device_path):
    image = images(1, (48, 48))
    image[0, :16, :16] = NAN_MARK  # marks the first tile's input
    model, spy = nan_where_marked(compact)
    result = run_engine(model, image, tile_size=32, overlap=16, precision="bf16")
    assert device_path == [True]
    assert result.ran.fp32_reruns == 1
    halves = [half for _, half in spy.calls]
    assert halves == [True] * 4 + [False]  # every tile queued first; the flagged one alone in fp32 after them
    fp32 = upscaled(compact, image, tile_size=32, overlap=16, precision="fp32")
    assert bool(torch.isfinite(result.images).all())
    assert (result.images - fp32).abs().max() < 3e-2  # bf16 tiles vs fp32: the flagged tile's zeros were replaced


def test_out_of_memory_on_the_device_path_splits_the_tile_there(compact, device_path):
    batch = images(1, (64, 64))

    def fail(x):
        return torch.OutOfMemoryError("out of memory (fake)") if x.shape[-1] * x.shape[-2] > 24 * 24 else None

    model, spy = spy_descriptor(descriptor_of(compact.model), fail)
    result = run_engine(model, batch, tile_size=32, overlap=8)
    assert device_path == [True] and result.ran.oom_retries >= 1
    host = upscaled(compact, batch, tile_size=16, overlap=8)
    assert (result.images - host).abs().max() < 1e-5


def test_the_device_path_is_taken_only_where_the_result_fits(compact):
    gpu = torch.device("cuda")
    per_frame = (1e6, 1e8)  # 1 MB fixed, 100 MB a whole 1000x1000 frame
    fits = engine_run._result_fits_on_device
    # a 250 px tile: 1 MB + 6.25 MB; the image and its x4 result: 204 MB; CUDA's budget: 60 % of free
    assert fits(gpu, _host(free=400e6), per_frame, 250, (1000, 1000), 3, 4)
    assert not fits(gpu, _host(free=300e6), per_frame, 250, (1000, 1000), 3, 4)
    assert not fits(torch.device("mps"), _host(free=10e9), per_frame, 250, (1000, 1000), 3, 4)  # no streams, kept as it was
    assert not fits(torch.device("cpu"), _host(free=10e9), per_frame, 250, (1000, 1000), 3, 4)


def _host(free: float):
    from realesrgan_tiled.engine import Host

    return Host(free_memory=lambda device: int(free))
