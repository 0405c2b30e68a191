"""Held-out metrics for comparing a base model with its fine-tune.

``psnr_y`` and ``ssim_y`` are BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel=True``, the numbers Real-ESRGAN's papers and model zoo report: both images are
rounded to 8 bits, reduced to BT.601 luma (16 + 65.481 R + 128.553 G + 24.966 B, on 0..255),
cropped by ``crop`` px on every side; SSIM uses an 11x11 Gaussian window (sigma 1.5) over the
valid region only. ``perceptual_distance`` is ST-LPIPS with its AlexNet (lower is better): a
different network from the VGG the perceptual loss trains with, so a fine-tune is not graded by
its own loss.

Every function takes two images as float tensors of shape [H, W, 3], values 0..1 (one image of
the engine's [B, H, W, 3] output), on any device; anything else is refused.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputImageError
from .losses import STLPIPS_ALEXNET, BlurPool, StLpips

PERCEPTUAL_METRIC = "ST-LPIPS (AlexNet)"

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
LUMA_WEIGHTS = (65.481, 128.553, 24.966)  # R, G, B of 0..1 values -> Y - 16 on 0..255
# ST-LPIPS's AlexNet shrinks an image ~8x; below 21 px a side its last blur's reflect padding fails
PERCEPTUAL_MIN_SIDE = 21


def psnr_y(a: torch.Tensor, b: torch.Tensor, crop: int) -> float:
    """PSNR in dB of the luma of two [H, W, 3] images, ``crop`` px trimmed off each border;
    ``inf`` when they are equal after 8-bit rounding."""
    ya, yb = _luma(a, b, crop, min_side=1)
    mse = torch.mean((ya - yb) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim_y(a: torch.Tensor, b: torch.Tensor, crop: int) -> float:
    """Mean SSIM of the luma of two [H, W, 3] images, ``crop`` px trimmed off each border."""
    ya, yb = _luma(a, b, crop, min_side=SSIM_WINDOW)
    window = _gaussian_window(ya.device)

    def blur(x: torch.Tensor) -> torch.Tensor:  # valid region only, as BasicSR's [5:-5, 5:-5]
        return F.conv2d(x[None, None], window)[0, 0]

    mu_a, mu_b = blur(ya), blur(yb)
    var_a, var_b = blur(ya * ya) - mu_a**2, blur(yb * yb) - mu_b**2
    covariance = blur(ya * yb) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + SSIM_C1) * (2 * covariance + SSIM_C2)) / (
        (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return ssim_map.mean().item()


def perceptual_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """ST-LPIPS (AlexNet) distance between two [H, W, 3] images: 0 for identical images, about
    0.1-0.7 for visible damage. Runs on ``a``'s device."""
    _check_pair(a, b, min_side=PERCEPTUAL_MIN_SIDE)
    network = _stlpips_alexnet(str(a.device))
    with torch.inference_mode():
        return network(_to_batch(a), _to_batch(b)).item()


def _check_pair(a: torch.Tensor, b: torch.Tensor, min_side: int) -> None:
    for name, image in (("first", a), ("second", b)):
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[-1] != 3 or not image.is_floating_point():
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise InputImageError(f"metrics take float [H, W, 3] images in 0..1; the {name} is {shape}"
                                  f"{'' if not isinstance(image, torch.Tensor) else ' ' + str(image.dtype)}")
    if a.shape != b.shape:
        raise InputImageError(f"metrics compare images of one size: {tuple(a.shape)} vs {tuple(b.shape)}")
    if min(a.shape[:2]) < min_side:
        raise InputImageError(f"{tuple(a.shape)} is too small to measure: at least {min_side} px a side")


def _luma(a: torch.Tensor, b: torch.Tensor, crop: int, min_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(crop, int) or crop < 0:
        raise InputImageError(f"crop must be a whole number of pixels >= 0, got {crop!r}")
    _check_pair(a, b, min_side=2 * crop + min_side)
    return _y_channel(a, crop), _y_channel(b, crop)


def _y_channel(image: torch.Tensor, crop: int) -> torch.Tensor:
    # BasicSR measures saved 8-bit images: clamp and round first, then convert in float
    rgb = (image.detach().double().clamp(0, 1) * 255).round() / 255
    y = 16.0 + rgb @ torch.tensor(LUMA_WEIGHTS, dtype=torch.float64, device=image.device)
    return y[crop : y.shape[0] - crop, crop : y.shape[1] - crop]


@functools.lru_cache(maxsize=4)
def _gaussian_window(device: torch.device) -> torch.Tensor:
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - SSIM_WINDOW // 2
    taps = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    taps = taps / taps.sum()
    return (taps[:, None] * taps[None, :])[None, None]


def _to_batch(image: torch.Tensor) -> torch.Tensor:
    return image.detach().float().permute(2, 0, 1)[None]


def stlpips_alexnet() -> StLpips:
    """ST-LPIPS with its anti-aliased AlexNet, as the package's
    ``LPIPS(net="alex", variant="shift_tolerant")``: tapped after each of its five conv's ReLU."""
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, padding=2), BlurPool(64), nn.ReLU(),
        nn.MaxPool2d(3, stride=1), BlurPool(64), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, stride=1), BlurPool(192), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )
    network = StLpips(features, taps=(2, 6, 10, 12, 14), what="ST-LPIPS's shift-tolerant AlexNet")
    return network.load_package_file(STLPIPS_ALEXNET)


@functools.lru_cache(maxsize=2)
def _stlpips_alexnet(device: str) -> StLpips:
    return stlpips_alexnet().to(device)
