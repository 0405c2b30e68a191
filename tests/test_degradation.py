"""Training-data degradation: kernels, parameter ranges, determinism, USM, JPEG and bicubic,
checked on real photos against independent oracles (scipy, Pillow, plain numpy formulas)."""
from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pytest
import scipy.ndimage
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F
from PIL import Image

from realesrgan_tiled.errors import InputImageError
from realesrgan_tiled.train.degradation import (
    DEFAULTS,
    BicubicDegradation,
    RealESRGANDegradation,
    add_gaussian_noise,
    add_poisson_noise,
    bicubic_degradation,
    jpeg_compress,
    make_degradation,
    usm_sharp,
)
from realesrgan_tiled.train.kernels import (
    KERNEL_PROBS,
    KERNEL_TYPES,
    circular_lowpass_kernel,
    filter2d,
    gaussian_kernel_1d,
    make_kernel,
    reflect_pad,
    sample_blur_kernel,
    separable_blur,
)


def photo_chw(name: str, size: tuple[int, int]) -> torch.Tensor:
    """A centre crop of a real photo from scikit-image as float32 [1, 3, h, w] in 0..1.
    (Not conftest's ``photo``: this file runs alone, with --noconftest, on machines without the engine's deps.)"""
    import skimage.data

    pixels = getattr(skimage.data, name)()[..., :3]
    top, left = (pixels.shape[0] - size[0]) // 2, (pixels.shape[1] - size[1]) // 2
    crop = np.ascontiguousarray(pixels[top : top + size[0], left : left + size[1]])
    return torch.from_numpy(crop).permute(2, 0, 1).float().div(255).unsqueeze(0).contiguous()


@pytest.fixture(scope="module")
def hr_batch() -> torch.Tensor:
    return torch.cat([photo_chw(name, (128, 128)) for name in ("astronaut", "chelsea", "coffee")])


def one_hot(kind: str) -> list[float]:
    return [1.0 if k == kind else 0.0 for k in KERNEL_TYPES]


def pillow_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def to_uint8_hwc(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def is_8bit(img: torch.Tensor) -> bool:
    levels = img * 255
    return bool(torch.allclose(levels, levels.round(), atol=1e-3))


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("kind", KERNEL_TYPES)
def test_every_kernel_type_is_normalised_odd_sized_and_symmetric(kind):
    generator = torch.Generator().manual_seed(1)
    for _ in range(25):
        params = sample_blur_kernel(generator, (0.2, 3.0), (0.5, 4.0), (1.0, 2.0), sinc_prob=0.0, kernel_probs=one_hot(kind))
        kernel = make_kernel(params)
        size = params["size"]
        assert params["type"] == kind
        assert kernel.shape == (size, size) and size % 2 == 1 and 7 <= size <= 21
        assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert (kernel >= 0).all()
        # every kernel is a function of p^T Sigma^-1 p, so k(p) = k(-p)
        torch.testing.assert_close(kernel, kernel.flip(0, 1))
        if "aniso" not in kind:  # isotropic: also mirror- and transpose-symmetric
            torch.testing.assert_close(kernel, kernel.flip(0))
            torch.testing.assert_close(kernel, kernel.T)


def covariance(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T


def grid_points(size: int) -> np.ndarray:
    axis = np.arange(size) - size // 2
    xx, yy = np.meshgrid(axis, axis)  # xx varies along columns
    return np.stack([xx, yy], -1).astype(np.float64)


def test_anisotropic_gaussian_is_the_bivariate_normal_density():
    params = {"type": "aniso", "size": 15, "sigma_x": 2.7, "sigma_y": 0.9, "theta": 0.6, "beta": 1.0}
    density = scipy.stats.multivariate_normal([0, 0], covariance(2.7, 0.9, 0.6)).pdf(grid_points(15))
    np.testing.assert_allclose(make_kernel(params).numpy(), density / density.sum(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["generalized_aniso", "plateau_aniso"])
def test_generalized_and_plateau_kernels_follow_their_formulas(kind):
    params = {"type": kind, "size": 13, "sigma_x": 1.8, "sigma_y": 0.7, "theta": -1.1, "beta": 1.7}
    points = grid_points(13)
    q = np.einsum("...i,ij,...j->...", points, np.linalg.inv(covariance(1.8, 0.7, -1.1)), points)
    expected = np.exp(-0.5 * q**1.7) if kind.startswith("generalized") else 1 / (1 + q**1.7)
    np.testing.assert_allclose(make_kernel(params).numpy(), expected / expected.sum(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("size,cutoff", [(7, math.pi / 3), (13, 2.0), (21, math.pi / 5), (21, math.pi)])
def test_sinc_kernel_is_the_circular_lowpass_filter(size, cutoff):
    centre = (size - 1) / 2
    rows, cols = np.mgrid[0:size, 0:size]
    radius = np.hypot(rows - centre, cols - centre)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = cutoff * scipy.special.j1(cutoff * radius) / (2 * np.pi * radius)
    expected[size // 2, size // 2] = cutoff**2 / (4 * np.pi)
    kernel = circular_lowpass_kernel(cutoff, size)
    np.testing.assert_allclose(kernel.numpy(), expected / expected.sum(), rtol=1e-9, atol=1e-14)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_kernel_draws_stay_in_range_and_follow_the_type_probabilities():
    generator = torch.Generator().manual_seed(7)
    draws = [sample_blur_kernel(generator, (0.2, 3.0), (0.5, 4.0), (1.0, 2.0), sinc_prob=0.1) for _ in range(3000)]
    types = Counter(d["type"] for d in draws)
    assert types["sinc"] / len(draws) == pytest.approx(0.1, abs=0.025)
    blur_count = len(draws) - types["sinc"]
    for kind, prob in zip(KERNEL_TYPES, KERNEL_PROBS):
        assert types[kind] / blur_count == pytest.approx(prob, abs=0.03), kind
    assert {d["size"] for d in draws} == set(range(7, 22, 2))
    for d in draws:
        if d["type"] == "sinc":
            low = math.pi / 3 if d["size"] < 13 else math.pi / 5
            assert low <= d["cutoff"] <= math.pi
            continue
        assert 0.2 <= d["sigma_x"] <= 3.0 and 0.2 <= d["sigma_y"] <= 3.0
        assert -math.pi <= d["theta"] <= math.pi
        if "aniso" not in d["type"]:
            assert d["sigma_y"] == d["sigma_x"] and d["theta"] == 0.0
        beta_range = {"generalized": (0.5, 4.0), "plateau": (1.0, 2.0)}.get(d["type"].split("_")[0], (1.0, 1.0))
        assert beta_range[0] <= d["beta"] <= beta_range[1]


# ----------------------------------------------------------------------------- pipeline parameters


def check_kernel(kernel: dict, sigma_range: tuple[float, float]) -> None:
    assert kernel["size"] in range(7, 22, 2)
    if kernel["type"] != "sinc":
        assert sigma_range[0] <= kernel["sigma_x"] <= sigma_range[1] and sigma_range[0] <= kernel["sigma_y"] <= sigma_range[1]


def check_resize(resize: dict, scale_range: tuple[float, float]) -> None:
    bounds = {"up": (1.0, scale_range[1]), "down": (scale_range[0], 1.0), "keep": (1.0, 1.0)}[resize["direction"]]
    assert bounds[0] <= resize["factor"] <= bounds[1]
    assert resize["mode"] in ("area", "bilinear", "bicubic")


def check_noise(noise: dict, sigma_range: tuple[float, float], poisson_range: tuple[float, float]) -> None:
    low, high = sigma_range if noise["kind"] == "gaussian" else poisson_range
    assert noise["kind"] in ("gaussian", "poisson") and low <= noise["strength"] <= high
    assert isinstance(noise["gray"], bool)


def test_pipeline_parameters_stay_in_their_ranges():
    degradation = RealESRGANDegradation(4)
    generator = torch.Generator().manual_seed(3)
    draws = [degradation.sample_params(generator) for _ in range(800)]
    for p in draws:
        check_kernel(p["kernel1"], (0.2, 3.0))
        check_kernel(p["kernel2"], (0.2, 1.5))
        check_resize(p["resize1"], (0.15, 1.5))
        check_resize(p["resize2"], (0.3, 1.2))
        check_noise(p["noise1"], (1.0, 30.0), (0.05, 3.0))
        check_noise(p["noise2"], (1.0, 25.0), (0.05, 2.5))
        assert 30 <= p["jpeg1"] <= 95 and 30 <= p["jpeg2"] <= 95
        assert isinstance(p["jpeg1"], int) and isinstance(p["jpeg2"], int)
        assert p["final_order"] in ("resize_then_jpeg", "jpeg_then_resize") and p["final_mode"] in ("area", "bilinear", "bicubic")
        if p["final_sinc"] is not None:
            assert p["final_sinc"]["type"] == "sinc" and math.pi / 3 <= p["final_sinc"]["cutoff"] <= math.pi
    n = len(draws)

    def share(predicate) -> float:
        return sum(map(predicate, draws)) / n

    assert share(lambda p: p["final_sinc"] is not None) == pytest.approx(0.8, abs=0.05)
    assert share(lambda p: p["blur2"]) == pytest.approx(0.8, abs=0.05)
    assert share(lambda p: p["resize1"]["direction"] == "down") == pytest.approx(0.7, abs=0.06)
    assert share(lambda p: p["resize2"]["direction"] == "up") == pytest.approx(0.3, abs=0.06)
    assert share(lambda p: p["noise1"]["kind"] == "gaussian") == pytest.approx(0.5, abs=0.06)
    assert share(lambda p: p["noise2"]["gray"]) == pytest.approx(0.4, abs=0.06)
    assert share(lambda p: p["final_order"] == "resize_then_jpeg") == pytest.approx(0.5, abs=0.06)
    assert {p["jpeg1"] for p in draws} >= {30, 95}  # both ends of the quality range are reachable


def test_overrides_change_the_recipe_and_typos_are_refused():
    generator = torch.Generator().manual_seed(0)
    forced = RealESRGANDegradation(2, sinc_prob=1.0, final_sinc_prob=0.0, jpeg_range=(50, 50))
    params = forced.sample_params(generator)
    assert params["kernel1"]["type"] == "sinc" and params["final_sinc"] is None and params["jpeg1"] == 50
    with pytest.raises(TypeError, match="sinc_porb"):
        RealESRGANDegradation(4, sinc_porb=0.5)
    assert set(DEFAULTS) >= {"final_sinc_prob", "second_blur_prob", "resize_prob2"}


# ----------------------------------------------------------------------------- degradation output


@pytest.mark.parametrize("scale", [4, 2])
def test_output_is_lr_sized_8bit_and_in_range(hr_batch, scale):
    degradation = RealESRGANDegradation(scale)
    generator = torch.Generator().manual_seed(11)
    for _ in range(4):  # several draws, so different branches (orders, noise kinds, resizes) run
        lq = degradation(hr_batch, generator)
        assert lq.shape == (3, 3, 128 // scale, 128 // scale)
        assert lq.dtype == torch.float32 and lq.device == hr_batch.device
        assert lq.min() >= 0 and lq.max() <= 1 and is_8bit(lq)
        assert len(degradation.last_params) == 3


def test_same_seed_same_output_and_each_image_gets_its_own_parameters(hr_batch):
    degradation = RealESRGANDegradation(4)
    first = degradation(hr_batch, torch.Generator().manual_seed(5))
    params = degradation.last_params
    again = degradation(hr_batch, torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and degradation.last_params == params
    other = degradation(hr_batch, torch.Generator().manual_seed(6))
    assert not torch.equal(first, other)
    assert params[0] != params[1] != params[2]
    # the same photo twice in a batch still gets two different degradations
    twin = degradation(hr_batch[:1].repeat(2, 1, 1, 1), torch.Generator().manual_seed(5))
    assert not torch.equal(twin[0], twin[1])


def test_bad_ground_truth_shapes_are_refused():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(InputImageError, match="divisible"):
        RealESRGANDegradation(4)(torch.rand(1, 3, 30, 32), generator)
    with pytest.raises(InputImageError, match="B, 3, H, W"):
        bicubic_degradation(torch.rand(3, 32, 32), 2, generator)


def test_gaussian_and_poisson_noise_behave_as_described():
    flat = torch.full((1, 3, 128, 128), 0.5)
    generator = torch.Generator().manual_seed(2)
    color = add_gaussian_noise(flat, 10.0, gray=False, generator=generator) - flat
    assert color.std().item() == pytest.approx(10 / 255, rel=0.05)
    assert not torch.equal(color[:, 0], color[:, 1])
    gray = add_gaussian_noise(flat, 10.0, gray=True, generator=generator) - flat
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    # shot noise on a 3-level image: photons = 4 (next power of two), so level 0.5 becomes
    # Poisson(2)/4 - 0.5, standard deviation sqrt(2)/4, times the scale
    levels = torch.cat([torch.zeros(1, 3, 64, 128), torch.full((1, 3, 64, 128), 0.5), torch.ones(1, 3, 8, 128)], dim=2)
    noisy = add_poisson_noise(levels, 0.1, gray=False, generator=generator)
    assert torch.equal(noisy[:, :, :64], levels[:, :, :64])  # zero photons, zero noise
    shot = noisy[:, :, 64:128] - 0.5
    assert shot.std().item() == pytest.approx(0.1 * math.sqrt(2) / 4, rel=0.05)
    assert not torch.equal(shot[:, 0], shot[:, 1])
    gray_shot = add_poisson_noise(levels, 0.1, gray=True, generator=generator)[:, :, 64:128] - 0.5
    assert torch.equal(gray_shot[:, 0], gray_shot[:, 1]) and gray_shot.std() > 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_output_stays_on_the_device_with_the_same_parameters(hr_batch):
    degradation = RealESRGANDegradation(4)
    lq = degradation(hr_batch.cuda(), torch.Generator().manual_seed(9))
    cuda_params = degradation.last_params
    cpu_lq = degradation(hr_batch, torch.Generator().manual_seed(9))
    assert lq.is_cuda and lq.shape == cpu_lq.shape and is_8bit(lq.cpu())
    assert cuda_params == degradation.last_params  # parameters come from the CPU generator either way
    torch.testing.assert_close(usm_sharp(hr_batch.cuda()).cpu(), usm_sharp(hr_batch), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- USM sharpening


def test_reflect_pad_follows_opencvs_reflect101_rule_for_any_pad():
    img = torch.arange(12.0).view(1, 1, 3, 4)
    padded = reflect_pad(img, 7, 9)

    def fold(i: int, n: int) -> int:  # cv2.borderInterpolate for BORDER_REFLECT_101
        while not 0 <= i < n:
            i = -i if i < 0 else 2 * n - 2 - i
        return i

    rows = [fold(i, 3) for i in range(-7, 3 + 7)]
    cols = [fold(j, 4) for j in range(-9, 4 + 9)]
    assert torch.equal(padded[0, 0], img[0, 0][rows][:, cols])


def test_separable_gaussian_equals_2d_convolution_and_scipy():
    img = photo_chw("chelsea", (96, 120)).double()
    kernel = gaussian_kernel_1d(51)  # OpenCV's sigma rule: 0.3 * (25 - 1) + 0.8 = 8
    expected_1d = np.exp(-((np.arange(51) - 25) ** 2) / (2 * 8.0**2))
    np.testing.assert_allclose(kernel.numpy(), expected_1d / expected_1d.sum(), rtol=1e-12)
    blurred = separable_blur(img, kernel)
    two_d = filter2d(img, torch.outer(kernel, kernel))
    torch.testing.assert_close(blurred, two_d, atol=1e-5, rtol=0)
    oracle = scipy.ndimage.gaussian_filter(img[0].numpy(), sigma=(0, 8.0, 8.0), truncate=25 / 8.0, mode="mirror")
    np.testing.assert_allclose(blurred[0].numpy(), oracle, atol=1e-5, rtol=0)


def reference_usm(img: np.ndarray, weight: float = 0.5, threshold: float = 10) -> np.ndarray:
    """The USM formula written out with scipy: Gaussian sigma 8 truncated at 25 px, mirror borders."""

    def blur(x):
        return scipy.ndimage.gaussian_filter(x, sigma=(0, 8.0, 8.0), truncate=25 / 8.0, mode="mirror")

    residual = img - blur(img)
    soft_mask = blur((np.abs(residual) * 255 > threshold).astype(np.float64))
    sharp = np.clip(img + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img


def test_usm_sharp_matches_the_written_out_formula():
    img = photo_chw("astronaut", (128, 160)).double()
    sharpened = usm_sharp(img)
    assert sharpened.shape == img.shape and sharpened.min() >= 0 and sharpened.max() <= 1
    np.testing.assert_allclose(sharpened[0].numpy(), reference_usm(img[0].numpy()), atol=1e-6, rtol=0)
    assert (sharpened - img).abs().max() > 0.02  # it does sharpen the photo's edges
    # float32 agrees too, apart from residuals sitting right on the threshold
    assert (usm_sharp(img.float()).double() - sharpened).abs().max() < 1e-3


def test_usm_and_filter2d_match_opencv():
    """OpenCV itself as the oracle, where it is installed (BasicSR's USM and filter2D are cv2 calls)."""
    cv2 = pytest.importorskip("cv2")
    img = photo_chw("coffee", (96, 128)).double()
    hwc = img[0].permute(1, 2, 0).numpy().copy()
    blur = cv2.GaussianBlur(hwc, (51, 51), 0)
    residual = hwc - blur
    soft_mask = cv2.GaussianBlur((np.abs(residual) * 255 > 10).astype(np.float64), (51, 51), 0)
    expected = soft_mask * np.clip(hwc + 0.5 * residual, 0, 1) + (1 - soft_mask) * hwc
    np.testing.assert_allclose(usm_sharp(img)[0].permute(1, 2, 0).numpy(), expected, atol=1e-6, rtol=0)
    kernel = make_kernel({"type": "aniso", "size": 21, "sigma_x": 2.5, "sigma_y": 0.6, "theta": 0.4, "beta": 1.0})
    filtered = filter2d(img, kernel)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(filtered, cv2.filter2D(hwc, -1, kernel.numpy()), atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------- JPEG and bicubic


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_jpeg_step_is_pillows_jpeg(quality):
    img = photo_chw("coffee", (96, 128))
    compressed = jpeg_compress(img, [quality])
    expected = pillow_round_trip(to_uint8_hwc(img[0]), quality)
    assert np.array_equal(to_uint8_hwc(compressed[0]), expected)
    assert not torch.equal(compressed, (img * 255).round() / 255)  # it did change the image


def test_bicubic_degradation_is_antialiased_bicubic_then_jpeg():
    hr = torch.cat([photo_chw("astronaut", (128, 96)), photo_chw("chelsea", (128, 96))])
    lq = bicubic_degradation(hr, 4, torch.Generator().manual_seed(0), quality=(80, 80))
    small = F.interpolate(hr, size=(32, 24), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    assert lq.shape == (2, 3, 32, 24) and is_8bit(lq)
    for i in range(2):
        assert np.array_equal(to_uint8_hwc(lq[i]), pillow_round_trip(to_uint8_hwc(small[i]), 80))
    # a quality range gives each image its own seeded quality
    a = bicubic_degradation(hr, 4, torch.Generator().manual_seed(1), quality=(30, 95))
    b = bicubic_degradation(hr, 4, torch.Generator().manual_seed(1), quality=(30, 95))
    assert torch.equal(a, b)


def test_make_degradation_names():
    generator = torch.Generator().manual_seed(0)
    hr = photo_chw("coffee", (64, 64))
    assert isinstance(make_degradation("realesrgan", 4), RealESRGANDegradation)
    bicubic = make_degradation("bicubic", 2)
    assert isinstance(bicubic, BicubicDegradation)
    assert bicubic(hr, generator).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="realesrgan"):
        make_degradation("paired", 4)
