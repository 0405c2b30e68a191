"""Held-out evaluation: the same degraded inputs for every model compared, upscaled with the same
tiled engine users run, scored against the original photos."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import Choices, Host, upscale
from .data import DataError, read_rgb

# what each selection metric means: (report key, higher is better)
SELECTION = {"psnr_y": True, "perceptual": False}


@dataclass
class HeldOut:
    name: str
    hr: torch.Tensor  # [3, H, W], H and W multiples of the scale
    lr: torch.Tensor  # [3, H / scale, W / scale]


def held_out_set(files: list[Path], degrade, scale: int, crop: int | None, seed: int,
                 lq_files: dict[str, Path] | None = None) -> list[HeldOut]:
    """Each held-out image (centre-cropped to ``crop`` px a side when larger) and its LR input:
    degraded with a fixed per-image seed, so every evaluation of every model sees the same
    inputs; or, in paired mode, the user's own LR image cropped to match."""
    items = []
    for index, path in enumerate(files):
        hr = read_rgb(path)
        top, left, h, w = _crop_box(hr.shape[-2:], crop, scale)
        if lq_files is not None:
            if path.stem not in lq_files:
                raise DataError(f"--lq has no image named {path.stem}.* for the held-out {path.name}")
            lr = read_rgb(lq_files[path.stem])[:, top // scale : (top + h) // scale, left // scale : (left + w) // scale]
        else:
            generator = torch.Generator().manual_seed(seed * 1000003 + index)
            lr = degrade(hr[None, :, top : top + h, left : left + w], generator)[0].cpu()
        items.append(HeldOut(path.name, hr[:, top : top + h, left : left + w], lr))
    return items


def _crop_box(hw, crop: int | None, scale: int) -> tuple[int, int, int, int]:
    h, w = (min(side, crop or side) // scale * scale for side in hw)
    top, left = (hw[0] - h) // 2 // scale * scale, (hw[1] - w) // 2 // scale * scale
    return top, left, h, w


def evaluate(model, items: list[HeldOut], device: str | torch.device, metrics) -> dict:
    """Per-image and mean metrics of ``model`` (a descriptor) on the held-out set; ``metrics``
    maps a report key to ``fn(output_hwc, target_hwc, scale) -> float``."""
    per_image = {}
    for item in items:
        images = item.lr.permute(1, 2, 0)[None]
        # the model stays on the device: it is the EMA the training steps keep updating there
        out = upscale(images, model, Choices(), Host(device=device, offload_device=device)).images[0]
        target = item.hr.permute(1, 2, 0)
        per_image[item.name] = {key: fn(out, target, int(model.scale)) for key, fn in metrics.items()}
    mean = {key: sum(row[key] for row in per_image.values()) / len(per_image) for key in metrics}
    return {"per_image": per_image, "mean": mean}


def better(candidate: float, reference: float, key: str) -> bool:
    return candidate > reference if SELECTION[key] else candidate < reference
