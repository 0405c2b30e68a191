"""The tile loop: one tile at a time on the device, the result accumulated on the host.

- each image, and within it each channel group (``channels.py``), is cut into equal tiles laid
  out evenly (``tiles.py``); only one tile at a time lives on the device;
- tile outputs, weighted so that they sum to the blended result, are added straight into the
  host-side output;
- a tile that runs out of memory is re-run alone as smaller tiles (and later tiles start at the
  size that fitted); a half-precision tile whose output is not finite is re-run alone in fp32.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch

from ..archs.windows import checking_cancel
from ..errors import RealESRGANTiledError
from ..loading.descriptor import OurModel
from ..runtimes import backend as backends
from . import settings
from .channels import ChannelPass, channel_passes, gather, is_constant, scatter
from .device import call_model, home, is_out_of_memory, release_cached
from .interface import Choices, Host, RunReport, Upscaled
from .memory import model_cost, model_overlap
from .resize import resize_images
from .tiles import MIN_TILE, axis_spans, count_tiles, round_tile

log = logging.getLogger(__name__)

HOME_BYTES_PER_OUTPUT_PIXEL = 4 * 4  # a tile's fp32 output (up to 4 channels) on its way to the host
FP32_SWITCH_AFTER = 2  # half-precision tiles that overflowed before the rest of a run goes fp32


@dataclass
class _Run:
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


def upscale(images: torch.Tensor, model, choices: Choices | None = None, host: Host | None = None) -> Upscaled:
    """Upscale a ``[B, H, W, C]`` float batch (0..1, ComfyUI's IMAGE layout) with ``model`` (a
    spandrel ``ImageModelDescriptor``, ours or any other); see the module docstring. With
    ``choices.passes`` the model runs again on its own output while the target needs it."""
    choices, host = choices or Choices(), host or Host()
    settings.check_images(images)
    _, height, width, _ = images.shape
    target = settings.target_size(height, width, int(model.scale), choices.output_size, choices.output_scale)
    count = settings.model_passes(choices.passes, (height, width), target, int(model.scale))
    if count == 1:
        return _upscale_once(images, model, choices, host)
    between = replace(choices, output_size=None, output_scale=None)  # native scale, kept on the CPU in fp32
    between_host = replace(host, output_device="cpu", output_dtype=torch.float32)
    final = replace(choices, output_size=target, output_scale=None)  # the target of the first input, not of the last
    ran = RunReport()
    for n in range(count):
        last = n == count - 1
        result = _upscale_once(images, model, final if last else between, host if last else between_host)
        ran = _add_runs(ran, result.ran)
        images = result.images
    ran.passes = count
    return Upscaled(images, ran)


def _add_runs(total: RunReport, one: RunReport) -> RunReport:
    return replace(one, tiles=total.tiles + one.tiles, fp32_reruns=total.fp32_reruns + one.fp32_reruns,
                   oom_retries=total.oom_retries + one.oom_retries)


def _upscale_once(images: torch.Tensor, model, choices: Choices, host: Host) -> Upscaled:
    """One model pass; ``upscale`` checked the images (a later pass gets our own output)."""
    settings.check_tile_choices(choices.tile_size, choices.overlap)
    resample = settings.resample_method(choices.resample)
    device = settings.resolve_device(host.device)
    dtype = settings.resolve_precision(choices.precision, model, device)
    batch, height, width, channels = images.shape
    scale = int(model.scale)
    target = settings.target_size(height, width, scale, choices.output_size, choices.output_scale)
    out_device = torch.device(host.output_device)
    settings.check_output_fits(batch, target, channels, host.output_dtype, host.free_memory(out_device))
    passes = channel_passes(channels, model.input_channels)
    multiple = max(1, int(model.size_requirements.multiple_of))
    backend = backends.resolve(choices.backend, model, device, dtype, height * width, lambda: _ncnn_fits(model, device, host))
    ran = RunReport(precision=settings.dtype_name(dtype), device=str(device), backend=backend)
    try:
        _place(model, device, host)
        with torch.inference_mode(), backends.using(backend):
            tile, ran.room_asked = _tile_size(model, choices.tile_size, host, device, dtype, (height, width), multiple)
            overlap = min(model_overlap(model) if choices.overlap is None else choices.overlap, tile // 2)
            ran.tile_size, ran.overlap = tile, overlap
            run = _Run(model, host, device, dtype, scale, multiple, overlap, ran, tile_cap=tile)
            run.total_tiles = batch * len(passes) * count_tiles(height, width, tile, overlap, multiple)
            _report_progress(run)  # hosts show the bar before the first (possibly long) tile
            model_size = (height * scale, width * scale)
            # tiles accumulate straight into the result unless a resize or a dtype change follows
            direct = target == model_size and host.output_dtype == torch.float32 and out_device.type == "cpu"
            if direct and run.total_tiles == 1 and passes[0].source == passes[0].dest:
                out = _one_tile_result(run, images[0], passes[0], tile)
            else:
                out = torch.empty((batch, *target, channels), dtype=host.output_dtype, device=out_device)
                for b in range(batch):
                    dest = out[b] if direct else torch.empty((*model_size, channels), dtype=torch.float32)
                    _upscale_image(run, images[b], passes, dest, tile)
                    if not direct:
                        out[b] = resize_images(dest.unsqueeze(0), target, resample)[0].to(host.output_dtype)
    except BaseException:
        if host.place_model is None:
            _offload_quietly(model, host.offload_device)  # even on error or cancel, without hiding the error
        raise
    if host.place_model is None:
        model.to(host.offload_device)  # hand the device back
    return Upscaled(out, ran)


def _place(model, device: torch.device, host: Host) -> None:
    """The model onto the device: by the host's model manager where it has one, else by us,
    after asking the host for room for the weights."""
    if host.place_model is not None:
        host.place_model(device, 0)
    elif host.make_room is not None:
        host.make_room(device, _weight_bytes(model))
    # after the manager's load a no-op, unless another node moved the model behind its back
    # (ComfyUI 0.3's core upscale node ends with .to("cpu")), which the manager cannot see
    model.to(device)
    model.eval()


def _ncnn_fits(model, device: torch.device, host: Host) -> bool:
    """ncnn's fixed memory (its copy of the weights, a window per worker) takes at most half of
    the tile budget: where memory is that tight, the torch plans' smaller windows win."""
    with backends.using("ncnn"):
        fixed = model.cost(device, 4).fixed
    return fixed <= settings.tile_budget(device, host.free_memory(device)) / 2


def _offload_quietly(model, device) -> None:
    """After a failure: move the model off the device if the device still lets us (after a
    sticky CUDA error it does not, and that second error must not replace the first)."""
    try:
        model.to(device)
    except Exception as e:
        log.warning("could not move the model off the device after an error: %s", e)


def _weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.model.state_dict().values())


def _tile_size(model, chosen: int | None, host: Host, device, dtype, image_hw, multiple: int) -> tuple[int, int]:
    """(tile, bytes asked of the host): the user's tile, or the largest whose working set fits
    the free memory. Either way the host is first asked to make room for it (an automatic one:
    up to ROOM_TILE_PIXELS)."""
    ask = host.place_model or host.make_room
    asked = 0
    if chosen is None or ask is not None:
        cost = model_cost(model, device, dtype, call_model)
        per_pixel = cost.per_pixel + HOME_BYTES_PER_OUTPUT_PIXEL * int(model.scale) ** 2
        pixels = chosen**2 if chosen is not None else min(image_hw[0] * image_hw[1], settings.ROOM_TILE_PIXELS)
        if ask is not None:
            asked = int(cost.fixed + per_pixel * pixels)
            ask(device, asked)
        if chosen is None:
            budget = settings.tile_budget(device, host.free_memory(device))
            chosen = settings.auto_tile_size(image_hw, cost.fixed, per_pixel, budget,
                                             settings.device_tile_cap(device, int(model.scale)))
    return round_tile(chosen, multiple), asked


def _one_tile_result(run: _Run, image_hwc: torch.Tensor, p: ChannelPass, tile: int) -> torch.Tensor:
    """One image, one tile, all channels in one pass: the tile's output is the result, with no
    second output-sized buffer to add it into (our plans write their output channels-last, so
    its HWC view is already contiguous)."""
    outputs = []
    _tiled(run, gather(image_hwc.movedim(-1, 0), p.source), tile, lambda y0, x0, out: outputs.append(out), report=True)
    return scatter(outputs[0], len(p.dest)).movedim(0, -1).contiguous().unsqueeze(0)


def _upscale_image(run: _Run, image_hwc: torch.Tensor, passes: list[ChannelPass], dest: torch.Tensor, tile: int) -> None:
    dest.zero_()
    image_chw = image_hwc.movedim(-1, 0)
    for p in passes:
        source = gather(image_chw, p.source)
        if p.dest == (3,) and is_constant(source):  # opaque (or uniform) alpha: no model pass
            dest[..., 3] = source[0, 0, 0].clamp(0, 1)
            run.done_tiles += count_tiles(*source.shape[1:], tile, run.overlap, run.multiple)
            _report_progress(run)
            continue

        def emit(y0: int, x0: int, out: torch.Tensor, channels=p.dest) -> None:
            _accumulate(dest, channels, y0, x0, out)

        _tiled(run, source, tile, emit, report=True)


def _accumulate(dest: torch.Tensor, channels: tuple[int, ...], y0: int, x0: int, tile_out: torch.Tensor) -> None:
    h, w = tile_out.shape[-2:]
    region = dest[y0 : y0 + h, x0 : x0 + w]
    values = scatter(tile_out, len(channels)).movedim(0, -1)
    if channels == tuple(range(dest.shape[-1])):
        region += values
    else:
        for k, c in enumerate(channels):
            region[..., c] += values[..., k]


def _tiled(run: _Run, source: torch.Tensor, tile: int, emit, report: bool) -> None:
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
            weight = None if whole else row.weight[:, None] * col.weight[None, :]
            emit(row.start * s, col.start * s, _run_tile(run, source[:, row.start : row.end, col.start : col.end], weight))
            if report:
                run.done_tiles += 1
                _report_progress(run)


def _report_progress(run: _Run, within_tile: float = 0.0) -> None:
    """Tiles done, plus the fraction of the current one (on CPU one tile is often the whole
    image and takes minutes: the bar must move within it)."""
    if run.host.progress is not None:
        done = min(run.done_tiles, run.total_tiles)
        value = done + within_tile if within_tile and done < run.total_tiles else done
        if within_tile and value <= run.reported:
            return
        run.reported = value
        run.host.progress(value, run.total_tiles)


def _window_progress(run: _Run, x: torch.Tensor):
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
            _report_progress(run, min(seen[0] / steps, 0.99))

    return on_window


def _run_tile(run: _Run, tile_in: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """One tile on the device; returns its output, clamped and times ``weight`` (its blend
    weights; None = all ones), fp32 on the host. Too big for memory: the same region again as
    smaller tiles. Half-precision output not finite: fp32 again."""
    if max(tile_in.shape[-2:]) >= run.tile_cap + run.multiple:  # last tiles may run multiple - 1 over
        return _weighted(_split(run, tile_in, run.tile_cap), weight)
    try:
        out = _forward_checked(run, tile_in)
    except Exception as e:  # out of memory is a RuntimeError in torch, an AcceleratorError on some backends
        if not (is_out_of_memory(e) or (run.host.is_oom is not None and run.host.is_oom(e))):
            raise
        out = None  # retried below: outside this block, whose traceback keeps the failed forward's memory alive
    if out is None:
        return _weighted(_retry_smaller(run, tile_in), weight)
    run.ran.tiles += 1
    # on the device: clamp and weight there, then one copy home
    out = torch.nan_to_num_(out, nan=0.0).clamp_(0, 1)
    if weight is not None:
        out = out * weight.to(out.device, non_blocking=True)
    return home(out)


def _forward_checked(run: _Run, tile_in: torch.Tensor) -> torch.Tensor:
    """The tile's fp32 output on the device; a half-precision output that is not finite is
    re-run in fp32, and after FP32_SWITCH_AFTER such re-runs the rest of the run is fp32."""
    out = _forward(run, tile_in, run.dtype)
    if run.dtype == torch.float32 or bool(torch.isfinite(out).all()):  # the one sync the NaN guard needs
        return out
    del out
    run.ran.fp32_reruns += 1
    log.info("non-finite %s output in a tile; re-running it in fp32", settings.dtype_name(run.dtype))
    if run.ran.fp32_reruns >= FP32_SWITCH_AFTER:
        log.warning("%d tiles overflowed in %s; finishing this run in fp32", run.ran.fp32_reruns,
                    settings.dtype_name(run.dtype))
        run.ran.precision = f"{settings.dtype_name(run.dtype)}, then fp32"
        run.dtype = torch.float32
    if run.host.check_cancel is not None:
        run.host.check_cancel()
    return _forward(run, tile_in, torch.float32)


def _weighted(out: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return out if weight is None else out * weight


def _retry_smaller(run: _Run, tile_in: torch.Tensor) -> torch.Tensor:
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


def _split(run: _Run, tile_in: torch.Tensor, tile: int) -> torch.Tensor:
    """Upscale one region as smaller blended tiles; returns the region's result on the host."""
    _, h, w = tile_in.shape
    out = torch.zeros((run.model.output_channels, h * run.scale, w * run.scale))

    def emit(y0: int, x0: int, part: torch.Tensor) -> None:
        out[:, y0 : y0 + part.shape[1], x0 : x0 + part.shape[2]] += part

    _tiled(run, tile_in, tile, emit, report=False)
    return out


def _forward(run: _Run, tile_in: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The raw (unclamped) model output for one tile, fp32 on the device."""
    # contiguous, and non_blocking only to CUDA: a non-blocking copy from a pageable strided
    # slice returns wrong values on MPS (PyTorch #139550, #189690)
    x = tile_in.contiguous().to(run.device, non_blocking=run.device.type == "cuda").unsqueeze(0).float()
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0, 1)  # bad pixels never reach the net
    with checking_cancel(run.host.check_cancel, _window_progress(run, x)):  # our networks check between their windows too
        if dtype == torch.float32:
            y = call_model(run.model, x)
        else:
            with torch.autocast(device_type=run.device.type, dtype=dtype):
                y = call_model(run.model, x)
    return y[0].float()


