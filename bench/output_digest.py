"""Digest of the engine's outputs on the real bundled weights and a real photo, for
before/after comparisons of refactors (outputs must stay bit-identical).

    .venv/bin/python bench/output_digest.py OUT_DIR      # writes OUT_DIR/<case>.npy, prints sha256s
    .venv/bin/python bench/output_digest.py OUT_DIR --compare OTHER_DIR

The photo is scikit-image's astronaut, 288x320 (large enough that the CPU window paths of both
networks run), once as one tile and once in 128 px tiles.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name: (bundled model, tile size or None for auto)
    "x4plus-whole": ("RealESRGAN_x4plus", None),
    "anime6b-whole": ("RealESRGAN_x4plus_anime_6B", None),
    "anime6b-tiles128": ("RealESRGAN_x4plus_anime_6B", 128),
    "animevideov3-whole": ("realesr-animevideov3-x4", None),
    "animevideov3-tiles128": ("realesr-animevideov3-x4", 128),
}


def photo() -> torch.Tensor:
    import skimage.data

    arr = skimage.data.astronaut()[100:388, 96:416]
    return torch.from_numpy(np.ascontiguousarray(arr)).float().div(255).unsqueeze(0)


def run_case(model_name: str, tile: int | None) -> np.ndarray:
    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import bundled_model_path

    model = load_model(bundled_model_path(model_name))
    try:  # the engine's entry point after the architecture refactor
        from realesrgan_tiled.engine import Choices, upscale

        out = upscale(photo(), model, Choices(tile_size=tile)).images
    except ImportError:
        from realesrgan_tiled.engine import upscale_images

        out = upscale_images(model, photo(), tile_size=tile)
    return out.numpy()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--backend", default="torch",
                        help="torch (default: our torch plans, comparable with trees from before the ncnn backend) or ncnn")
    args = parser.parse_args()
    os.environ["REALESRGAN_TILED_BACKEND"] = args.backend  # trees without backends ignore it
    args.out_dir.mkdir(parents=True, exist_ok=True)
    same = True
    for name, (model_name, tile) in CASES.items():
        out = run_case(model_name, tile)
        np.save(args.out_dir / f"{name}.npy", out)
        line = f"{name:24s} {out.shape} sha256 {hashlib.sha256(out.tobytes()).hexdigest()[:16]}"
        if args.compare is not None:
            other = np.load(args.compare / f"{name}.npy")
            identical = other.shape == out.shape and np.array_equal(other, out)
            same &= identical
            diff = float(np.abs(other - out).max()) if other.shape == out.shape else float("nan")
            line += f"  {'bit-identical' if identical else 'DIFFERENT'} (max abs diff {diff:.3g})"
        print(line, flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
