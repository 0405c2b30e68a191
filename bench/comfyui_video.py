"""Our Upscale Video node against core's path on the same clip, in a real ComfyUI: peak RSS of the
ComfyUI process and the prompt's time, at two clip lengths. Not a test: figures go into README.

    COMFYUI_DIR=... COMFY_PYTHON=... .venv/bin/python bench/comfyui_video.py [--frames 100 400]

- core: LoadVideo -> GetVideoComponents -> ImageUpscaleWithModel -> CreateVideo (fps, audio) -> SaveVideo
- ours: LoadVideo -> RealESRGAN_UpscaleVideo (tile 0, overlap 0, auto, libx264, crf -1) -> SaveVideo

Both take realesr-animevideov3-x2 from our loader (bundled weights). Each (side, length) runs in a
fresh server (``--cpu``, our package installed by the Manager's steps, as the real-host tests
start it), so its VmHWM is that one prompt's peak. The clips loop assets/sample.mp4's frames
(a pan across a real photo, 192x144) with a tone as audio.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bundled/realesr-animevideov3-x2"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load("comfy_harness", ROOT / "tests" / "comfyui" / "harness.py")


def make_clip(path: Path, frames: int) -> None:
    with av.open(str(ROOT / "assets" / "sample.mp4")) as src:
        pictures = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=24, options={"crf": "20"})
        video.height, video.width = pictures[0].shape[:2]
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=48000, layout="mono")
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pictures[i % len(pictures)], format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(frames * 2000) / 48000)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        out.mux(sound.encode(frame))
        out.mux(sound.encode(None))


def graph(side: str, clip: str) -> dict:
    nodes = {"1": {"class_type": "LoadVideo", "inputs": {"file": clip}},
             "2": {"class_type": "RealESRGAN_LoadUpscaleModel", "inputs": {"model_name": MODEL}}}
    if side == "ours":
        nodes["3"] = {"class_type": "RealESRGAN_UpscaleVideo",
                      "inputs": {"upscale_model": ["2", 0], "video": ["1", 0], "tile_size": 0, "overlap": 0,
                                 "precision": "auto", "codec": "libx264", "crf": -1}}
    else:
        nodes["5"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}}
        nodes["6"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["5", 0]}}
        nodes["3"] = {"class_type": "CreateVideo", "inputs": {"images": ["6", 0], "fps": ["5", 2], "audio": ["5", 1]}}
    nodes["4"] = {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": f"video/{side}",
                                                        "format": "auto", "codec": "auto"}}
    return nodes


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def run_one(comfy_dir: Path, python: Path, base: Path, side: str, clip: str) -> dict:
    server = harness.ComfyServer(comfy_dir, python, base)
    server.start()
    try:
        idle = peak_rss_mib(server.proc.pid)
        start = time.monotonic()
        entry = server.run_prompt(graph(side, clip), timeout=3600)
        seconds = time.monotonic() - start
        (saved,) = entry["outputs"]["4"]["images"]
        with av.open(str(base / "output" / saved["subfolder"] / saved["filename"])) as c:
            frames = sum(1 for _ in c.decode(video=0))
        return {"side": side, "clip": clip, "peak_rss_mib": peak_rss_mib(server.proc.pid),
                "idle_peak_rss_mib": idle, "seconds": seconds, "frames_out": frames}
    except BaseException:
        print(server.log()[-4000:], file=sys.stderr)
        raise
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 400])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cfg = harness.host_config()
    if cfg is None:
        raise SystemExit("set COMFYUI_DIR and COMFY_PYTHON")
    comfy_dir, comfy_python = cfg
    tmp = Path(tempfile.mkdtemp(prefix="comfyui_video_"))
    try:
        base = tmp / "base"
        for sub in ("custom_nodes", "input", "output", "user"):
            (base / sub).mkdir(parents=True)
        harness.copy_package(base / "custom_nodes")
        env = harness.make_env(comfy_python, tmp / "env", base / "custom_nodes" / harness.PACKAGE_DIR_NAME)
        results = []
        for n in args.frames:
            clip = f"clip_{n}.mp4"
            make_clip(base / "input" / clip, n)
            for side in ("core", "ours"):
                r = run_one(comfy_dir, env.python, base, side, clip)
                results.append(r)
                print(f"{n:5d} frames {side:<4} peak RSS {r['peak_rss_mib']:8.1f} MiB (idle {r['idle_peak_rss_mib']:.1f})"
                      f"  {r['seconds']:7.1f} s  {r['frames_out']} frames out", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from realesrgan_tiled.runtimes.backend import cpu_name

    print(f"machine: {cpu_name()}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
