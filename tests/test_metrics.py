"""Held-out metrics (train/metrics.py) against independent oracles: scikit-image's PSNR and SSIM on
a luma channel computed here, and ST-LPIPS values taken from the stlpips_pytorch package's own
``LPIPS(net="alex", variant="shift_tolerant")``."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from realesrgan_tiled.errors import InputImageError
from realesrgan_tiled.train.metrics import PERCEPTUAL_METRIC, perceptual_distance, psnr_y, ssim_y

from .conftest import photo

needs_stlpips = pytest.mark.skipif(importlib.util.find_spec("stlpips_pytorch") is None,
                                   reason="the perceptual metric's weights come from stlpips_pytorch")


def hwc(name: str, size: tuple[int, int]) -> torch.Tensor:
    return photo(name, size)[0]


def blurred(image: torch.Tensor, sigma: float) -> torch.Tensor:
    chw = image.permute(2, 0, 1)[None]
    return TF.gaussian_blur(chw, 2 * math.ceil(3 * sigma) + 1, sigma)[0].permute(1, 2, 0)


def noisy(image: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    return (image + std * noise).clamp(0, 1)


def reference_luma(image: torch.Tensor, crop: int) -> np.ndarray:
    """BT.601 luma on 0..255 of the 8-bit image, as BasicSR's rgb2ycbcr(y_only=True)."""
    rgb8 = np.round(np.clip(image.numpy().astype(np.float64), 0, 1) * 255)
    y = 16 + (65.481 * rgb8[..., 0] + 128.553 * rgb8[..., 1] + 24.966 * rgb8[..., 2]) / 255
    return y[crop : y.shape[0] - crop, crop : y.shape[1] - crop]


PAIRS = {
    "noise": lambda: (hwc("astronaut", (120, 96)), noisy(hwc("astronaut", (120, 96)), 0.04)),
    "blur": lambda: (hwc("coffee", (96, 128)), blurred(hwc("coffee", (96, 128)), 1.5)),
    "shift": lambda: (hwc("chelsea", (100, 100)), torch.roll(hwc("chelsea", (100, 100)), 1, dims=1)),
}


@pytest.mark.parametrize("crop", [0, 4])
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_psnr_and_ssim_match_scikit_image_on_the_luma(pair, crop):
    a, b = PAIRS[pair]()
    ya, yb = reference_luma(a, crop), reference_luma(b, crop)
    assert psnr_y(a, b, crop) == pytest.approx(peak_signal_noise_ratio(ya, yb, data_range=255), abs=1e-9)
    expected_ssim = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert ssim_y(a, b, crop) == pytest.approx(expected_ssim, abs=1e-9)


def test_identical_images_give_infinite_psnr_and_ssim_one():
    a = hwc("astronaut", (64, 64))
    assert psnr_y(a, a.clone(), crop=4) == math.inf
    assert ssim_y(a, a.clone(), crop=4) == pytest.approx(1.0, abs=1e-12)
    # differences below half an 8-bit step vanish in the rounding BasicSR does
    assert psnr_y(a, (a + 0.3 / 255).clamp(0, 1), crop=0) == math.inf


def test_values_outside_0_1_are_clamped_first():
    a = hwc("coffee", (48, 48))
    over = a.clone()
    over[a == 1.0] = 1.3  # what an upscaler overshooting white produces before it is saved
    assert psnr_y(over, a, crop=0) == math.inf


def test_crop_removes_exactly_the_border():
    a = hwc("chelsea", (64, 80))
    b = a.clone()
    b[:4] = 1 - b[:4]  # damage only the top 4 rows
    b[:, -4:] = 0  # and the right 4 columns
    assert psnr_y(a, b, crop=4) == math.inf and ssim_y(a, b, crop=4) == pytest.approx(1.0)
    # one damaged row left in: PSNR drops hard; SSIM only a little, since its valid-region window
    # reaches that row with its outermost, smallest Gaussian weights
    assert psnr_y(a, b, crop=3) < 30 and ssim_y(a, b, crop=3) < 1 - 1e-4
    c = noisy(a, 0.05)
    assert psnr_y(a, c, crop=6) == psnr_y(a[6:-6, 6:-6], c[6:-6, 6:-6], crop=0)
    assert ssim_y(a, c, crop=6) == ssim_y(a[6:-6, 6:-6], c[6:-6, 6:-6], crop=0)


@pytest.mark.parametrize("fn", [psnr_y, ssim_y, lambda a, b, crop: perceptual_distance(a, b)])
@pytest.mark.parametrize("shape_a, shape_b", [
    ((1, 32, 32, 3), (1, 32, 32, 3)),  # a batch: take one image out first
    ((3, 32, 32), (3, 32, 32)),  # channels first
    ((32, 32, 3), (32, 30, 3)),  # sizes differ
    ((32, 32, 4), (32, 32, 4)),  # RGBA
])
def test_shapes_other_than_hw3_of_one_size_are_refused(fn, shape_a, shape_b):
    with pytest.raises(InputImageError):
        fn(torch.rand(shape_a), torch.rand(shape_b), crop=0)


def test_integer_images_and_bad_crops_are_refused():
    image = hwc("astronaut", (32, 32))
    with pytest.raises(InputImageError, match="float"):
        psnr_y((image * 255).to(torch.uint8), (image * 255).to(torch.uint8), crop=0)
    with pytest.raises(InputImageError, match="crop"):
        psnr_y(image, image, crop=-1)
    with pytest.raises(InputImageError, match="too small"):
        ssim_y(image, image, crop=11)  # 10 px left: less than SSIM's 11 px window


def test_perceptual_metric_is_not_the_training_loss_network():
    assert PERCEPTUAL_METRIC == "ST-LPIPS (AlexNet)"


@needs_stlpips
def test_perceptual_distance_matches_the_stlpips_package():
    """Values from stlpips_pytorch 0.0.2's LPIPS(net="alex", variant="shift_tolerant")(x, y,
    normalize=True) on these very tensors (computed once with the package; its modules cannot be
    imported here without IPython and torchsummary)."""
    image = photo("astronaut")[0, 0:256, 128:384]
    assert perceptual_distance(blurred(image, 1.0), image) == pytest.approx(0.15202359855175018, rel=1e-4)
    assert perceptual_distance(blurred(image, 2.0), image) == pytest.approx(0.4301967918872833, rel=1e-4)


@needs_stlpips
def test_perceptual_distance_is_zero_for_identical_images_and_symmetric():
    a = hwc("coffee", (96, 96))
    assert perceptual_distance(a, a.clone()) == 0.0
    b = noisy(a, 0.05)
    assert perceptual_distance(a, b) == pytest.approx(perceptual_distance(b, a), rel=1e-6)


@needs_stlpips
def test_perceptual_distance_grows_with_blur_and_with_noise():
    a = hwc("chelsea", (96, 128))
    by_blur = [perceptual_distance(blurred(a, sigma), a) for sigma in (0.5, 1.0, 2.0, 3.0)]
    by_noise = [perceptual_distance(noisy(a, std), a) for std in (0.01, 0.03, 0.1)]
    assert 0 < by_blur[0] and by_blur == sorted(by_blur) and len(set(by_blur)) == 4, by_blur
    assert 0 < by_noise[0] and by_noise == sorted(by_noise) and len(set(by_noise)) == 3, by_noise


@needs_stlpips
def test_perceptual_distance_measures_small_images_and_refuses_tinier_ones():
    a = hwc("astronaut", (21, 40))
    assert perceptual_distance(blurred(a, 1.0), a) > 0
    with pytest.raises(InputImageError, match="too small"):
        perceptual_distance(a[:20], a[:20])
