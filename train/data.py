"""Training images: which files, which are held out, and random HR (and LR) patches from them.

Images are read with the CLI's reader (16-bit PNG, CMYK, palette and EXIF rotation handled), so
a photo that upscales also trains. What cannot train is skipped and reported by name: files that
do not decode, images smaller than a patch, and images with real transparency (the colour under
transparent pixels is undefined).
"""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputImageError, RealESRGANTiledError
from ..media.images import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)

CACHE_BYTES = 1 << 30  # decoded training images kept in memory (uint8), least recently used dropped first
HELD_OUT_SHARE = 0.2  # without --val: this share of whole images (at least one) is held out


class DataError(RealESRGANTiledError):
    """The data folders cannot train a model (empty, too few usable images, mismatched pairs)."""


@dataclass(frozen=True)
class Split:
    train: list[Path]
    held_out: list[Path]
    skipped: dict[str, str]  # file -> why


def image_files(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_rgb(path: Path) -> torch.Tensor:
    """[3, H, W] uint8-valued float 0..1; raises InputImageError with the reason."""
    pixels = read_image(path).pixels[0]  # [H, W, C]
    if pixels.shape[-1] == 4:
        if bool((pixels[..., 3] < 1).any()):
            raise InputImageError("has transparent pixels (the colour under them is undefined)")
        pixels = pixels[..., :3]
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(-1, -1, 3)
    return pixels.permute(2, 0, 1).contiguous()


def usable(files: list[Path], min_side: int) -> tuple[list[Path], dict[str, str]]:
    """The files that decode and are at least ``min_side`` px on both sides, and why the others are not."""
    good, skipped = [], {}
    for path in files:
        try:
            h, w = read_rgb(path).shape[-2:]
        except InputImageError as e:
            skipped[str(path)] = str(e)
            continue
        except Exception as e:  # a decoder's own error: the file is damaged
            skipped[str(path)] = f"cannot be read ({type(e).__name__}: {e})"
            continue
        if min(h, w) < min_side:
            skipped[str(path)] = f"{w}x{h} px is smaller than a {min_side} px patch"
            continue
        good.append(path)
    for name, why in skipped.items():
        log.warning("skipping %s: %s", name, why)
    return good, skipped


def split(data: Path, val: Path | None, min_side: int, seed: int) -> Split:
    """Training and held-out images. Without ``val``, whole images (never patches of training
    images) are held out, chosen by ``seed``."""
    train, skipped = usable(image_files(data, "--data"), min_side)
    if val is not None:
        held, more = usable(image_files(val, "--val"), 1)
        skipped.update(more)
        if not held:
            raise DataError(f"no usable image in --val {val}")
    else:
        if len(train) < 2:
            raise DataError(f"--data {data} has {len(train)} usable image(s); holding whole images out for the "
                            "report needs at least 2 (or give --val)")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        count = max(1, round(len(train) * HELD_OUT_SHARE))
        held = sorted(train[i] for i in order[:count])
        train = [p for p in train if p not in held]
    if not train:
        raise DataError(f"--data {data} has no usable training image")
    return Split(train, held, skipped)


def fingerprint(files: list[Path]) -> str:
    """sha256 over the training files' names and bytes: the same data gives the same print."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class ImageCache:
    """Decoded images as uint8, least recently used dropped once over ``budget`` bytes."""

    def __init__(self, budget: int = CACHE_BYTES):
        self.budget, self.images, self.bytes = budget, OrderedDict(), 0

    def get(self, path: Path) -> torch.Tensor:
        if path in self.images:
            self.images.move_to_end(path)
            return self.images[path]
        image = (read_rgb(path) * 255).round().to(torch.uint8)
        self.images[path] = image
        self.bytes += image.numel()
        while self.bytes > self.budget and len(self.images) > 1:
            _, dropped = self.images.popitem(last=False)
            self.bytes -= dropped.numel()
        return image


class PatchSampler:
    """Random HR patches (``patch`` px, horizontally flipped half the time) of the training
    images; with ``lq_dir``, the user's matching LR patches too (paired mode)."""

    def __init__(self, files: list[Path], patch: int, scale: int, lq_dir: Path | None = None):
        self.files, self.patch, self.scale, self.cache = files, patch, scale, ImageCache()
        self.lq = _pair_files(files, lq_dir, scale) if lq_dir is not None else None

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([size, 3, patch, patch] HR, matching LR or None), float 0..1."""
        hr, lr = [], []
        for _ in range(size):
            pick = int(torch.randint(len(self.files), (1,), generator=generator))
            hr_patch, lr_patch = self._patch(pick, generator)
            hr.append(hr_patch)
            lr.append(lr_patch)
        return torch.stack(hr), (torch.stack(lr) if self.lq is not None else None)

    def _patch(self, pick: int, generator: torch.Generator):
        image = self.cache.get(self.files[pick])
        s, p = self.scale, self.patch
        # the crop starts on the LR grid so that paired LR patches line up exactly
        top = int(torch.randint(image.shape[1] // s - p // s + 1, (1,), generator=generator)) * s
        left = int(torch.randint(image.shape[2] // s - p // s + 1, (1,), generator=generator)) * s
        flip = bool(torch.rand((), generator=generator) < 0.5)
        hr = image[:, top : top + p, left : left + p]
        lr = None
        if self.lq is not None:
            lq = self.cache.get(self.lq[pick])
            lr = lq[:, top // s : (top + p) // s, left // s : (left + p) // s]
        if flip:
            hr, lr = hr.flip(-1), (lr.flip(-1) if lr is not None else None)
        return hr.float() / 255, (lr.float() / 255 if lr is not None else None)


def _pair_files(files: list[Path], lq_dir: Path, scale: int) -> list[Path]:
    """Each HR file's LR twin in ``lq_dir`` (same stem, any image suffix), 1/scale its size."""
    by_stem = {p.stem: p for p in image_files(lq_dir, "--lq")}
    pairs = []
    for hr in files:
        lq = by_stem.get(hr.stem)
        if lq is None:
            raise DataError(f"--lq {lq_dir} has no image named {hr.stem}.* for {hr.name}")
        hr_hw, lq_hw = read_rgb(hr).shape[-2:], read_rgb(lq).shape[-2:]
        if tuple(lq_hw) != (hr_hw[0] // scale, hr_hw[1] // scale):
            raise DataError(f"{lq} is {lq_hw[1]}x{lq_hw[0]} px; {hr.name} at x{scale} needs "
                            f"{hr_hw[1] // scale}x{hr_hw[0] // scale}")
        pairs.append(lq)
    return pairs


class PairPool:
    """Real-ESRGAN's training pair pool: each new batch is swapped, pair by pair, with random
    pairs kept from earlier batches, so a batch mixes degradations of several images."""

    def __init__(self, size: int):
        self.size, self.hr, self.lr = size, None, None

    def mix(self, hr: torch.Tensor, lr: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hr is None:
            self.hr, self.lr = hr.clone(), lr.clone()
            return hr, lr
        if self.hr.shape[0] < self.size:
            self.hr, self.lr = torch.cat([self.hr, hr]), torch.cat([self.lr, lr])
            return hr, lr
        order = torch.randperm(self.hr.shape[0], generator=generator)[: hr.shape[0]]
        out_hr, out_lr = self.hr[order].clone(), self.lr[order].clone()
        self.hr[order], self.lr[order] = hr, lr
        return out_hr, out_lr
