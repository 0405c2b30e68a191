"""What the ComfyUI nodes do, one function per node, with no ComfyUI import (CI has no ComfyUI):
``schema.py`` declares the nodes for ComfyUI and calls these."""
from __future__ import annotations

import logging

import torch

from ..engine import Choices, Upscaled, is_out_of_memory, upscale
from ..engine.health import HEALTH
from ..engine.resize import resize_images
from ..errors import ModelLoadError
from ..loading import load_model
from ..loading.interpolate import interpolate
from . import _host

log = logging.getLogger("realesrgan_tiled")

# ---------------------------------------------------------------- shared

def model_label(descriptor) -> str:
    """Name used in reports: the file/bundled name our loader recorded, else the architecture."""
    name = getattr(descriptor, "realesrgan_tiled_name", None)
    if name:
        return name
    arch = getattr(getattr(descriptor, "architecture", None), "name", None) or type(descriptor).__name__
    return f"{arch} x{getattr(descriptor, 'scale', '?')}"


def run_model(descriptor, image: torch.Tensor, choices: Choices) -> Upscaled:
    """Our engine with the host's device, progress bar, cancel check and intermediate device;
    a run or a cancel goes into the health report (a failure: by the caller, which knows
    whether it fell back)."""
    try:
        result = upscale(image, descriptor, choices, _host.engine_host(descriptor))
    except BaseException as e:
        if _host.is_cancellation(e) or not isinstance(e, Exception):
            HEALTH.interrupted()
        raise
    HEALTH.ran(model_label(descriptor), result.ran)
    return result


def auto_if_zero(value: int) -> int | None:
    """The tile widgets' convention: 0 means "let the engine choose"."""
    return value or None


def _size(t: torch.Tensor) -> str:
    return f"{t.shape[2]}x{t.shape[1]}"


# ---------------------------------------------------------------- loader

def load_upscale_model(model_name: str):
    """Load Upscale Model (Real-ESRGAN): any Real-ESRGAN-family file (.pth/.safetensors/ncnn
    .param) or a bundled model, as a standard UPSCALE_MODEL."""
    try:
        path = _host.resolve_model_path(model_name)
        descriptor = load_model(path)
    except ModelLoadError as e:
        msg = str(e)
        HEALTH.refused_model(model_name, msg)
        raise ModelLoadError(f"cannot load upscale model {model_name!r}: {msg}") from None
    descriptor.eval()
    descriptor.realesrgan_tiled_name = _host.bundled_name(model_name) or model_name
    _host.attach_patcher(descriptor)  # after the name: the host's list of loaded models shows it
    return descriptor


# ---------------------------------------------------------------- interpolation

def interpolate_upscale_models(model_a, model_b, weight: float):
    """Interpolate Upscale Models (Real-ESRGAN): a weight-space blend of two models."""
    descriptor = interpolate(model_a, model_b, float(weight))
    descriptor.to(_host.offload_device())  # a model manager may hold model_a on the GPU: the blend is new to it
    descriptor.realesrgan_tiled_name = f"{model_label(model_a)} x{1 - weight:g} + {model_label(model_b)} x{weight:g}"
    _host.attach_patcher(descriptor)
    return descriptor


# ---------------------------------------------------------------- tiled upscale

def upscale_image_tiled(upscale_model, image: torch.Tensor, tile_size: int, overlap: int, precision: str) -> torch.Tensor:
    """Upscale Image Tiled (Real-ESRGAN): seam-free, memory-bounded tiled upscale."""
    choices = Choices(tile_size=auto_if_zero(tile_size), overlap=auto_if_zero(overlap), precision=precision)
    try:
        return run_model(upscale_model, image, choices).images
    except Exception as e:
        if not _host.is_cancellation(e):
            HEALTH.failed(model_label(upscale_model), _short(e))
        raise


# ---------------------------------------------------------------- hires fix

def round_to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (halves round up), at least ``multiple``."""
    multiple = max(1, int(multiple))
    return max(multiple, int(value / multiple + 0.5) * multiple)


def hires_target_size(height: int, width: int, scale_by: float, target_width: int, target_height: int,
                      multiple_of: int) -> tuple[int, int]:
    """(height, width) of the hires-fix result.

    width and height both > 0: that size; only one > 0: the other follows the aspect ratio;
    both 0: the input size times scale_by. Each side is then rounded to the nearest multiple
    of multiple_of (8 keeps it latent-compatible), never below multiple_of."""
    if target_width > 0 and target_height > 0:
        w, h = float(target_width), float(target_height)
    elif target_width > 0:
        w, h = float(target_width), height * target_width / width
    elif target_height > 0:
        w, h = width * target_height / height, float(target_height)
    else:
        w, h = width * scale_by, height * scale_by
    return round_to_multiple(h, multiple_of), round_to_multiple(w, multiple_of)


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if is_out_of_memory(e):
        return "CUDA out of memory" if "cuda" in text.lower() else "out of memory"
    if isinstance(e, ModelLoadError):
        return "model could not be loaded"
    return f"model error: {type(e).__name__}"


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


NO_VAE_MESSAGE = (
    "Hires-Fix Upscale (Real-ESRGAN): its LATENT output is used but its vae input is not connected; "
    "connect the checkpoint's VAE (the latent is the upscaled image encoded with it)"
)


def hires_fix_upscale(image: torch.Tensor, scale_by: float, width: int, height: int, resample: str,
                      multiple_of: int, upscale_model=None, vae=None, model_passes: str = "1"):
    """Hires-Fix Upscale (Real-ESRGAN): model upscale to an exact size, with a resample
    fallback -> (image, latent, report)."""
    _, in_h, in_w, _ = image.shape
    target = hires_target_size(in_h, in_w, scale_by, width, height, multiple_of)
    out, report = hires_resize(image, target, resample, upscale_model, model_passes)
    batch = f" (batch of {image.shape[0]})" if image.shape[0] > 1 else ""
    report += batch
    log.info("Hires-Fix Upscale (Real-ESRGAN): %s", report)
    if vae is not None:
        latent = {"samples": vae.encode(out[:, :, :, :3])}
    else:
        latent = _host.blocked_output(NO_VAE_MESSAGE)
    return out, latent, report


def hires_resize(image, target, resample, upscale_model, model_passes="1"):
    """(result, report). Model path first; any failure but a cancel -> plain resampling."""
    sizes = f"{image.shape[2]}x{image.shape[1]} -> {target[1]}x{target[0]}"
    if upscale_model is None:
        reason = "no upscale model connected"
    elif target[0] <= image.shape[1] and target[1] <= image.shape[2]:
        return _resample(image, target, resample), f"{resample}: {sizes} (not an upscale, so the model was not run)"
    else:
        try:
            passes = model_passes if model_passes == "auto" else int(model_passes)
            result = run_model(upscale_model, image, Choices(output_size=target, resample=resample, passes=passes))
            return result.images, f"model {model_label(upscale_model)}: {sizes} ({_ran_text(result.ran)})"
        except BaseException as e:
            if _host.is_cancellation(e) or not isinstance(e, Exception):
                raise
            reason = _reason(e)
            HEALTH.fell_back(model_label(upscale_model), f"{reason}: {_short(e)}")
            log.warning("Hires-Fix Upscale (Real-ESRGAN): model path failed, falling back to %s: %s",
                        resample, e, exc_info=not isinstance(e, (ModelLoadError, torch.cuda.OutOfMemoryError)))
            out = _resample(image, target, resample)
            return out, f"{resample} fallback ({reason}): {sizes}; {type(e).__name__}: {_short(e)}"
    HEALTH.fell_back("(none)", reason)
    return _resample(image, target, resample), f"{resample} fallback ({reason}): {sizes}"


def _ran_text(ran) -> str:
    details = [f"{ran.tiles} tile{'s' if ran.tiles != 1 else ''}", ran.precision]
    if ran.passes > 1:
        details.insert(0, f"{ran.passes} model passes")
    if ran.oom_retries:
        details.append(f"{ran.oom_retries} OOM retr{'ies' if ran.oom_retries > 1 else 'y'}")
    if ran.fp32_reruns:
        details.append(f"{ran.fp32_reruns} fp32 re-run{'s' if ran.fp32_reruns > 1 else ''}")
    return ", ".join(d for d in details if d)


def _resample(image: torch.Tensor, target: tuple[int, int], method: str) -> torch.Tensor:
    """Plain resampling to the target, on the host's intermediate device/dtype."""
    out_device, out_dtype = _host.output_device_dtype()
    return resize_images(image.float(), target, method).to(out_device, out_dtype)
