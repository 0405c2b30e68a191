"""Exact-size resampling of ComfyUI-layout images ([B, H, W, C] float, 0..1)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputImageError

RESAMPLE_METHODS = ("lanczos", "bicubic", "area", "bilinear", "nearest-exact")


def resize_images(images: torch.Tensor, size: tuple[int, int], method: str = "lanczos") -> torch.Tensor:
    """Resize every image of the batch to ``size`` = (height, width).

    Lanczos runs through PIL on float32 planes (no 8-bit rounding); bicubic and bilinear use
    torch with antialiasing, so downscales do not alias.
    """
    if method not in RESAMPLE_METHODS:
        raise InputImageError(f"resample method {method!r} is not one of {', '.join(RESAMPLE_METHODS)}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise InputImageError(f"cannot resize to {width}x{height}: both sides must be at least 1 px")
    if tuple(images.shape[1:3]) == (height, width):
        return images
    if method == "lanczos":
        return torch.stack([_lanczos(img, height, width) for img in images]).to(images.dtype)
    x = images.movedim(-1, 1).float()
    if method in ("bicubic", "bilinear"):
        y = F.interpolate(x, size=(height, width), mode=method, align_corners=False, antialias=True)
    else:
        y = F.interpolate(x, size=(height, width), mode=method)
    return y.clamp_(0, 1).movedim(1, -1).to(images.dtype)


def _lanczos(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    planes = []
    for c in range(image.shape[-1]):
        plane = Image.fromarray(image[..., c].float().cpu().numpy().astype(np.float32), mode="F")
        planes.append(np.asarray(plane.resize((width, height), Image.Resampling.LANCZOS)))
    return torch.from_numpy(np.stack(planes, -1)).clamp_(0, 1)
