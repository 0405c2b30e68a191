"""The tiled engine against independent oracles: an untiled run of the same model, the
model called directly, and fp32 runs for the precision guard."""
from __future__ import annotations

import copy

import pytest
import torch

from realesrgan_tiled.archs import RRDBNet, SRVGGPlan
from realesrgan_tiled.engine.channels import channel_passes
from realesrgan_tiled.engine.memory import peak_bytes
from realesrgan_tiled.engine.resize import resize_images
from realesrgan_tiled.engine.tiles import MIN_TILE, axis_spans, tile_starts
from realesrgan_tiled.errors import InputImageError
from realesrgan_tiled.loading import build_descriptor, load_model
from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.loading.sniff import sniff
from realesrgan_tiled.runtimes import backend as backends

from .conftest import photo, psnr, run_engine, upscaled
from .engine_fixtures import descriptor_of, direct, spy_descriptor

# ---- layout ------------------------------------------------------------------------------

@pytest.mark.parametrize("length,tile,overlap,scale,multiple", [
    (100, 32, 8, 4, 1), (1000, 512, 48, 4, 1), (513, 512, 48, 2, 2), (7, 16, 8, 4, 1),
    (61, 20, 10, 1, 4), (2048, 256, 64, 4, 1), (300, 64, 32, 3, 1),
])
def test_axis_weights_sum_to_one_and_tiles_are_even(length, tile, overlap, scale, multiple):
    spans = axis_spans(length, tile, overlap, scale, multiple)
    total = torch.zeros(length * scale)
    for s in spans:
        total[s.start * scale : s.end * scale] += s.weight
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    assert spans[0].start == 0 and spans[-1].end == length
    sizes = [s.end - s.start for s in spans]
    if len(spans) > 1:
        assert all(size == tile for size in sizes[:-1])  # no thin strips
        assert tile <= sizes[-1] < tile + multiple
        assert all(s.start % multiple == 0 for s in spans)
        assert all(a.end - b.start >= min(overlap, tile) - multiple for a, b in zip(spans, spans[1:]))


def test_tile_starts_single_tile_when_image_is_small():
    assert tile_starts(10, 64, 16) == [0]


# ---- fidelity ----------------------------------------------------------------------------

def test_tiled_equals_untiled_for_finite_receptive_field(compact):
    images = photo("astronaut", (70, 90)).repeat(2, 1, 1, 1)
    images[1] = images[1].flip(1)
    tiled = upscaled(compact, images, tile_size=32, overlap=16)
    assert (tiled - direct(compact, images)).abs().max() < 1e-5


@pytest.mark.parametrize("name", [
    "RealESRGAN_x4plus_anime_6B",
    pytest.param("RealESRGAN_x4plus", marks=pytest.mark.slow),  # ~2 min on 2 cores
])
def test_real_rrdbnet_tiled_vs_whole_image_psnr(name):
    """The issue's bar: real weights, real photo, tiled vs untiled >= 50 dB, and no row or
    column of the difference stands out (a seam would). RRDBNet's receptive field is far
    wider than any overlap, so this measures the blending, not just bookkeeping."""
    model = load_model(bundled_model_path(name))
    image = photo("astronaut", (112, 160))
    whole = upscaled(model, image, tile_size=512)
    result = run_engine(model, image, tile_size=96)  # automatic overlap
    tiled = result.images
    assert result.ran.tiles >= 4
    assert psnr(tiled, whole) >= 50
    diff = (tiled - whole)[0].abs().mean(-1)
    worst_row, worst_col = diff.mean(1).max().item(), diff.mean(0).max().item()
    assert max(worst_row, worst_col) < 1 / 255  # averaged over a line, a seam would show


def test_unshuffle_model_tiles_align_with_pixel_groups():
    torch.manual_seed(1)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, num_upsample=2, unshuffle=2)  # an x2 model
    model = descriptor_of(net)
    image = torch.rand(1, 45, 51, 3)
    tiled = upscaled(model, image, tile_size=24, overlap=12)
    assert tiled.shape == (1, 90, 102, 3)
    assert psnr(tiled, direct(model, image)) > 40


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 2), (1, 17), (9, 5)])
def test_tiny_inputs_match_direct_call(compact, size):
    image = torch.rand(1, *size, 3)
    out = upscaled(compact, image)
    assert out.shape == (1, size[0] * 4, size[1] * 4, 3)
    assert (out - direct(compact, image)).abs().max() < 1e-6


# ---- channels ----------------------------------------------------------------------------

def test_rgba_keeps_alpha_upscaled_with_the_model(compact):
    image = torch.rand(1, 20, 50, 4)
    out = upscaled(compact, image, tile_size=32, overlap=16)
    assert out.shape == (1, 80, 200, 4)
    assert (out[..., :3] - direct(compact, image[..., :3])).abs().max() < 1e-5
    alpha_as_rgb = image[..., 3:].expand(-1, -1, -1, 3)
    assert (out[..., 3] - direct(compact, alpha_as_rgb).mean(-1)).abs().max() < 1e-5


def test_opaque_alpha_stays_exactly_opaque(compact):
    image = torch.rand(1, 12, 10, 4)
    image[..., 3] = 1.0
    out = upscaled(compact, image)
    assert bool((out[..., 3] == 1.0).all())


def test_gray_image_runs_as_gray_rgb(compact):
    image = torch.rand(1, 11, 13, 1)
    out = upscaled(compact, image)
    assert out.shape == (1, 44, 52, 1)
    assert (out[..., 0] - direct(compact, image.expand(-1, -1, -1, 3)).mean(-1)).abs().max() < 1e-5


def test_channel_passes_respect_model_channels():
    assert channel_passes(3, 1) == [type(channel_passes(3, 1)[0])((i,), (i,)) for i in range(3)]
    assert [p.source for p in channel_passes(3, 4)] == [(0, 1, 2, -1)]
    assert [p.dest for p in channel_passes(4, 3)] == [(0, 1, 2), (3,)]


# ---- exact size, bad pixels, bad arguments ------------------------------------------------

def test_output_scale_is_a_high_quality_resize_of_the_model_output(compact):
    image = torch.rand(1, 16, 18, 3)
    out = upscaled(compact, image, output_scale=1.5)
    assert out.shape == (1, 24, 27, 3)
    expected = resize_images(direct(compact, image), (24, 27), "lanczos")
    assert (out - expected).abs().max() < 1e-5


def test_exact_output_size(compact):
    out = upscaled(compact, torch.rand(2, 10, 10, 3), output_size=(33, 17), resample="bicubic")
    assert out.shape == (2, 33, 17, 3)


def test_nan_and_out_of_range_pixels_give_finite_output(compact):
    image = torch.rand(1, 12, 12, 3) * 3 - 1
    image[0, 3, 4] = float("nan")
    image[0, 5, 6, 1] = float("inf")
    out = upscaled(compact, image)
    assert bool(torch.isfinite(out).all()) and out.min() >= 0 and out.max() <= 1
    assert (out - direct(compact, torch.nan_to_num(image, 0, 1, 0).clamp(0, 1))).abs().max() < 1e-5


@pytest.mark.parametrize("bad", [torch.rand(1, 0, 5, 3), torch.rand(1, 5, 5, 2), torch.rand(5, 5, 3),
                                 torch.randint(0, 255, (1, 4, 4, 3))])
def test_bad_image_tensors_get_clear_errors(compact, bad):
    with pytest.raises(InputImageError):
        upscaled(compact, bad)


def test_unknown_precision_is_refused(compact):
    with pytest.raises(InputImageError, match="precision"):
        upscaled(compact, torch.rand(1, 4, 4, 3), precision="fp8")


# ---- OOM, precision guard, cancel, streaming ----------------------------------------------

def test_progress_reports_every_tile(compact):
    seen = []
    upscaled(compact, torch.rand(2, 40, 40, 3), tile_size=24, overlap=8, progress=lambda d, t: seen.append((d, t)))
    total = seen[0][1]
    assert [d for d, _ in seen] == list(range(0, total + 1)) and total == 2 * 4


def test_batch_streams_one_tile_at_a_time(compact):
    """A long batch never reaches the model as a batch: one image tile per call, never larger
    than the tile, and the output is allocated once on the host."""
    model, spy = spy_descriptor(descriptor_of(compact.model))
    frames = torch.rand(64, 40, 40, 3)
    out = upscaled(model, frames, tile_size=32, overlap=16)
    assert out.shape == (64, 160, 160, 3)
    assert all(shape[0] == 1 and max(shape[-2:]) <= 32 for shape, _ in spy.calls)
    assert (out[17] - direct(compact, frames[17:18])[0]).abs().max() < 1e-5


def test_auto_tile_is_whole_image_when_it_fits_else_bounded_by_free_memory(compact):
    """The host's free memory decides: plenty -> one tile, no overlap; 64 MiB -> tiles whose
    working set (the model's cost profile) fits 40 % of it, on torch: ncnn's fixed working set
    would not leave room for a tile."""
    plenty = run_engine(compact, torch.rand(1, 96, 128, 3), free_memory=lambda device: 8 << 30).ran
    assert plenty.tiles == 1 and plenty.tile_size == 128
    tight = run_engine(compact, torch.rand(1, 300, 200, 3), free_memory=lambda device: 64 << 20).ran
    assert tight.backend == "torch"
    with backends.using("torch"):
        cost = compact.cost(torch.device("cpu"), 4)
    per_pixel = cost.per_pixel + 16 * 4**2  # and the tile's fp32 trip home
    assert tight.tiles > 1 and MIN_TILE <= tight.tile_size < 300
    assert cost.fixed + tight.tile_size**2 * per_pixel <= 0.4 * (64 << 20)


def test_host_is_asked_to_make_room_for_the_weights_then_the_working_set(compact):
    asked = []
    ran = run_engine(compact, torch.rand(1, 40, 40, 3), tile_size=32,
                     make_room=lambda device, n: asked.append((device.type, n))).ran
    weights = sum(t.numel() * 4 for t in compact.model.state_dict().values())
    with backends.using(ran.backend):  # the working set of the backend that ran
        cost = compact.cost(torch.device("cpu"), 4)
    assert asked[0] == ("cpu", weights)
    assert asked[1][1] == int(cost.fixed + 32 * 32 * (cost.per_pixel + 16 * 16)) and len(asked) == 2
    assert ran.tile_size == 32


def test_a_model_manager_places_the_model_with_room_for_the_working_set_and_keeps_it(compact):
    """ComfyUI's way: the host's manager puts the model on the device, asked for the weights
    (0 extra) and then for the tile's working set; the engine never moves the model, so it
    stays where the manager put it (not on the offload device) after the run and after a
    failure."""
    model, asked = copy.deepcopy(compact), []

    def place_model(device, working_set):
        asked.append(working_set)
        model.to(device)

    image = torch.rand(1, 40, 40, 3)
    result = run_engine(model, image, tile_size=32, place_model=place_model, offload_device="meta",
                        make_room=lambda device, n: pytest.fail("make_room beside a model manager"))
    with backends.using(result.ran.backend):
        cost = model.cost(torch.device("cpu"), 4)
    working_set = int(cost.fixed + 32 * 32 * (cost.per_pixel + 16 * 16))
    assert asked == [0, working_set] and result.ran.room_asked == working_set
    assert all(p.device.type == "cpu" for p in model.model.parameters())  # not offloaded to "meta"
    assert torch.allclose(result.images, upscaled(compact, image, tile_size=32), atol=1e-5)
    class Stop(Exception):
        pass

    def cancel():
        raise Stop()

    with pytest.raises(Stop):  # a failure inside the run: still not moved
        run_engine(model, image, tile_size=32, check_cancel=cancel, place_model=place_model, offload_device="meta")
    assert all(p.device.type == "cpu" for p in model.model.parameters())


@pytest.mark.parametrize("choices", [dict(tile_size=0), dict(tile_size=-5), dict(overlap=-1), dict(resample="sharp")])
def test_bad_choices_get_clear_errors(compact, choices):
    with pytest.raises(InputImageError):
        upscaled(compact, torch.rand(1, 8, 8, 3), **choices)


def test_progress_reaches_total_when_an_opaque_alpha_skips_its_pass(compact):
    image = torch.rand(1, 40, 40, 4)
    image[..., 3] = 1.0
    seen = []
    upscaled(compact, image, tile_size=24, overlap=8, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == 8  # 4 RGB tiles + the 4 alpha tiles it did not need


@pytest.mark.parametrize("build", ["rrdbnet", "srvgg"])
def test_progress_moves_within_one_tile(build):
    """On CPU one tile is often the whole image and takes minutes: progress must advance with
    the network's windows, not sit at 0/1 (seen in the real frontend as a frozen '[0%]')."""

    from .model_fixtures import rrdbnet_state, srvgg_state

    state = rrdbnet_state(num_feat=8, num_block=2, num_grow_ch=8) if build == "rrdbnet" else srvgg_state(num_feat=8)
    model = build_descriptor(sniff(state))
    image = torch.rand(1, 300, 280, 3)
    reports = []
    result = run_engine(model, image, tile_size=320, backend="torch", progress=lambda done, total: reports.append((done, total)),
                        progress_interval=0.0)  # every window, for the count below
    assert result.ran.tiles == 1
    within = [done for done, total in reports if 0 < done < 1]
    from realesrgan_tiled.runtimes import backend as backends

    with backends.using("torch"):  # the windowed torch plan, which the run was pinned to
        steps = model.window_steps(torch.device("cpu"), 300, 280)
    assert steps > 1 and steps - 1 <= len(within) <= steps  # every window (the last ones cap at 99 %)
    assert within == sorted(set(within)) and within[-1] <= 0.99  # strictly rising
    assert reports[0] == (0, 1) and reports[-1] == (1, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_image_batches_come_back_in_the_hosts_dtype(compact, dtype):
    """ComfyUI's --fp16-intermediates hands IMAGE tensors in fp16 and wants them back so."""
    image = torch.rand(1, 20, 24, 3)
    out = upscaled(compact, image.to(dtype), output_dtype=dtype)
    assert out.dtype == dtype
    assert (out.float() - upscaled(compact, image.to(dtype).float())).abs().max() < 1e-2


@pytest.mark.parametrize("numel,chunk", [(1, 4), (12, 4), (13, 4), (3, 64)])
def test_outputs_come_home_whole_through_a_small_staging_buffer(numel, chunk):
    """The chunked copy CUDA tile outputs take home (through a page-locked buffer there; any
    buffer here): every element arrives, in place, whatever the remainder."""
    from realesrgan_tiled.engine.device import copy_through

    src = torch.rand(numel, 3)
    staging, waits = torch.empty(chunk), []
    home = copy_through(src, staging, lambda: waits.append(1))
    assert torch.equal(home, src) and home.data_ptr() != src.data_ptr()
    assert len(waits) == -(-src.numel() // staging.numel())


def test_one_tile_image_returns_the_networks_output_without_a_second_buffer(compact):
    """One image, one tile: the tile's output (channels-last from our plans) is the result. The
    same frame in a batch of two takes the accumulating path: equal values; and the one-tile run's
    peak allocation stays under two output-sized buffers."""
    model = descriptor_of(compact.model)
    model.plan = SRVGGPlan(window=(32, 32), whole_map_max_pixels=0)  # torch windows: a small working set
    frame = photo("astronaut", (96, 128))
    alone = upscaled(model, frame, backend="torch")
    pair = upscaled(model, torch.cat([frame, frame]), backend="torch")
    assert alone.is_contiguous() and torch.equal(alone[0], pair[0])
    output_bytes = alone.numel() * alone.element_size()
    peak = peak_bytes(lambda: upscaled(model, frame, backend="torch"), torch.device("cpu"))
    assert peak < 1.8 * output_bytes, f"peak {peak / output_bytes:.2f} x the output"  # two output buffers: >= 2x
