"""Several whole frames per forward (engine/frames.py), output in the consumer's dtype, and the
frame stream (engine/stream.py), each against the per-frame fp32 run as oracle: batches equal
per-frame results, uint8 is round(fp32 x 255), the NaN flag re-runs only its frame, out of
memory halves the batch before the tile, and the stream keeps order and holds few frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from realesrgan_tiled.engine import Choices, Host, upscale, upscale_stream
from realesrgan_tiled.engine.frames import MAX_FRAMES_PER_FORWARD, frames_per_forward
from realesrgan_tiled.errors import InputImageError

from .conftest import photo, run_engine, upscaled
from .engine_fixtures import descriptor_of, spy_descriptor


def frames(n: int = 6, size=(40, 56)) -> torch.Tensor:
    """``n`` different real-photo crops of one size, as an IMAGE batch."""
    big = photo("astronaut")[0]
    return torch.stack([big[20 * i : 20 * i + size[0], 30 * i : 30 * i + size[1]] for i in range(n)])


def per_frame(model, images: torch.Tensor, **kwargs) -> torch.Tensor:
    return torch.cat([upscaled(model, images[i : i + 1], **kwargs) for i in range(images.shape[0])])


@pytest.mark.parametrize("batch_size", [2, 4, 6])
def test_a_batch_equals_the_frames_run_one_by_one(compact, batch_size):
    images = frames()
    model, spy = spy_descriptor(descriptor_of(compact.model))
    result = run_engine(model, images, batch_size=batch_size)
    assert [shape[0] for shape, _ in spy.calls] == [min(batch_size, 6 - i) for i in range(0, 6, batch_size)]
    assert result.ran.tiles == 6
    assert (result.images - per_frame(compact, images)).abs().max() < 1e-5  # batched convs: float rounding at most


@pytest.mark.parametrize("batch_size", [None, 3])
def test_uint8_output_is_the_rounded_fp32_result(compact, batch_size):
    images = frames(5)
    fp32 = upscaled(compact, images)
    out = upscaled(compact, images, batch_size=batch_size, output_dtype=torch.uint8)
    assert out.dtype == torch.uint8 and out.shape == fp32.shape
    # float rounding of the batched convs can move a value across a .5 boundary: one level, rarely
    diff = (out.int() - (fp32 * 255).round().int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    if batch_size is None:  # the same forwards as the fp32 run: exact
        assert diff.max() == 0


def test_uint8_output_through_a_resize_and_tiles_is_rounded_not_truncated(compact):
    images = frames(2, (48, 48))
    fp32 = upscaled(compact, images, tile_size=32, overlap=16, output_size=(150, 170))
    out = upscaled(compact, images, tile_size=32, overlap=16, output_size=(150, 170), output_dtype=torch.uint8)
    assert torch.equal(out, (fp32.clamp(0, 1) * 255).round().to(torch.uint8))


def test_fp16_output_is_the_fp32_result_cast(compact):
    images = frames(3)
    out = upscaled(compact, images, batch_size=3, output_dtype=torch.float16)
    assert out.dtype == torch.float16
    assert (out.float() - per_frame(compact, images)).abs().max() < 1e-3


def test_an_unsupported_output_dtype_is_refused(compact):
    with pytest.raises(InputImageError, match="output dtype"):
        upscaled(compact, frames(1), output_dtype=torch.int16)


def test_the_nan_flag_reruns_only_the_flagged_frame(compact):
    images = frames(4)
    images[2, :4, :4] = 0.25  # marks the third frame
    model, spy = spy_descriptor(descriptor_of(compact.model))
    inner = spy.call

    def poisoned(module, x):
        y = inner(module, x)
        if torch.is_autocast_enabled(x.device.type):
            marked = (x[:, :, :4, :4] == 0.25).flatten(1).all(1)
            y = y.clone()
            y[marked, :, 5, 7] = float("nan")
        return y

    spy.call = poisoned
    result = run_engine(model, images, batch_size=4, precision="bf16")
    assert result.ran.fp32_reruns == 1
    fp32_calls = [shape for shape, half in spy.calls if not half]
    assert fp32_calls == [(1, 3, 40, 56)]  # one frame, alone, in fp32
    assert bool(torch.isfinite(result.images).all())
    assert (result.images - per_frame(compact, images)).abs().max() < 3e-2  # bf16 frames vs fp32


def test_out_of_memory_halves_the_batch_before_the_tile(compact):
    """A fake allocator that refuses more than 2 frames at once: 4 -> 2, and the tile stays whole."""
    images = frames(6)

    def fail(x):
        return torch.OutOfMemoryError("CUDA out of memory (fake)") if x.shape[0] > 2 else None

    model, spy = spy_descriptor(descriptor_of(compact.model), fail)
    result = run_engine(model, images, batch_size=4)
    assert [shape for shape, _ in spy.calls] == [(4, 3, 40, 56), (2, 3, 40, 56), (2, 3, 40, 56), (2, 3, 40, 56)]
    assert result.ran.oom_retries == 1 and result.ran.tiles == 6
    assert (result.images - per_frame(compact, images)).abs().max() < 1e-5


def test_a_frame_that_never_fits_whole_goes_to_smaller_tiles(compact):
    images = frames(3, (48, 48))

    def fail(x):
        return torch.OutOfMemoryError("out of memory (fake)") if x.shape[-1] * x.shape[-2] > 32 * 32 else None

    model, spy = spy_descriptor(descriptor_of(compact.model), fail)
    result = run_engine(model, images, batch_size=2)
    assert result.ran.oom_retries >= 2  # the pair, then the single frame's tile
    assert all(max(shape[-2:]) <= 32 for shape, _ in spy.calls[3:])
    assert (result.images - per_frame(compact, images)).abs().max() < 1e-5


def test_frames_per_forward_fits_the_budget():
    gpu = torch.device("cuda")
    # CUDA's tile budget is 60 % of free memory: 1000 B free -> 600 B, 100 fixed, 125 per frame -> 4
    assert frames_per_forward(None, gpu, fixed=100, per_frame=125, free=1000) == 4
    assert frames_per_forward(None, gpu, fixed=100, per_frame=10_000, free=1000) == 1
    assert frames_per_forward(None, gpu, fixed=0, per_frame=1, free=10**9) == MAX_FRAMES_PER_FORWARD
    assert frames_per_forward(None, torch.device("cpu"), fixed=0, per_frame=1, free=10**9) == 1
    assert frames_per_forward(3, torch.device("cpu"), fixed=0, per_frame=1, free=1) == 3


def test_an_automatic_batch_leaves_the_pipeline_batches_to_overlap():
    gpu = torch.device("cuda")
    assert frames_per_forward(None, gpu, fixed=0, per_frame=1, free=10**9, frames=64) == MAX_FRAMES_PER_FORWARD
    assert [frames_per_forward(None, gpu, fixed=0, per_frame=1, free=10**9, frames=n) for n in (16, 9, 2, 1)] == [4, 3, 1, 1]
    assert frames_per_forward(None, gpu, fixed=100, per_frame=125, free=1000, frames=64) == 4  # memory still rules
    assert frames_per_forward(8, gpu, fixed=0, per_frame=1, free=10**9, frames=8) == 8  # the user's choice stands


def test_the_stream_keeps_order_and_sizes_and_equals_the_batch_run(compact):
    images = frames(5)
    other = frames(2, (32, 48))
    stream = [*(images[i].numpy() for i in range(3)), other[0], (images[3].numpy() * 255).round().astype(np.uint8),
              other[1], images[4]]
    outs = list(upscale_stream(iter(stream), compact, Choices(batch_size=2), Host(device="cpu", output_dtype=torch.uint8)))
    assert [tuple(o.shape) for o in outs] == [(160, 224, 3)] * 3 + [(128, 192, 3), (160, 224, 3), (128, 192, 3), (160, 224, 3)]
    want = upscaled(compact, images[[0, 1, 2, 4]])
    for got, expected in zip([outs[0], outs[1], outs[2], outs[6]], want):
        assert (got.int() - (expected * 255).round().int()).abs().max() <= 1
    assert torch.equal(outs[3], (upscaled(compact, other[:1])[0] * 255).round().to(torch.uint8))


def test_the_stream_holds_a_bounded_number_of_frames(compact):
    """Frames are pulled from the source only as chunks are run: never more than one chunk
    ahead of what was yielded."""
    pulled = []

    def source():
        for i in range(12):
            pulled.append(i)
            yield frames(1)[0]

    seen = 0
    for _ in upscale_stream(source(), compact, Choices(batch_size=3), Host(device="cpu")):
        seen += 1
        assert len(pulled) - seen <= 3
    assert seen == 12


def test_the_stream_places_the_model_once_and_hands_it_back(compact):
    moves = []
    model = descriptor_of(compact.model)
    real_to = model.to
    model.to = lambda device: moves.append(str(device)) or real_to(device)
    asked = []
    host = Host(device="cpu", make_room=lambda device, n: asked.append(n))
    list(upscale_stream((frames(1)[0] for _ in range(4)), model, Choices(batch_size=1), host))
    assert moves.count("cpu") == 5  # placed before each of the 4 chunks (a no-op), handed back once at the end
    assert len(asked) == 2  # room for the weights, then for the working set: once each, not per chunk


def test_a_bad_frame_is_a_clear_error(compact):
    with pytest.raises(InputImageError, match="frame"):
        list(upscale_stream([np.zeros((4, 4), np.uint8)], compact))


@pytest.mark.parametrize("k", [1, 3])
def test_the_memory_estimate_covers_a_batch_and_its_buffers_in_flight(compact, k):
    """The working set the engine plans for k whole frames per forward (its fixed part plus k
    times a frame: the network's activations, the fp32 output on its way home and the output
    in the consumer's dtype) is at least the peak measured while the engine runs them, under
    the whole-map plan a GPU runs (measured here on the CPU, where torch's allocations can be
    counted one by one)."""
    from realesrgan_tiled.archs import SRVGGPlan
    from realesrgan_tiled.engine.memory import peak_bytes
    from realesrgan_tiled.engine.run import _tile_size

    model = descriptor_of(compact.model)  # a copy: the fixture's plan stays
    model.plan = SRVGGPlan.for_device(torch.device("cuda"))
    images = frames(k, size=(64, 64))
    cpu = torch.device("cpu")
    _, _, (fixed, one_frame) = _tile_size(model, None, Host(device="cpu", make_room=lambda d, n: None), cpu,
                                          torch.float32, (64, 64), 1, 3 * 1)
    host = Host(device="cpu", output_dtype=torch.uint8)
    peak = peak_bytes(lambda: upscale(images, model, Choices(batch_size=k, backend="torch", precision="fp32"), host), cpu)
    assert peak <= fixed + k * one_frame, f"measured {peak / k:.0f} B per frame, planned {one_frame:.0f} (+{fixed:.0f} fixed)"
    assert fixed + k * one_frame <= 4 * peak, "an estimate this loose would make batches needlessly small"


def test_the_next_batch_goes_up_and_runs_before_the_last_one_is_written(compact, monkeypatch):
    """The pipeline's order (engine/frames.py): batch i+1 is uploaded while batch i runs, and
    batch i-1 is written into the result only once batch i is queued, so on CUDA the host's
    copies overlap the device's work. Recorded on the CPU's plain lanes."""
    from realesrgan_tiled.engine import frames as frames_module
    from realesrgan_tiled.engine.lanes import Lanes

    order = []

    class Recorded(Lanes):
        def upload(self, host):
            order.append(f"up{len([o for o in order if o.startswith('up')])}")
            return super().upload(host)

        def download(self, *tensors):
            n = len([o for o in order if o.startswith("down")])
            order.append(f"down{n}")
            landing = super().download(*tensors)
            return lambda: order.append(f"written{n}") or landing()

    monkeypatch.setattr(frames_module, "lanes_for", Recorded)
    images = frames(6)
    model, spy = spy_descriptor(descriptor_of(compact.model))
    inner = spy.call
    spy.call = lambda module, x: order.append("run") or inner(module, x)
    result = run_engine(model, images, batch_size=2)
    assert order == ["up0", "run", "down0", "up1", "run", "down1", "up2", "written0",
                     "run", "down2", "written1", "written2"]
    assert (result.images - per_frame(compact, images)).abs().max() < 1e-5


def test_the_memory_estimate_covers_the_pipelines_batches_in_flight(compact):
    """With several batches, the last batch's output is still on its way home while the next
    runs, and the next input is already up: the plan for k frames per forward still bounds
    the measured peak."""
    from realesrgan_tiled.archs import SRVGGPlan
    from realesrgan_tiled.engine.memory import peak_bytes
    from realesrgan_tiled.engine.run import _tile_size

    k = 2
    model = descriptor_of(compact.model)
    model.plan = SRVGGPlan.for_device(torch.device("cuda"))
    images = frames(3 * k, size=(64, 64))
    cpu = torch.device("cpu")
    _, _, (fixed, one_frame) = _tile_size(model, None, Host(device="cpu", make_room=lambda d, n: None), cpu,
                                          torch.float32, (64, 64), 1, 3 * 1)
    host = Host(device="cpu", output_dtype=torch.uint8)
    out_bytes = 3 * k * 64 * 64 * 16 * 3  # the result itself, on the host: not the device's working set
    peak = peak_bytes(lambda: upscale(images, model, Choices(batch_size=k, backend="torch", precision="fp32"), host), cpu)
    assert peak - out_bytes <= fixed + k * one_frame, f"measured {peak - out_bytes:.0f} B, planned {fixed + k * one_frame:.0f}"


@pytest.mark.parametrize("batch_size", [1, 3])
def test_uint8_frames_go_in_as_they_are_and_equal_their_float_run(compact, batch_size):
    """A video's uint8 frames reach the engine as uint8 (the device divides by 255): the result
    is the float frames' result exactly, on the whole-frame path and on the tile loop."""
    images = frames(3)
    as_bytes = (images * 255).round().to(torch.uint8)
    as_float = as_bytes.float() / 255
    for kwargs in (dict(output_dtype=torch.uint8), dict(tile_size=24, overlap=8)):
        got = upscaled(compact, as_bytes, batch_size=batch_size, **kwargs)
        assert torch.equal(got, upscaled(compact, as_float, batch_size=batch_size, **kwargs))


def test_other_integer_images_are_refused(compact):
    with pytest.raises(InputImageError, match="int16"):
        upscaled(compact, torch.zeros((1, 8, 8, 3), dtype=torch.int16))
