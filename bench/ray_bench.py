"""``upscale --ray local`` against the local CLI on a folder of real photos, side by side in one run.

    .venv/bin/python bench/ray_bench.py                       # 200 photos of 96x128, animevideov3-x2, ncnn
    .venv/bin/python bench/ray_bench.py --photos 50 --size 192x256 --rounds 1

Photos: crops of scikit-image's real photos at random places (PNG). Each round, in this one
process: the local CLI (``cli.main`` without --ray; imports warmed by a first call), then Ray
with 1 actor x 2 threads and 2 actors x 1 thread on a local cluster started once (its start-up
is timed on its own). The Ray time runs from the dataset's start to its last row: actor start,
model load, read, upscale, write. "First output" is the time to the first row back. Outputs of
every run are compared with the local CLI's (equal pixels). Figures: the best of ``--rounds``.
Not a test: they go into README.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
               "camera", "brick", "grass", "gravel", "page")


def make_photos(folder: Path, count: int, h: int, w: int, seed: int = 0) -> None:
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = []
    for name in PHOTO_NAMES:
        arr = getattr(skimage.data, name)()
        arr = np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]
        if arr.shape[0] >= h and arr.shape[1] >= w:
            sources.append(arr)
    for i in range(count):
        arr = sources[i % len(sources)]
        top, left = rng.integers(0, arr.shape[0] - h + 1), rng.integers(0, arr.shape[1] - w + 1)
        Image.fromarray(np.ascontiguousarray(arr[top:top + h, left:left + w])).save(folder / f"photo_{i:04d}.png")


def local_cli(src: Path, out: Path, flags: list[str]) -> float:
    from realesrgan_tiled.cli import main

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["upscale", str(src), "-o", str(out), *flags, "--quiet"]) == 0
    return time.perf_counter() - start


def on_ray(src: Path, out: Path, model, choices, cluster, cpus_per_actor: int):
    from realesrgan_tiled.media.images import collect_inputs
    from realesrgan_tiled.on_ray.files import upscale_files

    shutil.rmtree(out, ignore_errors=True)
    summary = upscale_files(collect_inputs([str(src)]), str(out), model, choices, cluster, "cpu", cpus_per_actor)
    assert summary.count("done") == len(summary.rows), [r["error"] for r in summary.rows if r["error"]][:3]
    return summary


def same_outputs(a: Path, b: Path) -> bool:
    from PIL import Image

    names = sorted(p.name for p in a.glob("*.png"))
    return names == sorted(p.name for p in b.glob("*.png")) and all(
        np.array_equal(np.asarray(Image.open(a / n)), np.asarray(Image.open(b / n))) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--size", default="96x128", help="HxW of each photo")
    parser.add_argument("--model", default="realesr-animevideov3-x2")
    parser.add_argument("--backend", default="ncnn")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    h, w = map(int, args.size.split("x"))

    import functools
    import subprocess

    from realesrgan_tiled.engine import Choices
    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import model_path
    from realesrgan_tiled.on_ray.cluster import Cluster

    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":")[-1].strip()
    flags = ["--model", args.model, "--backend", args.backend, "--device", "cpu"]
    model = functools.partial(load_model, model_path(args.model))
    choices = Choices(backend=args.backend)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "in"
        src.mkdir()
        make_photos(src, args.photos, h, w)
        local_cli(src, tmp / "warm", flags[:4] + ["--device", "cpu"])  # imports, the backend cache
        start = time.perf_counter()
        with Cluster("local", quiet=True) as cluster:
            startup = time.perf_counter() - start
            best: dict[str, list] = {"local": [], "ray1": [], "ray2": []}
            for _ in range(args.rounds):
                best["local"].append(local_cli(src, tmp / "local", flags))
                for key, per in (("ray1", 2), ("ray2", 1)):
                    summary = on_ray(src, tmp / key, model, choices, cluster, per)
                    best[key].append((summary.seconds, summary.first_output, summary.pool.describe()))
                    assert same_outputs(tmp / "local", tmp / key), f"{key}: outputs differ from the local CLI's"
    local = min(best["local"])
    print(f"CPU: {cpu}; {args.photos} photos of {w}x{h} -> x2, {args.model} on {args.backend}; best of {args.rounds}")
    print(f"Ray local start-up (ray.init): {startup:.1f} s")
    print(f"local CLI loop:        {local:6.1f} s  {args.photos / local:5.2f} images/s")
    for key in ("ray1", "ray2"):
        seconds, first, pool = min(best[key])
        print(f"--ray local, {pool:24s} {seconds:6.1f} s  {args.photos / seconds:5.2f} images/s  "
              f"{seconds / local:4.2f}x the local loop; first output after {first:.1f} s")
    print("outputs equal to the local CLI's: yes")


if __name__ == "__main__":
    main()
