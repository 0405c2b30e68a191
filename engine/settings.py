"""The engine's defaults and checks: device, precision, tile size, output size. Adapters pass
the user's value or nothing; what "nothing" means is decided here only."""
from __future__ import annotations

import logging
import math

import torch

from ..errors import InputImageError
from .resize import RESAMPLE_METHODS
from .tiles import MIN_TILE, round_up

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEFAULT_RESAMPLE = "lanczos"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_WORKING_SET = 2 << 30  # CPU tile budget: x4plus inputs up to ~1.4 Mpx run as one tile
ROOM_TILE_PIXELS = 512 * 512  # an automatic tile asks the host to free room for at most this


def resolve_device(device: torch.device | str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str | None, model, device: torch.device) -> torch.dtype:
    """auto: fp16 on CUDA when the model supports it (the NaN guard catches overflow),
    else bf16, else fp32; fp32 on CPU (where the backend measurement may then pick bf16:
    ``runtimes/backend.py``). An explicit half precision the model does not
    support falls back to fp32 with a warning."""
    precision = "auto" if precision is None else precision
    if precision not in PRECISIONS:
        raise InputImageError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        if model.supports_half:
            return torch.float16
        if model.supports_bfloat16 and native_bf16(device):
            return torch.bfloat16
        return torch.float32
    dtype = DTYPES[precision]
    supported = {torch.float16: model.supports_half, torch.bfloat16: model.supports_bfloat16}.get(dtype, True)
    if not supported:
        log.warning("%s does not support %s; running in fp32", model.architecture.name, precision)
        return torch.float32
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def resample_method(resample: str | None) -> str:
    method = DEFAULT_RESAMPLE if resample is None else resample
    if method not in RESAMPLE_METHODS:
        raise InputImageError(f"resample method {method!r} is not one of {', '.join(RESAMPLE_METHODS)}")
    return method


def check_tile_choices(tile_size: int | None, overlap: int | None) -> None:
    if tile_size is not None and (not isinstance(tile_size, int) or tile_size < 1):
        raise InputImageError(f"tile size must be a positive whole number of pixels, not {tile_size!r}")
    if overlap is not None and (not isinstance(overlap, int) or overlap < 0):
        raise InputImageError(f"overlap must be a whole number of pixels >= 0, not {overlap!r}")


def tile_budget(device: torch.device, free: int) -> float:
    """Memory a tile may use: CUDA: 60 % of what is free; CPU: 40 % of available RAM, at most
    CPU_WORKING_SET."""
    return free * 0.6 if device.type == "cuda" else min(free * 0.4, CPU_WORKING_SET)


def auto_tile_size(image_hw: tuple[int, int], fixed: float, per_pixel: float, budget: float,
                   max_side: int | None = None) -> int:
    """The largest tile whose working set (``fixed + per_pixel * px``) fits the budget. When the
    whole image fits, it is one tile: it computes no overlap twice and has no seams, and on CPU
    our networks already walk large maps in cache-sized windows themselves. ``max_side`` caps
    either answer (see ``device_tile_cap``)."""
    height, width = image_hw
    budget -= fixed
    if height * width * per_pixel <= budget:
        side = round_up(max(height, width), 8)
    else:
        side = max(MIN_TILE, min(int(math.sqrt(max(budget, 0) / per_pixel)), 4096))
    return side if max_side is None else max(MIN_TILE, min(side, max_side))


# Past 2**31 elements in one tensor, GPU kernels' support varies (32-bit indexing). The widest
# full-resolution maps of our networks have 64 channels at the output scale (x4plus' upsampling
# tail), so a tile stays under that below sqrt(2**31 / 64) output px a side.
LARGEST_TENSOR_ELEMENTS = 2**31 - 1
WIDE_FEATURES = 64


def device_tile_cap(device: torch.device, scale: int) -> int | None:
    """The largest automatic tile side (input px) on ``device``; None on the CPU, where our
    networks walk large maps in windows and no single tensor gets that big."""
    if device.type == "cpu":
        return None
    return max(MIN_TILE, int(math.sqrt(LARGEST_TENSOR_ELEMENTS / WIDE_FEATURES)) // max(1, scale) // 8 * 8)


def native_bf16(device: torch.device) -> bool:
    """bf16 runs natively on ``device`` itself: on NVIDIA from Ampere (compute capability 8)
    on; ``torch.cuda.is_bf16_supported()`` also counts emulation (Turing, Volta and Pascal run
    bf16 convs through a slow fallback) and asks about the current device, not this one."""
    if device.type != "cuda":
        return False
    if torch.version.hip:  # ROCm: torch's answer is about the hardware
        return torch.cuda.is_bf16_supported()
    return torch.cuda.get_device_capability(device)[0] >= 8


MAX_AUTO_PASSES = 4  # x4 four times is x256: past that a target is a typo, not a wish


def model_passes(choice, size: tuple[int, int], target: tuple[int, int], scale: int) -> int:
    """How many times the model runs. None or 1: once (then resampling reaches the target).
    "auto": until the result covers the target, at most MAX_AUTO_PASSES. N: like auto, at
    most N."""
    if choice is None:
        return 1
    if choice == "auto":
        limit = MAX_AUTO_PASSES
    elif isinstance(choice, int) and not isinstance(choice, bool) and choice >= 1:
        limit = choice
    else:
        raise InputImageError(f"model passes must be 'auto' or a whole number from 1, not {choice!r}")
    count, (h, w) = 1, size
    while count < limit and scale > 1 and (h * scale < target[0] or w * scale < target[1]):
        count, h, w = count + 1, h * scale, w * scale
    return count


def target_size(h: int, w: int, scale: int, size, factor) -> tuple[int, int]:
    if size is not None:
        th, tw = int(size[0]), int(size[1])
        if th < 1 or tw < 1:
            raise InputImageError(f"output size {tw}x{th} is invalid: both sides must be at least 1 px")
        return th, tw
    if factor is not None:
        if not factor > 0 or not math.isfinite(factor):
            raise InputImageError(f"output scale {factor} is invalid: it must be a positive number")
        return max(1, round(h * factor)), max(1, round(w * factor))
    return h * scale, w * scale


OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)


def to_output(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Model output (0..1) in the consumer's dtype: uint8 is ``round(x * 255)`` (bytes for an
    encoder or a PNG: a quarter of fp32's), the float types a plain cast."""
    if dtype == torch.uint8:
        return x.clamp(0, 1).mul_(255).round_().to(torch.uint8)
    return x.to(dtype)


def check_output_dtype(dtype: torch.dtype) -> None:
    if dtype not in OUTPUT_DTYPES:
        raise InputImageError(f"output dtype {dtype} is not supported; choose one of "
                              f"{', '.join(str(d) for d in OUTPUT_DTYPES)}")


def check_output_fits(batch: int, size: tuple[int, int], channels: int, dtype: torch.dtype, free: int) -> None:
    """Refuse up front a result that cannot fit in memory: Linux would hand out the pages
    lazily and the OOM killer would end the whole host process (ComfyUI) half-way instead."""
    needed = batch * size[0] * size[1] * channels * torch.tensor([], dtype=dtype).element_size()
    if needed > free:
        raise InputImageError(
            f"the result ({batch} x {size[1]}x{size[0]} px, {channels} channels) needs {needed / 2**30:.1f} GiB "
            f"but only {free / 2**30:.1f} GiB of memory is free; upscale fewer frames at once or to a smaller size"
        )


def check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputImageError(f"image batch must be a [batch, height, width, channels] tensor, got {shape}")
    b, h, w, c = images.shape
    if h < 1 or w < 1:
        raise InputImageError(f"image is empty ({w}x{h} px)")
    if c not in (1, 3, 4):
        raise InputImageError(f"image has {c} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    if not images.is_floating_point() and images.dtype != torch.uint8:
        raise InputImageError(f"image tensor has dtype {images.dtype}; expected float values in 0..1 (or uint8)")


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (a video's frames) as float 0..1: ``x / 255``, as the device makes them."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images
