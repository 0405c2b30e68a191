"""``upscale``: one call's plan. It resolves the device, precision, backend and tile size, asks
the host for room, then hands the images to the tile loop (``tile_loop.py``: one tile at a time
on the device, weighted outputs added into the host-side result), or, where every image is one
tile of one size, to several whole frames per forward (``frames.py``). The result comes back in
the host's output dtype; with ``choices.passes`` the model runs again on its own output.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ..runtimes import backend as backends
from . import settings
from .channels import channel_passes
from .device import call_model, home_hwc
from .frames import frames_per_forward, upscale_whole_frames
from .interface import Choices, Host, RunReport, Upscaled
from .memory import model_cost, model_overlap
from .resize import resize_images
from .tile_loop import Run, one_tile_result, report_progress, upscale_image
from .tiles import count_tiles, round_tile

log = logging.getLogger(__name__)

HOME_BYTES_PER_OUTPUT_PIXEL = 4 * 4  # a tile's fp32 output (up to 4 channels) on its way to the host


def upscale(images: torch.Tensor, model, choices: Choices | None = None, host: Host | None = None) -> Upscaled:
    """Upscale a ``[B, H, W, C]`` float batch (0..1, ComfyUI's IMAGE layout; or uint8) with ``model`` (a
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
    settings.check_output_dtype(host.output_dtype)
    settings.check_output_fits(batch, target, channels, host.output_dtype, host.free_memory(out_device))
    out_size = torch.tensor([], dtype=host.output_dtype).element_size()
    passes = channel_passes(channels, model.input_channels)
    multiple = max(1, int(model.size_requirements.multiple_of))
    # precision "auto" on the CPU: bf16 is a candidate of the backend measurement (runtimes/backend.py)
    backend, dtype = backends.choose(choices.backend, model, device, dtype, height * width,
                                     lambda name: _backend_fits(model, device, host, name),
                                     bf16_allowed=choices.precision in (None, "auto"), check_cancel=host.check_cancel)
    ran = RunReport(precision=settings.dtype_name(dtype), device=str(device), backend=backend)
    try:
        _place(model, device, host)
        with torch.inference_mode(), backends.using(backend):
            tile, ran.room_asked, per_frame = _tile_size(model, choices.tile_size, host, device, dtype, (height, width),
                                                         multiple, channels * out_size)
            overlap = min(model_overlap(model) if choices.overlap is None else choices.overlap, tile // 2)
            ran.tile_size, ran.overlap = tile, overlap
            run = Run(model, host, device, dtype, scale, multiple, overlap, ran, tile_cap=tile)
            tiles_per_image = count_tiles(height, width, tile, overlap, multiple)
            run.total_tiles = batch * len(passes) * tiles_per_image
            report_progress(run)  # hosts show the bar before the first (possibly long) tile
            model_size = (height * scale, width * scale)
            whole_frames = tiles_per_image == 1 and len(passes) == 1 and passes[0].source == passes[0].dest
            k = frames_per_forward(choices.batch_size, device, per_frame[0], per_frame[1], host.free_memory(device), batch)
            # tiles accumulate straight into the result unless a resize or a dtype change follows
            direct = target == model_size and host.output_dtype == torch.float32 and out_device.type == "cpu"
            if direct and run.total_tiles == 1 and passes[0].source == passes[0].dest:
                out = one_tile_result(run, settings.as_float(images)[0], passes[0], tile)
            elif whole_frames and target == model_size and out_device.type == "cpu" and (k > 1 or host.output_dtype == torch.uint8):
                out = torch.empty((batch, *target, channels), dtype=host.output_dtype)
                upscale_whole_frames(run, images, out, k, passes)  # uint8 frames go to the device as they are
            else:
                images = settings.as_float(images)
                out = torch.empty((batch, *target, channels), dtype=host.output_dtype, device=out_device)
                run.on_device = _result_fits_on_device(device, host, per_frame, tile, (height, width), channels, scale)
                for b in range(batch):
                    if run.on_device:  # the image goes up once, the result comes home once
                        dest = torch.empty((*model_size, channels), dtype=torch.float32, device=device)
                        upscale_image(run, images[b].to(device), passes, dest, tile)
                    else:
                        dest = out[b] if direct else torch.empty((*model_size, channels), dtype=torch.float32)
                        upscale_image(run, images[b], passes, dest, tile)
                    if run.on_device or not direct:
                        result = settings.to_output(resize_images(dest.unsqueeze(0), target, resample)[0], host.output_dtype)
                        out[b] = home_hwc(result) if out_device.type == "cpu" else result
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
        host.make_room(device, weight_bytes(model))
    # after the manager's load a no-op, unless another node moved the model behind its back
    # (ComfyUI 0.3's core upscale node ends with .to("cpu")), which the manager cannot see
    model.to(device)
    model.eval()


ACCUMULATE_ON = ("cuda",)  # device types whose tiles add into a result kept there (engine/tile_loop.py)


def _result_fits_on_device(device: torch.device, host: Host, per_frame: tuple[float, float], tile: int,
                           image_hw: tuple[int, int], channels: int, scale: int) -> bool:
    """Whether a tiled image's fp32 result, and the image itself, fit on the device beside a
    tile's working set (``per_frame``: the fixed part and a whole frame's, per input px)."""
    if device.type not in ACCUMULATE_ON:
        return False
    fixed, frame = per_frame
    pixels = image_hw[0] * image_hw[1]
    tile_set = fixed + frame * min(tile * tile, pixels) / max(1, pixels)
    kept = 4 * channels * pixels * (1 + scale * scale)  # the image and its result, fp32
    return tile_set + kept <= settings.tile_budget(device, host.free_memory(device))


CANDIDATE_TILE_PIXELS = 256 * 256  # a backend other than torch's windowed plans must fit tiles this large


def _backend_fits(model, device: torch.device, host: Host, name: str) -> bool:
    """Whether ``auto`` may pick ``name``: its fixed memory (ncnn's and OpenVINO's copies of the
    weights) takes at most half of the tile budget, and a 256 px tile fits. Where memory is that
    tight, the windowed torch plans' small working set wins: auto's probes time whole maps."""
    with backends.using(name):
        cost = model.cost(device, 4)
    budget = settings.tile_budget(device, host.free_memory(device))
    return cost.fixed <= budget / 2 and cost.bytes_for(CANDIDATE_TILE_PIXELS) <= budget


def _offload_quietly(model, device) -> None:
    """After a failure: move the model off the device if the device still lets us (after a
    sticky CUDA error it does not, and that second error must not replace the first)."""
    try:
        model.to(device)
    except Exception as e:
        log.warning("could not move the model off the device after an error: %s", e)


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.model.state_dict().values())


def _tile_size(model, chosen: int | None, host: Host, device, dtype, image_hw, multiple: int,
               out_bytes: int) -> tuple[int, int, tuple[float, float]]:
    """(tile, bytes asked of the host, (fixed, per whole frame) working set): the user's tile, or
    the largest whose working set fits the free memory. Either way the host is first asked to
    make room for it (an automatic one: up to ROOM_TILE_PIXELS). A whole frame also holds its
    output in the consumer's dtype (``out_bytes`` per output px) on the device, and the
    pipeline's buffers in flight."""
    ask = host.place_model or host.make_room
    asked, per_frame = 0, (0.0, 0.0)
    if chosen is None or ask is not None or device.type != "cpu":
        cost = model_cost(model, device, dtype, call_model)
        per_pixel = cost.per_pixel + HOME_BYTES_PER_OUTPUT_PIXEL * int(model.scale) ** 2
        # the output in the consumer's dtype twice (this batch's, and the last one's still on its
        # way home: frames.py's pipeline) and the next batch's input, already up (fp32, <= 4 channels)
        in_flight = 2 * out_bytes * int(model.scale) ** 2 + 4 * 4
        per_frame = (cost.fixed, (per_pixel + in_flight) * image_hw[0] * image_hw[1])
        pixels = chosen**2 if chosen is not None else min(image_hw[0] * image_hw[1], settings.ROOM_TILE_PIXELS)
        if ask is not None:
            asked = int(cost.fixed + per_pixel * pixels)
            ask(device, asked)
        if chosen is None:
            budget = settings.tile_budget(device, host.free_memory(device))
            chosen = settings.auto_tile_size(image_hw, cost.fixed, per_pixel, budget,
                                             settings.device_tile_cap(device, int(model.scale)))
    return round_tile(chosen, multiple), asked, per_frame
