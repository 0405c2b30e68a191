"""Side by side in a real ComfyUI: core's UpscaleModelLoader -> ImageUpscaleWithModel against our
RealESRGAN_LoadUpscaleModel -> RealESRGAN_UpscaleImageTiled (tile 0, overlap 0, precision auto),
the same real weights (each bundled model converted to one .safetensors in models/upscale_models,
which both loaders list), the same photo as bench/bench.py. Not a test: figures go into README.

    COMFYUI_DIR=... COMFY_PYTHON=... .venv/bin/python bench/comfyui_node_path.py \\
        [--models RealESRGAN_x4plus realesr-animevideov3-x4] [--rounds 3] \\
        [--size-x4plus 256x192] [--size-compact 768x512] [--json FILE]

One ComfyUI server (``--cpu``, the way the real-host tests start it: tests/comfyui/harness.py,
with our package installed by the Manager's steps) runs every prompt. The sides alternate: per
round, per model, core then ours (ours then core every other round). Every prompt loads a freshly
named copy of the photo, so ComfyUI's cache re-runs LoadImage and everything after it; the model
loaders stay cached, so only each side's first run of a model (round 1) includes loading it. A
prompt's time is ComfyUI's own (its history's execution_start -> execution_success timestamps, ms),
else the wall time around queue-and-wait. Both graphs end in PreviewImage (a PNG in temp/).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load("comfy_harness", ROOT / "tests" / "comfyui" / "harness.py")  # the real-host tests' harness
bench = _load("bench_bench", ROOT / "bench" / "bench.py")  # for real_photo: the same photo as bench.py

X4PLUS, COMPACT = "RealESRGAN_x4plus", "realesr-animevideov3-x4"
SIDES = ("core", "ours")


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 256x192")
    return int(m.group(1)), int(m.group(2))


def size_for(model: str, args) -> tuple[int, int]:
    """(width, height): x4plus-class (RRDB) models get --size-x4plus, the rest --size-compact."""
    return args.size_x4plus if "x4plus" in model.lower() else args.size_compact


# ---------------------------------------------------------------- setup

def convert_model(name: str, path: Path) -> None:
    """A bundled model as a plain .safetensors state dict, which core's spandrel loader reads too."""
    import safetensors.torch

    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import bundled_model_path

    m = load_model(bundled_model_path(name))
    safetensors.torch.save_file({k: v.contiguous() for k, v in m.model.state_dict().items()}, str(path))


def photo_png(width: int, height: int) -> bytes:
    t = bench.real_photo(height, width)[0]  # [H, W, 3] float in [0, 1], made from uint8
    return harness.png_bytes(t.mul(255).round().clamp(0, 255).byte().numpy())


def prepare(base: Path, models: list[str]) -> dict[str, str]:
    """The --base-directory: our package in custom_nodes/, each model as <name>.safetensors."""
    for sub in ("custom_nodes", "input", "output", "temp", "models/upscale_models", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    harness.copy_package(base / "custom_nodes")
    files = {}
    for name in models:
        files[name] = f"{name}.safetensors"
        convert_model(name, base / "models" / "upscale_models" / files[name])
    return files


def comfy_version(comfy_dir: Path) -> str:
    f = comfy_dir / "comfyui_version.py"
    if f.is_file():
        m = re.search(r"""__version__\s*=\s*["']([^"']+)""", f.read_text())
        if m:
            return m.group(1)
    res = subprocess.run(["git", "-C", str(comfy_dir), "describe", "--tags", "--always"], capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def server_threads(health: dict | None, python: Path) -> tuple[int | None, str]:
    """torch's thread count in the server: from the health report's measured CPU backends
    ("... (N threads)") when there are any, else a fresh process of the server's Python."""
    for key in (health or {}).get("cpu_backend_measured") or {}:
        m = re.search(r"\((\d+) threads\)", key)
        if m:
            return int(m.group(1)), "server (health report)"
    try:
        return int(harness.python_eval(python, "import torch; print(torch.get_num_threads())")), "fresh process of the server's python"
    except (RuntimeError, ValueError):
        return None, "unknown"


# ---------------------------------------------------------------- graphs and timing

def graph(side: str, image: str, model_file: str, our_name: str) -> dict:
    if side == "core":
        loader = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_file}}
        upscale = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}}
    else:
        loader = {"class_type": "RealESRGAN_LoadUpscaleModel", "inputs": {"model_name": our_name}}
        upscale = {"class_type": "RealESRGAN_UpscaleImageTiled",
                   "inputs": {"upscale_model": ["2", 0], "image": ["1", 0], "tile_size": 0, "overlap": 0, "precision": "auto"}}
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": loader,
        "3": upscale,
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def history_seconds(entry: dict) -> float | None:
    stamps = {}
    for msg in entry.get("status", {}).get("messages") or []:
        if isinstance(msg, (list, tuple)) and len(msg) == 2 and isinstance(msg[1], dict) and "timestamp" in msg[1]:
            stamps[msg[0]] = msg[1]["timestamp"]
    if "execution_start" in stamps and "execution_success" in stamps:
        return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0
    return None


def executed_nodes(entry: dict) -> list[str]:
    """Node ids that ComfyUI did NOT serve from its cache in this prompt."""
    cached = set()
    for event, data in entry.get("status", {}).get("messages") or []:
        if event == "execution_cached":
            cached |= set(data.get("nodes") or [])
    return sorted({"1", "2", "3", "4"} - cached)


def time_prompt(server, prompt: dict, timeout: float) -> dict:
    t = time.perf_counter()
    entry = server.run_prompt(prompt, timeout=timeout)
    wall = time.perf_counter() - t
    comfy = history_seconds(entry)
    return {"seconds": comfy if comfy is not None else wall, "clock": "comfyui history" if comfy is not None else "wall",
            "wall_seconds": wall, "executed_nodes": executed_nodes(entry)}


def our_listing(object_info: dict, model_file: str) -> str:
    names = harness.combo_options(object_info["RealESRGAN_LoadUpscaleModel"]["input"]["required"]["model_name"])
    if model_file in names:
        return model_file
    tail = [n for n in names if n.replace("\\", "/").split("/")[-1] == model_file]
    if len(tail) == 1:
        return tail[0]
    raise SystemExit(f"our loader does not list {model_file}: {names}")


def core_listing(object_info: dict, model_file: str) -> str:
    names = harness.combo_options(object_info["UpscaleModelLoader"]["input"]["required"]["model_name"])
    if model_file not in names:
        raise SystemExit(f"core's UpscaleModelLoader does not list {model_file}: {names}")
    return model_file


# ---------------------------------------------------------------- report

def summarize(runs: dict[str, dict[str, list]]) -> dict:
    out = {}
    for model, sides in runs.items():
        core = [r["seconds"] for r in sides["core"]]
        ours = [r["seconds"] for r in sides["ours"]]
        out[model] = {
            "core_seconds": core, "ours_seconds": ours,
            "speedup_per_round": [c / o for c, o in zip(core, ours)],
            "core_best": min(core), "ours_best": min(ours),
            "speedup_best": min(core) / min(ours),
        }
    return out


def markdown(summary: dict, sizes: dict, clocks: set) -> str:
    lines = []
    for model, s in summary.items():
        w, h = sizes[model]
        lines += [f"### {model}, {w}x{h} -> {4 * w}x{4 * h}", "",
                  "| round | core (s) | ours (s) | speed-up (core/ours) |", "|---|---:|---:|---:|"]
        for i, (c, o, x) in enumerate(zip(s["core_seconds"], s["ours_seconds"], s["speedup_per_round"]), 1):
            note = " (incl. model load)" if i == 1 else ""
            lines.append(f"| {i}{note} | {c:.3f} | {o:.3f} | {x:.2f}x |")
        lines += [f"| **best** | **{s['core_best']:.3f}** | **{s['ours_best']:.3f}** | **{s['speedup_best']:.2f}x** |", ""]
    lines += ["| model | input | core best (s) | ours best (s) | speed-up best vs best |", "|---|---|---:|---:|---:|"]
    for model, s in summary.items():
        w, h = sizes[model]
        lines.append(f"| {model} | {w}x{h} | {s['core_best']:.3f} | {s['ours_best']:.3f} | {s['speedup_best']:.2f}x |")
    lines += ["", f"Times: {', '.join(sorted(clocks))} (execution_start -> execution_success). Round 1 of each side "
              "includes loading the model (the loaders stay cached afterwards); best = fastest round."]
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=[X4PLUS, COMPACT], help="bundled model names (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-x4plus", type=parse_size, default=(256, 192), metavar="WxH", help="photo for x4plus models (256x192)")
    ap.add_argument("--size-compact", type=parse_size, default=(768, 512), metavar="WxH", help="photo for the others (768x512)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per prompt")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")

    cfg = harness.host_config()
    if cfg is None:
        raise SystemExit("set COMFYUI_DIR and COMFY_PYTHON (see tests/comfyui/conftest.py)")
    comfy_dir, comfy_python = cfg
    from realesrgan_tiled.loading.bundled import BUNDLED

    unknown = [m for m in args.models if m not in BUNDLED]
    if unknown:
        raise SystemExit(f"not bundled: {unknown}; choose from {list(BUNDLED)}")
    sizes = {m: size_for(m, args) for m in args.models}

    tmp = Path(tempfile.mkdtemp(prefix="comfyui_node_path_"))
    server = None
    try:
        base = tmp / "base"
        files = prepare(base, args.models)
        env = harness.make_env(comfy_python, tmp / "env", base / "custom_nodes" / harness.PACKAGE_DIR_NAME)
        failed = [(n, r) for n, r, _ in env.steps if r.returncode != 0]
        if failed:
            raise SystemExit("install steps failed:\n" + "\n".join(f"{n}:\n{r.stdout[-2000:]}" for n, r in failed))
        server = harness.ComfyServer(comfy_dir, env.python, base)
        server.start()
        object_info = server.get("/object_info", timeout=120)
        names = {m: {"core": core_listing(object_info, files[m]), "ours": our_listing(object_info, files[m])} for m in args.models}
        photos = {m: photo_png(*sizes[m]) for m in args.models}

        runs = {m: {s: [] for s in SIDES} for m in args.models}
        backends = {}
        clocks = set()
        for rnd in range(1, args.rounds + 1):
            order = SIDES if rnd % 2 == 1 else SIDES[::-1]
            for model in args.models:
                for side in order:
                    image = f"photo_{rnd}_{model}_{side}.png"  # a new name: LoadImage and all after it re-run
                    (base / "input" / image).write_bytes(photos[model])
                    r = time_prompt(server, graph(side, image, names[model]["core"], names[model]["ours"]), args.timeout)
                    r["round"] = rnd
                    runs[model][side].append(r)
                    clocks.add(r["clock"])
                    if side == "ours":
                        backends[model] = (server.get("/realesrgan_tiled/health") or {}).get("last_run")
                    print(f"round {rnd} {model:<26} {side:<4} {r['seconds']:8.3f} s  (wall {r['wall_seconds']:.3f} s, "
                          f"executed nodes {','.join(r['executed_nodes'])})", flush=True)

        health = server.get("/realesrgan_tiled/health")
        threads, threads_from = server_threads(health, env.python)
    except BaseException:
        if server is not None:
            print(f"--- ComfyUI log tail ---\n{server.log()[-4000:]}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    from realesrgan_tiled.runtimes.backend import cpu_name

    summary = summarize(runs)
    machine = {"platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
               "python": platform.python_version(), "server_torch_threads": threads, "server_torch_threads_from": threads_from}
    version = comfy_version(comfy_dir)
    print()
    print(f"ComfyUI {version} (--cpu), realesrgan_tiled {(health.get('versions') or {}).get('realesrgan_tiled')}, "
          f"torch {(health.get('versions') or {}).get('torch')}")
    print(f"machine: {machine['platform']}, {machine['cpu']}, {machine['cpu_count']} CPUs, "
          f"server torch threads {threads if threads is not None else '?'} ({threads_from})")
    print()
    print(markdown(summary, sizes, clocks))
    print()
    for model, last in backends.items():
        last = last or {}
        print(f"ours, {model}: backend {last.get('backend', '?')}, device {last.get('device', '?')}, "
              f"precision {last.get('precision', '?')}, tiles {last.get('tiles', '?')}, tile_size {last.get('tile_size', '?')}")
    print(f"health last_run: {json.dumps(health.get('last_run'))}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "comfyui": version, "machine": machine, "rounds": args.rounds,
            "sizes": {m: f"{w}x{h}" for m, (w, h) in sizes.items()},
            "graphs": {"core": "LoadImage -> UpscaleModelLoader -> ImageUpscaleWithModel -> PreviewImage",
                       "ours": "LoadImage -> RealESRGAN_LoadUpscaleModel -> RealESRGAN_UpscaleImageTiled"
                               "(tile_size=0, overlap=0, precision=auto) -> PreviewImage"},
            "note": "round 1 of each side includes model loading; times from ComfyUI's history timestamps",
            "results": summary, "runs": runs, "ours_last_run_per_model": backends,
            "health_last_run": health.get("last_run"), "health_versions": health.get("versions"),
        }, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
