"""The engine when things go wrong: out of memory, non-finite half-precision output, errors
from the model or while offloading, and cancel; each against an untiled or fp32 oracle."""
from __future__ import annotations

import pytest
import torch

from realesrgan_tiled.archs import RRDBNet, RRDBNetPlan, SRVGGNetCompact, SRVGGPlan
from realesrgan_tiled.errors import RealESRGANTiledError

from .conftest import photo, run_engine, upscaled
from .engine_fixtures import NAN_MARK, descriptor_of, direct, nan_where_marked, spy_descriptor
from .model_fixtures import OverflowsInHalf, as_descriptor


def test_oom_retries_only_the_failed_tile_and_keeps_done_work(compact):
    """A fake device allocator: the third tile "runs out of memory" above 32x32 px; the two
    before it are kept, it alone is re-run as smaller tiles, and later tiles start small."""
    state = {"n": 0}

    def fail(x):
        state["n"] += 1
        if state["n"] == 3 and x.shape[-1] * x.shape[-2] > 32 * 32:
            return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return None

    image = torch.rand(1, 100, 100, 3)
    expected = direct(compact, image)
    model, spy = spy_descriptor(descriptor_of(compact.model), fail)
    result = run_engine(model, image, tile_size=64, overlap=16)
    out = result.images
    assert result.ran.oom_retries == 1
    sizes = [shape[-2:] for shape, _ in spy.calls]
    assert sizes[:3] == [(64, 64), (64, 64), (64, 64)]  # the third is the one that failed
    assert all(max(s) <= 32 for s in sizes[3:]) and len(sizes) > 4
    assert (out - expected).abs().max() < 1e-5  # sub-tiles keep enough overlap for exactness


@pytest.mark.parametrize("size,tile,overlap", [((40, 40), 32, None), ((24, 32), None, None), ((64, 64), 64, 48)])
def test_oom_that_never_goes_away_is_a_clear_error(compact, size, tile, overlap):
    model, _ = spy_descriptor(descriptor_of(compact.model), lambda x: torch.OutOfMemoryError("out of memory"))
    with pytest.raises(RealESRGANTiledError, match="out of memory"):
        upscaled(model, torch.rand(1, *size, 3), tile_size=tile, overlap=overlap)


def test_non_oom_errors_propagate(compact):
    model, _ = spy_descriptor(descriptor_of(compact.model), lambda x: ValueError("broken model"))
    with pytest.raises(ValueError, match="broken model"):
        upscaled(model, torch.rand(1, 8, 8, 3))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_overflow_reruns_in_fp32(precision):
    model = as_descriptor(OverflowsInHalf())
    image = torch.rand(1, 20, 20, 3)
    result = run_engine(model, image, tile_size=16, overlap=8, precision=precision)
    out, ran = result.images, result.ran
    fp32 = upscaled(model, image, tile_size=16, overlap=8, precision="fp32")
    assert bool(torch.isfinite(out).all())
    if precision == "fp16":  # bf16 has fp32's range: no overflow, no re-run
        # two tiles overflow and re-run; then the run remembers and finishes in fp32
        assert ran.tiles == 4 and ran.fp32_reruns == 2 and ran.precision == "fp16, then fp32"
    else:
        assert ran.fp32_reruns == 0 and ran.precision == "bf16"
    assert (out - fp32).abs().max() < 1e-2


def test_the_oom_retry_runs_after_the_failed_tiles_memory_is_released(compact):
    """The failed forward's working memory lives in its frames, which the exception's traceback
    keeps alive: the smaller tiles must not run beside it (on a GPU they would OOM in turn)."""
    import weakref

    failed_buffers, alive_during_retry = [], []
    inner = compact._call_fn if hasattr(compact, "_call_fn") else None

    def call(module, x):
        working_set = torch.empty(1 << 20)  # the forward's buffers, alive in this frame
        if x.shape[-1] > 32:
            failed_buffers.append(weakref.ref(working_set))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        alive_during_retry.append(sum(ref() is not None for ref in failed_buffers))
        return inner(module, x)

    model = descriptor_of(compact.model)
    model._call_fn = call
    result = run_engine(model, torch.rand(1, 48, 48, 3), tile_size=48, overlap=8)
    assert result.ran.oom_retries == 1 and len(failed_buffers) == 1
    assert alive_during_retry and set(alive_during_retry) == {0}, "the failed tile's memory was still held"


def test_an_error_while_offloading_after_a_failure_does_not_hide_the_failure(compact):
    """After a sticky device error, moving the model off the device fails too: the user must
    see the first error."""
    model = descriptor_of(compact.model)
    calls = {"to": 0}
    real_to = model.to

    def to(*args, **kwargs):
        calls["to"] += 1
        if calls["to"] > 1:  # the first .to() puts it on the device; the offload after the error fails
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_to(*args, **kwargs)

    model.to = to
    model._call_fn = lambda module, x: (_ for _ in ()).throw(ValueError("the real failure"))
    with pytest.raises(ValueError, match="the real failure"):
        upscaled(model, torch.rand(1, 8, 8, 3))
    assert calls["to"] == 2


@pytest.mark.parametrize("message", [
    "CUDA out of memory. Tried to allocate 20.00 MiB",
    "MPS backend out of memory (MPS allocated: 1.2 GB)",
    "XPU out of memory. Tried to allocate 1.00 GiB",
    "Could not allocate tensor with 1073741824 bytes. There is not enough GPU video memory available!",  # DirectML
    "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000000 bytes",
])
def test_out_of_memory_messages_of_every_backend(message):
    from realesrgan_tiled.engine import is_out_of_memory

    assert is_out_of_memory(RuntimeError(message))
    assert not is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))


def test_nan_in_one_half_precision_tile_reruns_only_that_tile(compact):
    image = torch.rand(1, 48, 48, 3)
    image[0, :16, :16] = NAN_MARK  # marks the first tile's input

    model, spy = nan_where_marked(compact)
    result = run_engine(model, image, tile_size=32, overlap=16, precision="bf16")
    out = result.images
    fp32 = upscaled(model, image, tile_size=32, overlap=16, precision="fp32")
    assert result.ran.fp32_reruns == 1
    fp32_calls = [c for c in spy.calls if not c[1]]
    assert len(fp32_calls) == 1 + 4  # the one re-run, plus the 4 tiles of the fp32 reference run
    assert bool(torch.isfinite(out).all())
    assert (out - fp32).abs().max() < 3e-2  # bf16 tiles vs fp32


class _Stop(Exception):
    """What the tests' host cancel checks raise."""


class _CancelOnCall:
    """A host cancel check that raises ``_Stop`` on its nth call and counts every call."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise _Stop()


def test_cancel_stops_within_one_tile_and_offloads_the_model(compact):
    model, spy = spy_descriptor(descriptor_of(compact.model))
    moves = []
    original_to = model.to
    model.to = lambda *a, **k: (moves.append(a), original_to(*a, **k))[1]

    with pytest.raises(_Stop):
        # torch: these tiles are smaller than a window, so the engine's check is the only one per tile
        upscaled(model, torch.rand(1, 64, 64, 3), tile_size=32, overlap=8, check_cancel=_CancelOnCall(3), backend="torch")
    assert len(spy.calls) == 2  # two tiles ran, the third never started
    assert moves[-1] == ("cpu",)  # offloaded in `finally`


@pytest.mark.parametrize("arch", ["rrdbnet", "srvgg"])
def test_cancel_reaches_inside_a_one_tile_image(monkeypatch, arch):
    """On CPU one tile may be the whole image (minutes for x4plus); our networks run it in
    windows and call the host's cancel check before each, so a cancel stops mid-tile. Also
    on the worker-thread path (two window workers)."""
    from realesrgan_tiled.archs import windows

    torch.manual_seed(0)
    if arch == "rrdbnet":
        net, plan = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4), RRDBNetPlan(trunk_window=8, whole_map_max_pixels=0, threads=2)
    else:
        net, plan = SRVGGNetCompact(num_feat=8, num_conv=2), SRVGGPlan(window=(8, 8), whole_map_max_pixels=0)
    model = descriptor_of(net.eval())
    model.plan = plan
    loads = []
    real_load = windows.Window.load
    monkeypatch.setattr(windows.Window, "load", lambda *a: loads.append(1) or real_load(*a))

    check_cancel = _CancelOnCall(12)
    image = torch.rand(1, 48, 40, 3)
    full = run_engine(model, image)  # one tile; counts the windows of a full run
    full_run = len(loads)
    loads.clear()
    with pytest.raises(_Stop):
        upscaled(model, image, check_cancel=check_cancel)
    assert full.ran.tiles == 1 and full_run > 12
    assert len(loads) < 12 + 2, "windows kept running after the cancel"
    assert check_cancel.calls == 12


def test_the_hosts_oom_test_is_honoured(compact):
    """A host (ComfyUI's model_management.is_oom) may know out-of-memory errors we do not."""

    class DeviceLost(Exception):
        pass

    model, _ = spy_descriptor(descriptor_of(compact.model), lambda x: DeviceLost("allocation failed") if x.shape[-1] > 16 else None)
    result = run_engine(model, torch.rand(1, 24, 24, 3), tile_size=24, overlap=4, is_oom=lambda e: isinstance(e, DeviceLost))
    assert result.ran.oom_retries == 1
    model, _ = spy_descriptor(descriptor_of(compact.model), lambda x: DeviceLost("allocation failed"))
    with pytest.raises(DeviceLost):  # without the host's test it is an ordinary error
        upscaled(model, torch.rand(1, 24, 24, 3), tile_size=24)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cancel_reaches_between_the_blocks_of_a_whole_map_trunk(channels_last):
    """Where an RRDBNet's trunk runs whole (auto's ``torch-whole`` on CPU, every GPU plan),
    there are no windows to check between: the cancel is seen between its RRDB blocks. In a
    real ComfyUI an interrupt during x4plus's 256 px one-tile run took 8 s before this."""
    from realesrgan_tiled.archs.rrdbnet.inference import RRDBNetPlan

    torch.manual_seed(0)
    model = descriptor_of(RRDBNet(num_feat=8, num_block=6, num_grow_ch=4).eval())
    model.plan = RRDBNetPlan(trunk_window=None, channels_last=channels_last)
    blocks = []
    for rrdb in model.model.body:  # each block's first conv: both plans call it once per block
        rrdb.rdb1.conv1.register_forward_pre_hook(lambda module, args: blocks.append(1))
    check_cancel = _CancelOnCall(4)  # the engine's check before the tile, then one per block
    with pytest.raises(_Stop):
        upscaled(model, photo("astronaut", (32, 32)), check_cancel=check_cancel, backend="torch")
    assert check_cancel.calls == 4 and len(blocks) == 2, "blocks kept running after the cancel"
