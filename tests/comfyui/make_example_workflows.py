"""Regenerate example_workflows/*.json (+ .jpg thumbnails) from the API twins in workflows_api/,
through the real frontend: it loads each twin as the frontend loads a dropped API json, lays it
out, and saves the UI-format workflow it would save; the thumbnail is a picture of the graph.

    COMFYUI_DIR=... COMFY_PYTHON=... .venv/bin/python tests/comfyui/make_example_workflows.py [NAME ...]

(with names, only those workflows are made again)

The API twins stay the source of truth; tests/comfyui/test_browser.py checks that the frontend
turns each saved workflow back into exactly its twin.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser  # noqa: E402
import harness  # noqa: E402

SD15_CHECKPOINT = {  # what the frontend offers to download when the checkpoint is missing
    "name": "v1-5-pruned-emaonly-fp16.safetensors",
    "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",
    "directory": "checkpoints",
}
SD15_NOTE = (
    "This workflow needs a Stable Diffusion 1.5 checkpoint in models/checkpoints: "
    "v1-5-pruned-emaonly-fp16.safetensors (2 GB; the frontend offers the download when it is missing), "
    "or pick any SD1.5 checkpoint you have in Load Checkpoint.\n\n"
    "The first KSampler makes a 512x512 image; Hires-Fix Upscale (Real-ESRGAN) upscales it x2 with the model "
    "and encodes it with the VAE; the second KSampler refines it at denoise 0.5."
)
VIDEO_NOTE = (
    "Pick your video in Load Video (or upload one). sample.mp4 is this pack's assets/sample.mp4: copy it into "
    "ComfyUI/input to run the example as it is.\n\n"
    "Upscale Video (Real-ESRGAN) decodes, upscales and encodes frame by frame, so memory does not grow with the "
    "video's length; the audio is copied. Save Video then copies the result into output/video/ without encoding again."
)


def polish(name: str, workflow: dict) -> dict:
    """What the frontend's saved layout lacks: fixed seeds (a template that reproduces), the
    checkpoint's download metadata and a note saying it is needed, node sizes that fit, and
    no text node over an image preview."""
    nodes = workflow["nodes"]
    for node in nodes:
        if node["type"] == "KSampler":
            node["widgets_values"][1] = "fixed"
        if node["type"] == "CheckpointLoaderSimple":
            node["properties"]["models"] = [SD15_CHECKPOINT]
            node["size"] = [315, 98]
    save = next((n for n in nodes if n["type"] == "SaveImage"), None)
    preview = next((n for n in nodes if n["type"] == "PreviewAny"), None)
    if save is not None and preview is not None and preview["pos"][0] == save["pos"][0]:
        preview["pos"] = [save["pos"][0] + save["size"][0] + 60, save["pos"][1]]  # the saved image grows downward
    note = SD15_NOTE if any(n["type"] == "CheckpointLoaderSimple" for n in nodes) else (
        VIDEO_NOTE if any(n["type"] == "LoadVideo" for n in nodes) else None)
    if note:
        workflow["last_node_id"] += 1
        nodes.append({"id": workflow["last_node_id"], "type": "Note", "pos": [100, 940], "size": [430, 190], "flags": {},
                      "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                      "widgets_values": [note]})
    return workflow


def before_after(model_name: str, image_path: Path, out: Path, title: str) -> None:
    """A template card picture that shows what the workflow does: a crop of the input scaled up
    by pixel repetition, beside the same crop through the model (our engine, CPU)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from realesrgan_tiled.engine import Choices, Host, upscale
    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import bundled_model_path

    source = np.asarray(Image.open(image_path).convert("RGB"))
    crop = _busiest_crop(source, 96)
    pixels = __import__("torch").from_numpy(crop.astype(np.float32) / 255).unsqueeze(0)
    model = load_model(bundled_model_path(model_name))
    after = upscale(pixels, model, Choices(precision="fp32"), Host(device="cpu")).images[0]
    after = Image.fromarray(np.rint(after.clamp(0, 1).numpy() * 255).astype(np.uint8))
    before = Image.fromarray(crop).resize(after.size, Image.NEAREST)
    card = Image.new("RGB", (after.width * 2 + 12, after.height + 56), (24, 24, 27))
    card.paste(before, (0, 56))
    card.paste(after, (after.width + 12, 56))
    draw, font = ImageDraw.Draw(card), ImageFont.load_default(size=22)
    draw.text((12, 14), title, fill=(235, 235, 235), font=font)
    small = ImageFont.load_default(size=16)
    draw.text((8, 62), "input x4 (pixels)", fill=(255, 255, 255), font=small, stroke_width=2, stroke_fill=(0, 0, 0))
    draw.text((after.width + 20, 62), model_name, fill=(255, 255, 255), font=small, stroke_width=2, stroke_fill=(0, 0, 0))
    card.save(out, quality=88)


def _busiest_crop(image, side: int):
    """The side x side crop with the most detail (gradient energy): what shows an upscaler's effect."""
    import numpy as np

    gray = image.astype(np.float32).mean(-1)
    energy = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1]
    step = side // 2
    best = max((energy[y : y + side, x : x + side].sum(), y, x) for y in range(0, energy.shape[0] - side, step)
                for x in range(0, energy.shape[1] - side, step))
    _, y, x = best
    return image[y : y + side, x : x + side]


CARD_TITLES = {
    "tiled_upscale": "Tiled upscale x4, seam-free",
    "hires_fix_image": "Hires-fix step: model upscale to an exact size",
    "core_upscale_with_model": "Our loader feeding core's Upscale Image",
}


def main(names: list[str]) -> int:
    cfg = harness.host_config()
    if cfg is None:
        sys.exit("set COMFYUI_DIR and COMFY_PYTHON")
    comfy_dir, comfy_python = cfg
    base = Path(tempfile.mkdtemp(prefix="rt_make_examples_"))
    try:
        for sub in ("custom_nodes", "input", "output", "user"):
            (base / sub).mkdir()
        harness.copy_package(base / "custom_nodes")
        shutil.copy(comfy_dir / "input" / "example.png", base / "input" / "example.png")
        shutil.copy(harness.REPO / "assets" / "sample.mp4", base / "input" / "sample.mp4")
        server = harness.ComfyServer(comfy_dir, comfy_python, base)
        server.start()
        front = None
        try:
            front = browser.Frontend(server, viewport=(2600, 1100))
            harness.EXAMPLES_DIR.mkdir(exist_ok=True)
            for api_path in sorted(harness.API_DIR.glob("*.json")):
                name = api_path.stem
                if names and name not in names:
                    continue
                front.reload()
                workflow = polish(name, front.load_api(json.loads(api_path.read_text())))
                out = harness.EXAMPLES_DIR / f"{name}.json"
                out.write_text(json.dumps(workflow, indent=2) + "\n")
                thumbnail = harness.EXAMPLES_DIR / f"{name}.jpg"
                if name in CARD_TITLES:  # a workflow that runs without a checkpoint: show its effect
                    before_after("RealESRGAN_x4plus", comfy_dir / "input" / "example.png", thumbnail, CARD_TITLES[name])
                else:
                    front.screenshot(str(thumbnail))
                print("wrote", out)
            if front.serious_errors():
                print("browser errors:", *front.serious_errors(), sep="\n  ")
        finally:
            if front is not None:
                front.close()
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
