"""Synthetic low-resolution inputs for fine-tuning: Real-ESRGAN's second-order degradation
(blur, resize, noise, JPEG, twice, then a final resize + sinc), a plain bicubic + JPEG one,
and the USM sharpening Real-ESRGAN applies to the ground truth.

Images are float [B, 3, H, W] in 0..1 on any device. Random parameters are drawn per image
from an explicit ``torch.Generator``; noise is drawn on the image's device from a generator
seeded by one of those parameters, so a seed reproduces the output on a given device.
JPEG is real JPEG (Pillow), so that one step bounces through host memory.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputImageError
from .kernels import (
    KERNEL_PROBS,
    KERNEL_SIZES,
    draw_choice,
    draw_int,
    draw_uniform,
    filter2d,
    gaussian_kernel_1d,
    make_kernel,
    sample_blur_kernel,
    sample_final_sinc,
    separable_blur,
)

RESIZE_MODES = ("area", "bilinear", "bicubic")
FINAL_ORDERS = ("resize_then_jpeg", "jpeg_then_resize")
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale, which Real-ESRGAN uses

# Real-ESRGAN's finetune_realesrgan_x4plus.yml; any of these can be overridden by keyword.
DEFAULTS = {
    "kernel_sizes": KERNEL_SIZES,
    # first stage
    "kernel_probs": KERNEL_PROBS,
    "blur_sigma": (0.2, 3.0),
    "betag_range": (0.5, 4.0),
    "betap_range": (1.0, 2.0),
    "sinc_prob": 0.1,
    "resize_prob": (0.2, 0.7, 0.1),  # up, down, keep
    "resize_range": (0.15, 1.5),
    "gaussian_noise_prob": 0.5,
    "noise_range": (1.0, 30.0),  # Gaussian sigma, in 8-bit levels
    "poisson_scale_range": (0.05, 3.0),
    "gray_noise_prob": 0.4,
    "jpeg_range": (30, 95),
    # second stage
    "second_blur_prob": 0.8,
    "kernel_probs2": KERNEL_PROBS,
    "blur_sigma2": (0.2, 1.5),
    "betag_range2": (0.5, 4.0),
    "betap_range2": (1.0, 2.0),
    "sinc_prob2": 0.1,
    "resize_prob2": (0.3, 0.4, 0.3),
    "resize_range2": (0.3, 1.2),
    "gaussian_noise_prob2": 0.5,
    "noise_range2": (1.0, 25.0),
    "poisson_scale_range2": (0.05, 2.5),
    "gray_noise_prob2": 0.4,
    "jpeg_range2": (30, 95),
    "final_sinc_prob": 0.8,
}


# ----------------------------------------------------------------------------- building blocks


def resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """F.interpolate to ``size`` without antialiasing, as Real-ESRGAN does (the aliasing is part
    of the degradation)."""
    if mode == "area":
        return F.interpolate(img, size=size, mode="area")
    return F.interpolate(img, size=size, mode=mode, align_corners=False)


def scaled_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
    """(h, w) times ``factor``, truncated like Real-ESRGAN's int(), never below 1 px."""
    return max(1, int(size[0] * factor)), max(1, int(size[1] * factor))


def add_gaussian_noise(img: torch.Tensor, sigma: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """img + N(0, sigma/255), per channel or (gray) one plane shared by all channels, clipped to 0..1."""
    n, c, h, w = img.shape
    planes = 1 if gray else c
    noise = torch.randn((n, planes, h, w), generator=generator, device=img.device, dtype=img.dtype)
    return (img + noise * (sigma / 255.0)).clamp(0, 1)


def add_poisson_noise(img: torch.Tensor, scale: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """Shot noise, BasicSR's recipe: on the 8-bit-quantized image (its luma when ``gray``), photon
    counts are the next power of two above the number of distinct levels, and the resulting
    noise times ``scale`` is added to the image, clipped to 0..1. Expects one image (N = 1), as
    the level count is per image."""
    source = img
    if gray:
        weights = torch.tensor(GRAY_WEIGHTS, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
        source = (img * weights).sum(dim=1, keepdim=True)
    quantized = (source * 255.0).round().clamp(0, 255) / 255.0
    photons = 2.0 ** math.ceil(math.log2(torch.unique(quantized).numel()))
    noise = torch.poisson(quantized * photons, generator=generator) / photons - quantized
    return (img + noise * scale).clamp(0, 1)


def pillow_jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """Encode uint8 [H, W, 3] as JPEG at ``quality`` with Pillow's defaults (4:2:0) and decode it."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.array(decoded.convert("RGB"))


def jpeg_compress(img: torch.Tensor, qualities: Sequence[int]) -> torch.Tensor:
    """Real JPEG of each image of [N, 3, H, W] (0..1) at its own quality, via the host; the
    input is rounded to 8 bit first, as any JPEG encoder needs, and the result is 8-bit too."""
    pixels = (img.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = np.stack([pillow_jpeg(image, quality) for image, quality in zip(pixels, qualities)])
    return torch.from_numpy(decoded).permute(0, 3, 1, 2).to(img.device, img.dtype) / 255.0


def round_to_8bit(img: torch.Tensor) -> torch.Tensor:
    return (img * 255.0).round().clamp(0, 255) / 255.0


def check_hr(hr: torch.Tensor, scale: int) -> None:
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise InputImageError(f"degradation needs float images [B, 3, H, W]; got shape {tuple(hr.shape)}")
    if hr.shape[2] % scale or hr.shape[3] % scale:
        raise InputImageError(f"ground-truth size {hr.shape[3]}x{hr.shape[2]} is not divisible by the scale {scale}")


# ----------------------------------------------------------------------------- USM sharpening


def usm_sharp(img: torch.Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10) -> torch.Tensor:
    """Real-ESRGAN's unsharp mask for the ground truth (same shape, 0..1, any leading dims).

    sharp = img + weight * (img - blur); it is applied only where the residual exceeds
    ``threshold`` 8-bit levels, through a mask blurred by the same Gaussian so edges of the
    sharpened zone fade in. The Gaussian is OpenCV's for an odd size (radius + 1 if even) and sigma 0."""
    size = radius + 1 if radius % 2 == 0 else radius
    kernel = gaussian_kernel_1d(size)
    residual = img - separable_blur(img, kernel)
    mask = (residual.abs() * 255.0 > threshold).to(img.dtype)
    soft_mask = separable_blur(mask, kernel)
    sharp = (img + weight * residual).clamp(0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img


# ----------------------------------------------------------------------------- Real-ESRGAN pipeline


class RealESRGANDegradation:
    """Real-ESRGAN's second-order degradation, with per-image random parameters.

    ``degradation(hr, generator)`` maps float [B, 3, H, W] (0..1, H and W divisible by ``scale``)
    to float32 [B, 3, H/scale, W/scale] on hr's device, rounded to 8 bit. The parameters each
    image got are left in ``last_params`` (one dict per image, see ``sample_params``)."""

    def __init__(self, scale: int, **overrides):
        unknown = sorted(set(overrides) - set(DEFAULTS))
        if unknown:
            raise TypeError(f"unknown degradation settings: {', '.join(unknown)}")
        self.scale = int(scale)
        self.config = {**DEFAULTS, **overrides}
        self.last_params: list[dict] = []

    def __call__(self, hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        check_hr(hr, self.scale)
        self.last_params = [self.sample_params(generator) for _ in range(hr.shape[0])]
        images = hr.detach().float()
        return torch.cat([self.degrade_one(images[i : i + 1], params) for i, params in enumerate(self.last_params)])

    def sample_params(self, generator: torch.Generator) -> dict:
        """Every random choice for one image, in a fixed draw order (dict literals evaluate left to right)."""
        c = self.config
        kernel_args = {"sizes": c["kernel_sizes"]}
        return {
            "kernel1": sample_blur_kernel(generator, c["blur_sigma"], c["betag_range"], c["betap_range"], c["sinc_prob"],
                                          c["kernel_probs"], **kernel_args),
            "resize1": self._sample_resize(generator, c["resize_prob"], c["resize_range"]),
            "noise1": self._sample_noise(generator, c["gaussian_noise_prob"], c["noise_range"], c["poisson_scale_range"],
                                         c["gray_noise_prob"]),
            "jpeg1": draw_int(generator, *c["jpeg_range"]),
            "blur2": draw_uniform(generator, 0.0, 1.0) < c["second_blur_prob"],
            "kernel2": sample_blur_kernel(generator, c["blur_sigma2"], c["betag_range2"], c["betap_range2"], c["sinc_prob2"],
                                          c["kernel_probs2"], **kernel_args),
            "resize2": self._sample_resize(generator, c["resize_prob2"], c["resize_range2"]),
            "noise2": self._sample_noise(generator, c["gaussian_noise_prob2"], c["noise_range2"], c["poisson_scale_range2"],
                                         c["gray_noise_prob2"]),
            "final_order": draw_choice(generator, FINAL_ORDERS),
            "final_mode": draw_choice(generator, RESIZE_MODES),
            "final_sinc": sample_final_sinc(generator, c["final_sinc_prob"], c["kernel_sizes"]),
            "jpeg2": draw_int(generator, *c["jpeg_range2"]),
            "noise_seed": draw_int(generator, 0, 2**62),
        }

    @staticmethod
    def _sample_resize(generator, probs, scale_range) -> dict:
        direction = draw_choice(generator, ("up", "down", "keep"), probs)
        factor = 1.0
        if direction == "up":
            factor = draw_uniform(generator, 1.0, scale_range[1])
        elif direction == "down":
            factor = draw_uniform(generator, scale_range[0], 1.0)
        return {"direction": direction, "factor": factor, "mode": draw_choice(generator, RESIZE_MODES)}

    @staticmethod
    def _sample_noise(generator, gaussian_prob, sigma_range, poisson_range, gray_prob) -> dict:
        if draw_uniform(generator, 0.0, 1.0) < gaussian_prob:
            kind, strength = "gaussian", draw_uniform(generator, *sigma_range)
        else:
            kind, strength = "poisson", draw_uniform(generator, *poisson_range)
        return {"kind": kind, "strength": strength, "gray": draw_uniform(generator, 0.0, 1.0) < gray_prob}

    def degrade_one(self, img: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply one image's parameters to img [1, 3, H, W] (float32, 0..1)."""
        hr_size = tuple(img.shape[-2:])
        lr_size = (hr_size[0] // self.scale, hr_size[1] // self.scale)
        noise_generator = torch.Generator(device=img.device).manual_seed(params["noise_seed"])

        out = filter2d(img, make_kernel(params["kernel1"]))
        out = resize(out, scaled_size(hr_size, params["resize1"]["factor"]), params["resize1"]["mode"])
        out = add_noise(out, params["noise1"], noise_generator)
        out = jpeg_compress(out, [params["jpeg1"]])  # clamps first: out-of-range values make JPEG ring

        if params["blur2"]:
            out = filter2d(out, make_kernel(params["kernel2"]))
        out = resize(out, scaled_size(lr_size, params["resize2"]["factor"]), params["resize2"]["mode"])
        out = add_noise(out, params["noise2"], noise_generator)

        # Real-ESRGAN groups [resize to the LR size + sinc] and puts it before or after the last
        # JPEG; other orders (sinc, JPEG, resize) were found to give twisted lines.
        if params["final_order"] == "resize_then_jpeg":
            out = jpeg_compress(resize_and_sinc(out, lr_size, params), [params["jpeg2"]])
        else:
            out = resize_and_sinc(jpeg_compress(out, [params["jpeg2"]]), lr_size, params)
        return round_to_8bit(out)


def add_noise(img: torch.Tensor, noise: dict, generator: torch.Generator) -> torch.Tensor:
    if noise["kind"] == "gaussian":
        return add_gaussian_noise(img, noise["strength"], noise["gray"], generator)
    return add_poisson_noise(img, noise["strength"], noise["gray"], generator)


def resize_and_sinc(img: torch.Tensor, lr_size: tuple[int, int], params: dict) -> torch.Tensor:
    out = resize(img, lr_size, params["final_mode"])
    if params["final_sinc"] is not None:
        out = filter2d(out, make_kernel(params["final_sinc"]))
    return out


# ----------------------------------------------------------------------------- bicubic + JPEG


def bicubic_degradation(hr: torch.Tensor, scale: int, generator: torch.Generator, quality: Sequence[int] = (75, 95)) -> torch.Tensor:
    """Antialiased bicubic downscale by ``scale``, then JPEG at a per-image quality drawn from
    [quality[0], quality[1]]; float32 [B, 3, H/scale, W/scale], 8-bit values, on hr's device."""
    check_hr(hr, scale)
    qualities = [draw_int(generator, *quality) for _ in range(hr.shape[0])]
    size = (hr.shape[2] // scale, hr.shape[3] // scale)
    small = F.interpolate(hr.detach().float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    return jpeg_compress(small.clamp(0, 1), qualities)


class BicubicDegradation:
    """``bicubic_degradation`` as a (hr, generator) callable, like ``RealESRGANDegradation``."""

    def __init__(self, scale: int, quality: Sequence[int] = (75, 95)):
        self.scale = int(scale)
        self.quality = tuple(quality)

    def __call__(self, hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return bicubic_degradation(hr, self.scale, generator, self.quality)


DEGRADATIONS = {"realesrgan": RealESRGANDegradation, "bicubic": BicubicDegradation}


def make_degradation(name: str, scale: int):
    """The degradation called ``name`` ("realesrgan" or "bicubic") for ``scale``: a callable
    (hr, generator) -> lq."""
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; choose one of {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[name](scale)
