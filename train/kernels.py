"""Blur and sinc kernels for Real-ESRGAN's training degradation, their random parameters, and the
filters that apply them (cv2-style correlation with BORDER_REFLECT_101 borders).

Every random draw goes through an explicit ``torch.Generator`` so a seed reproduces the exact
parameters; kernels are built in float64 on the CPU (they are at most 21x21) and moved to the
image's device when applied.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KERNEL_PROBS = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
KERNEL_SIZES = tuple(range(7, 22, 2))  # odd sizes 7..21, as Real-ESRGAN's kernel_range
ANISOTROPIC_TYPES = ("aniso", "generalized_aniso", "plateau_aniso")


# ----------------------------------------------------------------------------- random draws


def draw_uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float in [low, high) from ``generator`` (float64, so the bounds hold exactly)."""
    u = torch.rand((), generator=generator, device=generator.device, dtype=torch.float64).item()
    return low + (high - low) * u


def draw_int(generator: torch.Generator, low: int, high: int) -> int:
    """One integer in [low, high], both ends included."""
    return int(torch.randint(int(low), int(high) + 1, (), generator=generator, device=generator.device).item())


def draw_choice(generator: torch.Generator, options: Sequence, probs: Sequence[float] | None = None):
    """One of ``options``, weighted by ``probs`` (uniform when None)."""
    weights = list(probs) if probs is not None else [1.0] * len(options)
    u = draw_uniform(generator, 0.0, sum(weights))
    total = 0.0
    for option, weight in zip(options, weights):
        total += weight
        if u < total:
            return option
    return options[-1]  # u can only land here through float rounding of the running sum


def draw_beta(generator: torch.Generator, beta_range: Sequence[float]) -> float:
    """A shape exponent: half the draws below 1 and half above, as Real-ESRGAN does, so flat-topped
    (beta > 1) and heavy-tailed (beta < 1) shapes are equally common whatever the range's width."""
    low, high = beta_range
    if draw_uniform(generator, 0.0, 1.0) < 0.5:
        return draw_uniform(generator, low, 1.0)
    return draw_uniform(generator, 1.0, high)


def sinc_cutoff_range(size: int) -> tuple[float, float]:
    """Cutoff range for a sinc kernel of ``size``: below 13 px a low cutoff would be truncated
    into a box, so Real-ESRGAN keeps omega_c >= pi/3 there and allows pi/5 only for larger ones."""
    return (math.pi / 3 if size < 13 else math.pi / 5), math.pi


def sample_blur_kernel(
    generator: torch.Generator,
    sigma_range: Sequence[float],
    betag_range: Sequence[float],
    betap_range: Sequence[float],
    sinc_prob: float,
    kernel_probs: Sequence[float] = KERNEL_PROBS,
    sizes: Sequence[int] = KERNEL_SIZES,
) -> dict:
    """Parameters of one random blur kernel: a sinc with probability ``sinc_prob``, else one of
    ``KERNEL_TYPES`` weighted by ``kernel_probs``. Build it with ``make_kernel``."""
    size = draw_choice(generator, sizes)
    if draw_uniform(generator, 0.0, 1.0) < sinc_prob:
        return {"type": "sinc", "size": size, "cutoff": draw_uniform(generator, *sinc_cutoff_range(size))}
    kind = draw_choice(generator, KERNEL_TYPES, kernel_probs)
    sigma_x = draw_uniform(generator, *sigma_range)
    sigma_y, theta = sigma_x, 0.0
    if kind in ANISOTROPIC_TYPES:
        sigma_y = draw_uniform(generator, *sigma_range)
        theta = draw_uniform(generator, -math.pi, math.pi)
    beta = 1.0  # plain Gaussians: exp(-q/2) is the generalized form with beta = 1
    if kind.startswith("generalized"):
        beta = draw_beta(generator, betag_range)
    elif kind.startswith("plateau"):
        beta = draw_beta(generator, betap_range)
    return {"type": kind, "size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta, "beta": beta}


def sample_final_sinc(generator: torch.Generator, prob: float, sizes: Sequence[int] = KERNEL_SIZES) -> dict | None:
    """The last stage's sinc filter with probability ``prob`` (None means no filter). Its cutoff
    stays in [pi/3, pi] whatever the size: it mimics ringing, not blur."""
    if draw_uniform(generator, 0.0, 1.0) >= prob:
        return None
    size = draw_choice(generator, sizes)
    return {"type": "sinc", "size": size, "cutoff": draw_uniform(generator, math.pi / 3, math.pi)}


# ----------------------------------------------------------------------------- kernel construction


def _centred_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) coordinates of a size x size kernel, zero at the centre pixel."""
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return torch.meshgrid(axis, axis, indexing="ij")


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """p^T Sigma^-1 p at each kernel pixel p = (x, y), Sigma = R diag(sx^2, sy^2) R^T rotated by theta."""
    y, x = _centred_grid(size)
    cos, sin = math.cos(theta), math.sin(theta)
    inv_x, inv_y = 1.0 / sigma_x**2, 1.0 / sigma_y**2
    a = cos * cos * inv_x + sin * sin * inv_y  # Sigma^-1 = R diag(1/sx^2, 1/sy^2) R^T = [[a, b], [b, c]]
    b = cos * sin * (inv_x - inv_y)
    c = sin * sin * inv_x + cos * cos * inv_y
    return a * x * x + 2 * b * x * y + c * y * y


def bessel_j1(x: torch.Tensor) -> torch.Tensor:
    """J1 to float64 precision via Bessel's integral J1(x) = 1/(2 pi) * integral over a period of
    cos(t - x sin t): the trapezoid rule is exact up to J_(n*points)(x) terms for a periodic
    integrand, negligible for x < 100. (torch.special.bessel_j1 is off by up to 5e-7.)"""
    points = 256
    t = torch.arange(points, dtype=torch.float64, device=x.device) * (2 * math.pi / points)
    return torch.cos(t - x.unsqueeze(-1) * torch.sin(t)).mean(-1)


def circular_lowpass_kernel(cutoff: float, size: int) -> torch.Tensor:
    """The ideal circular low-pass filter (2-D sinc, cutoff in radians, pi = Nyquist) sampled on a
    size x size grid: h(r) = cutoff * J1(cutoff * r) / (2 pi r), whose limit at r = 0 is cutoff^2 / (4 pi)."""
    y, x = _centred_grid(size)
    radius = torch.sqrt(x * x + y * y)
    safe_radius = torch.where(radius > 0, radius, torch.ones_like(radius))  # the centre is set below
    kernel = cutoff * bessel_j1(cutoff * safe_radius) / (2 * math.pi * safe_radius)
    kernel = torch.where(radius > 0, kernel, torch.full_like(kernel, cutoff**2 / (4 * math.pi)))
    return kernel / kernel.sum()


def make_kernel(params: dict) -> torch.Tensor:
    """The float64 [size, size] kernel (summing to 1) described by ``sample_blur_kernel``'s parameters."""
    if params["type"] == "sinc":
        return circular_lowpass_kernel(params["cutoff"], params["size"])
    q = _quadratic_form(params["size"], params["sigma_x"], params["sigma_y"], params["theta"])
    beta = params["beta"]
    if params["type"].startswith("plateau"):
        kernel = 1.0 / (q**beta + 1.0)
    else:  # iso/aniso have beta = 1; generalized ones raise the Mahalanobis term to beta
        kernel = torch.exp(-0.5 * q**beta)
    return kernel / kernel.sum()


def gaussian_kernel_1d(size: int, sigma: float = 0.0) -> torch.Tensor:
    """OpenCV's ``getGaussianKernel`` (float64): sigma <= 0 means 0.3 * ((size - 1) / 2 - 1) + 0.8,
    and for sizes up to 7 OpenCV then uses its fixed binomial-like tables, copied here."""
    fixed = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
             7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]}
    if sigma <= 0 and size in fixed:
        return torch.tensor(fixed[size], dtype=torch.float64)
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(x * x) / (2 * sigma * sigma))
    return kernel / kernel.sum()


# ----------------------------------------------------------------------------- filtering


def reflect_pad(img: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Pad the last two dims like OpenCV's BORDER_REFLECT_101 (torch's 'reflect'), for any pad.

    torch's reflect needs pad < size; the reflected signal is periodic with symmetry points at
    every (size - 1) step, so padding in steps of at most (current size - 1) extends it exactly.
    A 1-px side has no reflection; OpenCV repeats it, and so does 'replicate'."""
    for dim, pad in ((-2, pad_h), (-1, pad_w)):
        while pad > 0:
            length = img.shape[dim]
            step = pad if length == 1 else min(pad, length - 1)
            pads = (0, 0, step, step) if dim == -2 else (step, step, 0, 0)
            img = F.pad(img, pads, mode="replicate" if length == 1 else "reflect")
            pad -= step
    return img


def filter2d(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every channel of img [N, C, H, W] with one odd square kernel, like cv2.filter2D."""
    size = kernel.shape[-1]
    channels = img.shape[1]
    weight = kernel.to(img.device, img.dtype).expand(channels, 1, size, size)
    return F.conv2d(reflect_pad(img, size // 2, size // 2), weight, groups=channels)


def separable_blur(img: torch.Tensor, kernel_1d: torch.Tensor) -> torch.Tensor:
    """Blur the last two dims of ``img`` (any leading shape) with the outer product of ``kernel_1d``
    with itself, as two 1-D passes: exact, and k/2 times fewer multiplies than the 2-D kernel."""
    size = kernel_1d.numel()
    planes = img.reshape(-1, 1, *img.shape[-2:])
    padded = reflect_pad(planes, size // 2, size // 2)
    weight = kernel_1d.to(img.device, img.dtype)
    rows = F.conv2d(padded, weight.view(1, 1, size, 1))
    return F.conv2d(rows, weight.view(1, 1, 1, size)).reshape(img.shape)
