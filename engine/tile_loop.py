"""The tile loop: each image, and within it each channel group (``channels.py``), cut into equal
tiles laid out evenly (``tiles.py``), one tile at a time on the device, its weighted output
added straight into the result: on the host, or, where the run keeps the result on the device
(``Run.on_device``), there, with no copy home and no sync per tile. A tile that runs out of
memory is re-run alone as smaller tiles (and later tiles start at the size that fitted); a
half-precision tile whose output is not finite is re-run alone in fp32: at once on the host
path, and on the device path once the image's finite flags are read, after its last tile."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from ..archs.windows import checking_cancel
from ..errors import RealESRGANTiledError
from ..loading.descriptor import OurModel
from . import settings
from .channels import ChannelPass, gather, is_constant, scatter
from .device import call_model, home, is_out_of_memory, release_cached
from .interface import Host, RunReport
from .tiles import MIN_TILE, axis_spans, count_tiles, round_tile

log = logging.getLogger(__name__)

FP32_SWITCH_AFTER = 2  # half-precision tiles that overflowed before the rest of a run goes fp32
RUN_AHEAD_TILES = 3  # tiles queued on a CUDA device ahead of the one the host waits for: cancel and progress stay prompt


@dataclass
class Run:
    """Per-call state shared by the tile loop."""

    model: object
    host: Host
    device: torch.device
    dtype: torch.dtype
    scale: int
    multiple: int
    overlap: int
    ran: RunReport
    total_tiles: int = 0
    done_tiles: int = 0
    tile_cap: int = 0  # lowered after an OOM so later tiles do not fail the same way
    reported_at: float = 0.0  # when progress within a tile was last reported
    reported: float = -1.0  # the last value reported: progress never goes back (OOM sub-tiles restart their windows)
    on_device: bool = False  # tiles add into a result on the device (run.py decides where it fits)
    unchecked: list = field(default_factory=list)  # on the device path: (finite flag, tile, weight, redo) per tile
    in_flight: list = field(default_factory=list)  # CUDA events of the tiles queued and not yet waited for


def one_tile_result(run: Run, image_hwc: torch.Tensor, p: ChannelPass, tile: int) -> torch.Tensor:
    """One image, one tile, all channels in one pass: the tile's output is the result, with no
    second output-sized buffer to add it into (our plans write their output channels-last, so
    its HWC view is already contiguous)."""
    outputs = []
    _tiled(run, gather(image_hwc.movedim(-1, 0), p.source), tile, lambda y0, x0, out: outputs.append(out), report=True)
    return scatter(outputs[0], len(p.dest)).movedim(0, -1).contiguous().unsqueeze(0)


def upscale_image(run: Run, image_hwc: torch.Tensor, passes: list[ChannelPass], dest: torch.Tensor, tile: int) -> None:
    dest.zero_()
    image_chw = image_hwc.movedim(-1, 0)
    for p in passes:
        source = gather(image_chw, p.source)
        if p.dest == (3,) and is_constant(source):  # opaque (or uniform) alpha: no model pass
            dest[..., 3] = source[0, 0, 0].clamp(0, 1)
            run.done_tiles += count_tiles(*source.shape[1:], tile, run.overlap, run.multiple)
            report_progress(run)
            continue

        def emit(y0: int, x0: int, out: torch.Tensor, channels=p.dest) -> None:
            _accumulate(dest, channels, y0, x0, out)

        _tiled(run, source, tile, emit, report=True)
    rerun_unfinite_tiles(run)


def rerun_unfinite_tiles(run: Run) -> None:
    """The device path's NaN guard: one read of the image's finite flags; each tile whose
    half-precision output was not finite added zeros, and now adds its fp32 output instead."""
    if not run.unchecked:
        return
    flags = torch.stack([flag for flag, *_ in run.unchecked]).tolist()  # the image's one sync for the guard
    for finite, (_, tile_in, weight, redo) in zip(flags, run.unchecked):
        if not finite:
            redo(_weighted(torch.nan_to_num_(rerun_in_fp32(run, tile_in), nan=0.0).clamp_(0, 1), weight))
    run.unchecked.clear()


def _accumulate(dest: torch.Tensor, channels: tuple[int, ...], y0: int, x0: int, tile_out: torch.Tensor) -> None:
    h, w = tile_out.shape[-2:]
    region = dest[y0 : y0 + h, x0 : x0 + w]
    values = scatter(tile_out, len(channels)).movedim(0, -1)
    if channels == tuple(range(dest.shape[-1])):
        region += values
    else:
        for k, c in enumerate(channels):
            region[..., c] += values[..., k]


def _tiled(run: Run, source: torch.Tensor, tile: int, emit, report: bool) -> None:
    """Run ``source`` ([c, H, W], host) tile by tile and ``emit(y0, x0, weighted_output)`` in
    output coordinates; the emitted parts sum to the blended result. ``report``: count the
    tiles for progress (sub-tiles of an OOM split are not tiles of the plan)."""
    _, height, width = source.shape
    s = run.scale
    rows = axis_spans(height, tile, run.overlap, s, run.multiple)
    cols = axis_spans(width, tile, run.overlap, s, run.multiple)
    for row in rows:
        for col in cols:
            if run.host.check_cancel is not None:
                run.host.check_cancel()
            # e.g. the tile is the whole image: nothing to multiply (and no output-sized weight map)
            whole = bool((row.weight == 1).all() and (col.weight == 1).all())
            # made where the tile runs on the device path: two small non-blocking uploads, no sync
            weight = None if whole else _on(source, row.weight)[:, None] * _on(source, col.weight)[None, :]
            y0, x0 = row.start * s, col.start * s
            redo = (lambda fixed, y0=y0, x0=x0: emit(y0, x0, fixed)) if report else None
            emit(y0, x0, _run_tile(run, source[:, row.start : row.end, col.start : col.end], weight, redo))
            if report:
                run.done_tiles += 1
                _wait_for_run_ahead(run)
                report_progress(run)


def _on(like: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t.to(like.device, non_blocking=True)


def _wait_for_run_ahead(run: Run) -> None:
    """On the CUDA device path nothing else waits for the device: the host would queue every
    tile in a moment and see a cancel only after all of them ran. It waits for the tile
    RUN_AHEAD_TILES back, which keeps the device fed and the host at most that far ahead."""
    if not (run.on_device and run.device.type == "cuda"):
        return
    event = torch.cuda.Event()
    event.record()
    run.in_flight.append(event)
    if len(run.in_flight) > RUN_AHEAD_TILES:
        run.in_flight.pop(0).synchronize()


def report_progress(run: Run, within_tile: float = 0.0) -> None:
    """Tiles done, plus the fraction of the current one (on CPU one tile is often the whole
    image and takes minutes: the bar must move within it)."""
    if run.host.progress is not None:
        done = min(run.done_tiles, run.total_tiles)
        value = done + within_tile if within_tile and done < run.total_tiles else done
        if within_tile and value <= run.reported:
            return
        run.reported = value
        run.host.progress(value, run.total_tiles)


def _window_progress(run: Run, x: torch.Tensor):
    """An ``on_window`` callback for our networks' window walk: reports the fraction of this
    tile done, at most every ``host.progress_interval`` seconds. None for models without windows."""
    steps = run.model.window_steps(run.device, *x.shape[-2:]) if isinstance(run.model, OurModel) else 0
    if run.host.progress is None or steps < 2:
        return None
    seen = [0]

    def on_window() -> None:
        seen[0] += 1
        now = time.monotonic()
        if now - run.reported_at >= run.host.progress_interval:
            run.reported_at = now
            report_progress(run, min(seen[0] / steps, 0.99))

    return on_window


def _run_tile(run: Run, tile_in: torch.Tensor, weight: torch.Tensor | None = None, redo=None) -> torch.Tensor:
    """One tile on the device; returns its output, clamped and times ``weight`` (its blend
    weights; None = all ones), fp32 on the host (on the device on the device path). Too big for
    memory: the same region again as smaller tiles. Half-precision output not finite: fp32
    again, at once, or on the device path (where ``redo(output)`` adds a tile's output in
    place of the first) after the image's last tile."""
    if max(tile_in.shape[-2:]) >= run.tile_cap + run.multiple:  # last tiles may run multiple - 1 over
        return _weighted(_split(run, tile_in, run.tile_cap), weight)
    later = run.on_device and redo is not None and run.dtype != torch.float32
    try:
        out = forward(run, tile_in, run.dtype) if later else forward_checked(run, tile_in)
    except Exception as e:  # out of memory is a RuntimeError in torch, an AcceleratorError on some backends
        if not (is_out_of_memory(e) or (run.host.is_oom is not None and run.host.is_oom(e))):
            raise
        out = None  # retried below: outside this block, whose traceback keeps the failed forward's memory alive
    if out is None:
        return _weighted(_retry_smaller(run, tile_in), weight)
    run.ran.tiles += 1
    finite = torch.isfinite(out).all() if later else None  # a flag on the device, read after the image's last tile
    # on the device: clamp and weight there, then (on the host path) one copy home
    out = torch.nan_to_num_(out, nan=0.0).clamp_(0, 1)
    if finite is not None:
        out.mul_(finite)  # a tile to re-run adds zeros for now
        run.unchecked.append((finite, tile_in, weight, redo))
    if weight is not None:
        out = out * weight.to(out.device, non_blocking=True)
    return out if run.on_device else home(out)


def forward_checked(run: Run, tile_in: torch.Tensor) -> torch.Tensor:
    """The tile's fp32 output on the device; a half-precision output that is not finite is
    re-run in fp32 (``rerun_in_fp32``)."""
    out = forward(run, tile_in, run.dtype)
    if run.dtype == torch.float32 or bool(torch.isfinite(out).all()):  # the one sync the NaN guard needs
        return out
    del out
    return rerun_in_fp32(run, tile_in)


def rerun_in_fp32(run: Run, tile_in: torch.Tensor) -> torch.Tensor:
    """A tile (or frame) whose half-precision output was not finite, again in fp32; after
    FP32_SWITCH_AFTER such re-runs the rest of the run is fp32."""
    run.ran.fp32_reruns += 1
    log.info("non-finite %s output in a tile; re-running it in fp32", settings.dtype_name(run.dtype))
    if run.ran.fp32_reruns >= FP32_SWITCH_AFTER and run.dtype != torch.float32:
        log.warning("%d tiles overflowed in %s; finishing this run in fp32", run.ran.fp32_reruns,
                    settings.dtype_name(run.dtype))
        run.ran.precision = f"{settings.dtype_name(run.dtype)}, then fp32"
        run.dtype = torch.float32
    if run.host.check_cancel is not None:
        run.host.check_cancel()
    return forward(run, tile_in, torch.float32)


def _weighted(out: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return out if weight is None else out * weight.to(out.device)


def _retry_smaller(run: Run, tile_in: torch.Tensor) -> torch.Tensor:
    longest = max(tile_in.shape[-2:])
    smaller = round_tile(longest // 2, run.multiple)
    if smaller >= longest or smaller <= MIN_TILE // 2:
        raise RealESRGANTiledError(
            f"out of memory on {run.device} even with {longest} px tiles; "
            "free memory, use a smaller tile_size, or run on the CPU"
        ) from None
    release_cached(run.device)
    run.ran.oom_retries += 1
    run.tile_cap = min(run.tile_cap, smaller)  # later tiles go straight to the size that fits
    log.warning("out of memory on a %dx%d tile; retrying just that tile as %d px tiles", *tile_in.shape[-2:], smaller)
    return _split(run, tile_in, smaller)


def _split(run: Run, tile_in: torch.Tensor, tile: int) -> torch.Tensor:
    """Upscale one region as smaller blended tiles; returns the region's result where the
    region is (the host, or the device on the device path)."""
    _, h, w = tile_in.shape
    out = torch.zeros((run.model.output_channels, h * run.scale, w * run.scale), device=tile_in.device)

    def emit(y0: int, x0: int, part: torch.Tensor) -> None:
        out[:, y0 : y0 + part.shape[1], x0 : x0 + part.shape[2]] += part

    _tiled(run, tile_in, tile, emit, report=False)
    return out


def forward(run: Run, tile_in: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The raw (unclamped) model output for one tile [C, H, W] (or a batch of whole frames
    [N, C, H, W]), fp32 on the device."""
    batched = tile_in.ndim == 4
    # contiguous, and non_blocking only to CUDA: a non-blocking copy from a pageable strided
    # slice returns wrong values on MPS (PyTorch #139550, #189690)
    x = settings.as_float(tile_in.contiguous().to(run.device, non_blocking=run.device.type == "cuda")).float()
    x = x if batched else x.unsqueeze(0)
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0, 1)  # bad pixels never reach the net
    with checking_cancel(run.host.check_cancel, _window_progress(run, x)):  # our networks check between their windows too
        if dtype == torch.float32:
            y = call_model(run.model, x)
        else:
            with torch.autocast(device_type=run.device.type, dtype=dtype):
                y = call_model(run.model, x)
    return y.float() if batched else y[0].float()


