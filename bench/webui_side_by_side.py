"""Side by side in a real AUTOMATIC1111 (or Forge): the host's built-in "R-ESRGAN 4x+" against
our "RealESRGAN_x4plus (tiled)", the same real x4plus weights, the same photo, through
POST /sdapi/v1/extra-single-image. Not a test: figures go into README.

    A1111_DIR=... A1111_PYTHON=... .venv/bin/python bench/webui_side_by_side.py [--host a1111|forge] [--size 512]

Each row runs in a freshly started server, so the server's peak RSS (VmHWM) is that row's.
Fidelity is PSNR against one whole-image pass of the same network (our engine, fp32, untiled),
in 8 bits as the API returns it. The built-in runs with the host's defaults (tile 192, overlap
8); ours with its automatic tile size, and with tile 192 to compare the blending at equal tiles.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("webui_harness", ROOT / "tests" / "sdwebui" / "harness.py")
harness = sys.modules["webui_harness"] = importlib.util.module_from_spec(_spec)  # the real-host tests' harness
_spec.loader.exec_module(harness)

BUILT_IN, OURS = "R-ESRGAN 4x+", "RealESRGAN_x4plus (tiled)"


def photo(size: int) -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[:size, :size, :3])


def whole_image_pass(image: np.ndarray) -> np.ndarray:
    from realesrgan_tiled.engine import Choices, Host, upscale
    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import bundled_model_path

    pixels = torch.from_numpy(image.astype(np.float32) / 255).unsqueeze(0)
    model = load_model(bundled_model_path("RealESRGAN_x4plus"))
    out = upscale(pixels, model, Choices(precision="fp32", tile_size=8192), Host(device="cpu")).images[0]
    return np.rint(out.clamp(0, 1).numpy().astype(np.float64) * 255).astype(np.uint8)


def prepare(host: str, where: Path):
    webui_dir, python = harness.host_config(host)
    data = where / "data"
    extension = harness.clone_extension(data / "extensions")
    models = data / "models" / "RealESRGAN"
    models.mkdir(parents=True)
    # the built-in finds it here and downloads nothing (legacy format: A1111's torch.load accepts it)
    torch.save(harness.real_state_dict("RealESRGAN_x4plus"), str(models / "RealESRGAN_x4plus.pth"), _use_new_zipfile_serialization=False)
    env = harness.make_env(python, where, webui_dir, data, extension)
    if env.installer.returncode != 0:
        raise SystemExit(f"installer failed:\n{env.installer.stdout}")
    return webui_dir, env.python, data


def row(host, webui_dir, python, data, upscaler, image, reference, options) -> dict:
    # Forge halves the built-in's model unless --no-half, on the CPU too, where fp16 convs are
    # slow (a run at its defaults passed 600 s here): both sides in fp32, as on A1111
    flags = harness.HOSTS[host][2] + (["--no-half"] if host == "forge" else [])
    server = harness.WebUIServer(webui_dir, python, data, flags)
    server.start()
    try:
        if options:
            server.set_options(**options)
        idle = server.peak_rss_bytes()
        t = time.perf_counter()
        out, _ = server.extras(image, upscaler, 4)
        seconds = time.perf_counter() - t
        peak = server.peak_rss_bytes()
        if options:
            server.set_options(**{k: 0 for k in options})
    finally:
        server.stop()
    return {"upscaler": upscaler, "options": options, "seconds": round(seconds, 2),
            "psnr_vs_whole_db": round(harness.psnr(out, reference), 2), "max_abs_diff": int(np.abs(out.astype(int) - reference).max()),
            "peak_rss_gib": round(peak / 2**30, 2), "rss_before_gib": round(idle / 2**30, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", choices=list(harness.HOSTS), default="a1111")
    ap.add_argument("--size", type=int, default=512, help="side of the astronaut crop (input px)")
    args = ap.parse_args()
    if harness.host_config(args.host) is None:
        raise SystemExit(f"set {harness.HOSTS[args.host][0]} and {harness.HOSTS[args.host][1]}")
    image = photo(args.size)
    reference = whole_image_pass(image)
    rows = []
    with tempfile.TemporaryDirectory(prefix="webui_bench_") as tmp:
        webui_dir, python, data = prepare(args.host, Path(tmp))
        for upscaler, options in ((BUILT_IN, {}), (OURS, {}), (OURS, {"realesrgan_tiled_tile_size": 192})):
            rows.append(row(args.host, webui_dir, python, data, upscaler, image, reference, options))
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"host": args.host, "input": f"astronaut {args.size}x{args.size}, x4", "threads": torch.get_num_threads(),
                      "machine": platform.processor() or platform.machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
