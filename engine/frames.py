"""Several whole frames per forward: where every image of a batch is one tile of one size (an
IMAGE batch, a video's frames), ``k`` of them run through the network as one ``[k, C, H, W]``
batch. The result of each frame is the same as its own run's (batched convolutions may pick
other kernels: float rounding). Out of memory halves ``k`` before anything else; a single
frame that still does not fit goes to the tile loop, which halves the tile.

The NaN guard costs one sync per batch: a per-frame finite flag is read when the batch's
output is consumed, and only the flagged frames are re-run in fp32."""
from __future__ import annotations

import logging
import math

import torch

from . import settings
from .device import home_hwc, is_out_of_memory, release_cached
from .lanes import lanes_for
from .tile_loop import Run, forward, report_progress, rerun_in_fp32, upscale_image

log = logging.getLogger(__name__)

MAX_FRAMES_PER_FORWARD = 16  # beyond this a GPU is long saturated by 1080p-sized frames
PIPELINE_BATCHES = 4  # an automatic batch size leaves a call at least this many batches (one frame each at least)


def frames_per_forward(chosen: int | None, device: torch.device, fixed: float, per_frame: float, free: int,
                       frames: int | None = None) -> int:
    """The user's ``batch_size``, else on the CPU 1 (our CPU plans walk cache-sized windows:
    two frames per call measured no faster), else as many as the tile budget holds, with a
    call's ``frames`` split into at least PIPELINE_BATCHES batches, so that the pipeline has
    uploads and downloads to overlap with the device's work."""
    if chosen is not None:
        return max(1, int(chosen))
    if device.type == "cpu":
        return 1
    room = settings.tile_budget(device, free) - fixed
    k = int(max(1, min(MAX_FRAMES_PER_FORWARD, room // max(per_frame, 1.0))))
    return k if frames is None else max(1, min(k, math.ceil(frames / PIPELINE_BATCHES)))


def upscale_whole_frames(run: Run, images: torch.Tensor, out: torch.Tensor, k: int, passes) -> None:
    """``images`` [B, H, W, C] (host) into ``out`` [B, H*s, W*s, C] (host, any output dtype),
    ``k`` frames per forward, as a pipeline: while the device runs batch i, batch i+1 is
    uploaded and batch i-1 comes home and is written into ``out`` (lanes.py)."""
    lanes = lanes_for(run.device)
    start, queued, home = 0, None, None  # queued: the next batch, uploaded; home: the last, on its way
    while start < images.shape[0]:
        n = min(max(k, 1), images.shape[0] - start)
        if k == 0:  # one frame does not fit whole: from here on the tile loop, which splits the tile
            _written(run, home, out)
            home = None
            dest = torch.zeros((*out.shape[1:-1], out.shape[-1]), dtype=torch.float32)
            upscale_image(run, settings.as_float(images[start]), passes, dest, run.tile_cap)
            out[start] = settings.to_output(dest, out.dtype)
            start += 1
            continue
        x = queued[1] if queued is not None and queued[0] == (start, n) else lanes.upload(images[start : start + n])
        queued = None
        y = _forward_frames(run, x.permute(0, 3, 1, 2))
        del x
        if y is None:  # out of memory
            if n > 1:
                k = n // 2
                log.warning("out of memory on %d frames at once; retrying %d at a time", n, k)
            else:
                k = 0
            continue
        frames_out, finite = y
        landing = lanes.download(_nhwc(settings.to_output(frames_out, out.dtype)), finite)
        del frames_out, y
        after = start + n
        if after < images.shape[0]:  # the next batch goes up while this one runs
            following = min(k, images.shape[0] - after)
            queued = ((after, following), lanes.upload(images[after : after + following]))
        _written(run, home, out)
        home = (start, n, landing, images)
        start = after
    _written(run, home, out)


def _written(run: Run, home, out: torch.Tensor) -> None:
    """Wait for a batch's result (``home``; None: none on its way) to land and write it into
    ``out``; its frames whose half-precision output was not finite are re-run alone in fp32."""
    if home is None:
        return
    start, n, landing, images = home
    frames_home, finite = landing()
    out[start : start + n] = frames_home
    for i in (~finite).nonzero().flatten().tolist():
        redone = rerun_in_fp32(run, images[start + i].permute(2, 0, 1))
        redone = torch.nan_to_num_(redone, nan=0.0).clamp_(0, 1)
        out[start + i] = home_hwc(settings.to_output(redone, out.dtype).permute(1, 2, 0))
    run.ran.tiles += n
    run.done_tiles += n
    report_progress(run)


def _nhwc(frames: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] as [N, H, W, C]: off the CPU made contiguous there, so the copy home is one
    block; on the CPU a view, written into the result as it is."""
    nhwc = frames.permute(0, 2, 3, 1)
    return nhwc if nhwc.device.type == "cpu" else nhwc.contiguous()


def _forward_frames(run: Run, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A batch of frames on the device: their clamped output and, per frame, whether its
    half-precision output was finite (on the device: read when the batch lands, no sync here);
    None when it ran out of memory (its memory released first)."""
    if run.host.check_cancel is not None:
        run.host.check_cancel()
    try:
        y = forward(run, frames, run.dtype)
        finite = torch.isfinite(y).flatten(1).all(1) if run.dtype != torch.float32 else torch.ones(
            y.shape[0], dtype=torch.bool, device=y.device)
        return torch.nan_to_num_(y, nan=0.0).clamp_(0, 1), finite
    except Exception as e:  # out of memory is a RuntimeError in torch, an AcceleratorError on some backends
        if not (is_out_of_memory(e) or (run.host.is_oom is not None and run.host.is_oom(e))):
            raise
    release_cached(run.device)
    run.ran.oom_retries += 1
    return None
