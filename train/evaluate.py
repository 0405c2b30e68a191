"""Held-out evaluation: the same degraded inputs for every model compared, upscaled with the same
tiled engine users run, scored against the targets the training aims at.

The gate (what decides "better than the base") measures what the run optimises: PSNR-Y for the
L1 recipe, ST-LPIPS for the perceptual and GAN recipes, each against the held-out photos as the
training targets are made (USM-sharpened when ``--sharpen-gt on``, plain otherwise). Scores
against the plain photos are kept beside sharpened ones, so a report never hides what a
sharpened target costs in fidelity."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import Choices, Host, upscale
from .data import DataError, read_rgb

# what each selection metric means: (report key, higher is better)
SELECTION = {"psnr_y": True, "perceptual": False}
GATE_METRIC = {"l1": "psnr_y", "perceptual": "perceptual", "gan": "perceptual"}  # per --loss
TARGETS = {True: "usm-sharpened", False: "plain"}  # per --sharpen-gt


@dataclass
class HeldOut:
    name: str
    hr: torch.Tensor  # [3, H, W], H and W multiples of the scale
    lr: torch.Tensor  # [3, H / scale, W / scale]
    target: torch.Tensor  # what the gate scores against: hr itself, or hr USM-sharpened as the training targets


def held_out_set(files: list[Path], degrade, scale: int, crop: int | None, seed: int,
                 lq_files: dict[str, Path] | None = None, sharpen: bool = False) -> list[HeldOut]:
    """Each held-out image (centre-cropped to ``crop`` px a side when larger) and its LR input:
    degraded with a fixed per-image seed, so every evaluation of every model sees the same
    inputs; or, in paired mode, the user's own LR image cropped to match. ``sharpen``: the gate's
    target is the image USM-sharpened exactly as the training targets are."""
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
        hr = hr[:, top : top + h, left : left + w]
        items.append(HeldOut(path.name, hr, lr, _sharpened(hr) if sharpen else hr))
    return items


def _crop_box(hw, crop: int | None, scale: int) -> tuple[int, int, int, int]:
    h, w = (min(side, crop or side) // scale * scale for side in hw)
    top, left = (hw[0] - h) // 2 // scale * scale, (hw[1] - w) // 2 // scale * scale
    return top, left, h, w


def _sharpened(hr: torch.Tensor) -> torch.Tensor:
    from .degradation import usm_sharp

    return usm_sharp(hr[None])[0]


def evaluate(model, items: list[HeldOut], device: str | torch.device, metrics) -> dict:
    """Per-image and mean metrics of ``model`` (a descriptor) on the held-out set, against each
    item's gate target; with sharpened targets, also ``against_plain`` (the same outputs scored
    against the photos themselves). ``metrics`` maps a report key to
    ``fn(output_hwc, target_hwc, scale) -> float``."""
    per_image, per_image_plain = {}, {}
    for item in items:
        images = item.lr.permute(1, 2, 0)[None]
        # the model stays on the device: it is the EMA the training steps keep updating there
        out = upscale(images, model, Choices(), Host(device=device, offload_device=device)).images[0]
        scale = int(model.scale)
        per_image[item.name] = _scores(out, item.target, scale, metrics)
        if item.target is not item.hr:
            per_image_plain[item.name] = _scores(out, item.hr, scale, metrics)
    result = _with_mean(per_image, metrics)
    if per_image_plain:
        result["against_plain"] = _with_mean(per_image_plain, metrics)
    return result


def _scores(out: torch.Tensor, target: torch.Tensor, scale: int, metrics) -> dict[str, float]:
    target = target.permute(1, 2, 0)
    return {key: fn(out, target, scale) for key, fn in metrics.items()}


def _with_mean(per_image: dict, metrics) -> dict:
    mean = {key: sum(row[key] for row in per_image.values()) / len(per_image) for key in metrics}
    return {"per_image": per_image, "mean": mean}


def better(candidate: float, reference: float, key: str) -> bool:
    return candidate > reference if SELECTION[key] else candidate < reference
