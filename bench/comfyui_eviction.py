"""Does an upscale evict what ComfyUI's model manager holds? Core's UpscaleModelLoader ->
ImageUpscaleWithModel against our RealESRGAN_LoadUpscaleModel -> RealESRGAN_UpscaleImageTiled,
in one real ComfyUI, after an SD1.5 graph (random weights, nothing downloaded) has loaded its
UNet, CLIP and VAE through the manager. Not a test: the answer only means something on a GPU.

    COMFYUI_DIR=... COMFY_PYTHON=... .venv/bin/python bench/comfyui_eviction.py \\
        [--gpu --reserve-vram GB] [--size 512] [--json FILE]

Per side: the SD graph runs (its models load), the manager's list is read from our health
route, then the same graph plus that side's upscale runs (the SD nodes stay cached, so their
models stay referenced) and the list is read again; what left the list was evicted by the
upscale. Core asks the manager for 384 bytes per pixel of a 512 px tile (4.8 GB for an x4
model); ours asks for the engine's estimate of its working set. On a large card, leave a small
card's free memory with --reserve-vram (ComfyUI's own option), e.g. the card's memory less
6 GB: the SD1.5 models (~2.5 GB in fp16) plus ours fit, core's request does not. On a CPU
(the default, --cpu) ComfyUI frees nothing for either side, and the script says so.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import comfyui_node_path as node_path  # beside this script: its setup, graphs and listings

harness = node_path.harness
MODEL = "RealESRGAN_x4plus"
CHECKPOINT = "random_sd15_fp16.safetensors"


def sd_graph() -> dict:
    """Loads the UNet, CLIP and VAE through the manager: a 1-step 64 px txt2img."""
    return {
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "11": {"class_type": "CLIPTextEncode", "inputs": {"text": "a house", "clip": ["10", 1]}},
        "12": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "13": {"class_type": "KSampler", "inputs": {"model": ["10", 0], "positive": ["11", 0], "negative": ["11", 0],
                                                    "latent_image": ["12", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                                                    "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["10", 2]}},
        "15": {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}},
    }


def with_upscale(side: str, image: str, names: dict) -> dict:
    graph = sd_graph()
    graph.update(node_path.graph(side, image, names["core"], names["ours"]))  # nodes "1".. : theirs don't clash
    return graph


def held(server) -> list[str]:
    return server.get("/realesrgan_tiled/health")["host_loaded_models"]


def evicted(before: list[str], after: list[str]) -> list[str]:
    """The SD graph's models that left the list. Our upscalers are left out: one that only the
    previous side's graph referenced is dropped as garbage once that graph's outputs are."""
    sd_models = Counter(name for name in before if not name.startswith("upscaler: "))
    return sorted((sd_models - Counter(after)).elements())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="let ComfyUI use its GPU (default: --cpu)")
    ap.add_argument("--reserve-vram", type=float, help="ComfyUI's --reserve-vram, in GB")
    ap.add_argument("--size", type=int, default=512, help="photo side in px (512)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    cfg = harness.host_config()
    if cfg is None:
        raise SystemExit("set COMFYUI_DIR and COMFY_PYTHON (see tests/comfyui/conftest.py)")
    comfy_dir, comfy_python = cfg
    device_args = () if args.gpu else ("--cpu",)
    if args.reserve_vram is not None:
        device_args += ("--reserve-vram", str(args.reserve_vram))

    tmp = Path(tempfile.mkdtemp(prefix="comfyui_eviction_"))
    base = tmp / "base"
    files = node_path.prepare(base, [MODEL])
    (base / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    built = harness.run([comfy_python, harness.SD15_BUILDER, "--comfy", comfy_dir,
                         "--out", base / "models" / "checkpoints" / CHECKPOINT])
    if built.returncode != 0:
        raise SystemExit(f"building the SD1.5 checkpoint failed:\n{built.stdout[-3000:]}")
    env = harness.make_env(comfy_python, tmp / "env", base / "custom_nodes" / harness.PACKAGE_DIR_NAME)
    server = harness.ComfyServer(comfy_dir, env.python, base, device_args)
    server.start()
    try:
        object_info = server.get("/object_info", timeout=120)
        names = {"core": node_path.core_listing(object_info, files[MODEL]),
                 "ours": node_path.our_listing(object_info, files[MODEL])}
        photo = node_path.photo_png(args.size, args.size)
        results = {}
        for side in ("ours", "core"):
            server.run_prompt(harness.with_unique_prefix(sd_graph()))
            before = held(server)
            image = f"photo_{side}.png"
            (base / "input" / image).write_bytes(photo)
            server.run_prompt(with_upscale(side, image, names), timeout=1800)
            after = held(server)
            results[side] = {"held_before": before, "held_after": after, "evicted": evicted(before, after)}
            print(f"{side}: held {before} -> {after}; evicted: {results[side]['evicted'] or 'nothing'}", flush=True)
        results["device_args"] = list(device_args)
        results["room_asked_bytes_ours"] = server.get("/realesrgan_tiled/health")["last_run"]["room_asked_bytes"]
        results["comfyui"] = node_path.comfy_version(comfy_dir)
    except BaseException:
        print(f"--- ComfyUI log tail ---\n{server.log()[-4000:]}", file=sys.stderr)
        raise
    finally:
        server.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
