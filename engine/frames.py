"""Several whole frames per forward: where every image of a batch is one tile of one size (an
IMAGE batch, a video's frames), ``k`` of them run through the network as one ``[k, C, H, W]``
batch. The result of each frame is the same as its own run's (batched convolutions may pick
other kernels: float rounding). Out of memory halves ``k`` before anything else; a single
frame that still does not fit goes to the tile loop, which halves the tile.

The NaN guard costs one sync per batch: a per-frame finite flag is read when the batch's
output is consumed, and only the flagged frames are re-run in fp32."""
from __future__ import annotations

import logging

import torch

from . import settings
from .device import home_frames, is_out_of_memory, release_cached
from .tile_loop import Run, forward, report_progress, rerun_in_fp32, upscale_image

log = logging.getLogger(__name__)

MAX_FRAMES_PER_FORWARD = 16  # beyond this a GPU is long saturated by 1080p-sized frames


def frames_per_forward(chosen: int | None, device: torch.device, fixed: float, per_frame: float, free: int) -> int:
    """The user's ``batch_size``, else on the CPU 1 (our CPU plans walk cache-sized windows:
    two frames per call measured no faster), else as many as the tile budget holds."""
    if chosen is not None:
        return max(1, int(chosen))
    if device.type == "cpu":
        return 1
    room = settings.tile_budget(device, free) - fixed
    return int(max(1, min(MAX_FRAMES_PER_FORWARD, room // max(per_frame, 1.0))))


def upscale_whole_frames(run: Run, images: torch.Tensor, out: torch.Tensor, k: int, passes) -> None:
    """``images`` [B, H, W, C] (host) into ``out`` [B, H*s, W*s, C] (host, any output dtype),
    ``k`` frames per forward."""
    start = 0
    while start < images.shape[0]:
        n = min(max(k, 1), images.shape[0] - start)
        frames = images[start : start + n].permute(0, 3, 1, 2)
        y = _forward_frames(run, frames) if k > 0 else None
        if y is None:  # out of memory
            if n > 1:
                k = n // 2
                log.warning("out of memory on %d frames at once; retrying %d at a time", n, k)
                continue
            k = 0  # one frame does not fit whole: from here on the tile loop, which splits the tile
            dest = torch.zeros((*out.shape[1:-1], out.shape[-1]), dtype=torch.float32)
            upscale_image(run, images[start], passes, dest, run.tile_cap)
            out[start] = settings.to_output(dest, out.dtype)
        else:
            out[start : start + n] = home_frames(settings.to_output(y, out.dtype))
            del y
            run.ran.tiles += n
            run.done_tiles += n
            report_progress(run)
        start += n


def _forward_frames(run: Run, frames: torch.Tensor) -> torch.Tensor | None:
    """The clamped output of a batch of frames on the device, flagged frames re-run in fp32;
    None when it ran out of memory (its memory released first)."""
    if run.host.check_cancel is not None:
        run.host.check_cancel()
    try:
        y = forward(run, frames, run.dtype)
        if run.dtype != torch.float32:
            finite = torch.isfinite(y).flatten(1).all(1)
            for i in (~finite).nonzero().flatten().tolist():  # the batch's one sync
                y[i] = rerun_in_fp32(run, frames[i])
        return torch.nan_to_num_(y, nan=0.0).clamp_(0, 1)
    except Exception as e:  # out of memory is a RuntimeError in torch, an AcceleratorError on some backends
        if not (is_out_of_memory(e) or (run.host.is_oom is not None and run.host.is_oom(e))):
            raise
    release_cached(run.device)
    run.ran.oom_retries += 1
    return None
