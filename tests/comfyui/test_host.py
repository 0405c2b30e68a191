"""The nodes in a real ComfyUI, over plain HTTP: registration, the example workflows (API twins)
checked against the engine run directly, ncnn files, RGBA, the fallback, and cancelling."""
from __future__ import annotations

import json
import time

import harness
import numpy as np
import pytest
import torch
from harness import PromptRejected

DISPLAY = {
    "RealESRGAN_LoadUpscaleModel": "Load Upscale Model (Real-ESRGAN)",
    "RealESRGAN_UpscaleImageTiled": "Upscale Image Tiled (Real-ESRGAN)",
    "RealESRGAN_HiresFixUpscale": "Hires-Fix Upscale (Real-ESRGAN)",
    "RealESRGAN_InterpolateUpscaleModels": "Interpolate Upscale Models (Real-ESRGAN)",
    "RealESRGAN_UpscaleVideo": "Upscale Video (Real-ESRGAN)",
    "RealESRGAN_UpscaleImagesToVideo": "Upscale Images to Video (Real-ESRGAN)",
}
INPUTS = {
    "RealESRGAN_LoadUpscaleModel": ["model_name"],
    "RealESRGAN_UpscaleImageTiled": ["upscale_model", "image", "tile_size", "overlap", "precision"],
    "RealESRGAN_HiresFixUpscale": ["image", "scale_by", "width", "height", "resample", "multiple_of",
                                   "upscale_model", "vae", "model_passes"],
    "RealESRGAN_InterpolateUpscaleModels": ["model_a", "model_b", "weight"],
    "RealESRGAN_UpscaleVideo": ["upscale_model", "video", "tile_size", "overlap", "precision", "codec", "crf"],
    "RealESRGAN_UpscaleImagesToVideo": ["upscale_model", "images", "fps", "tile_size", "overlap", "precision", "codec",
                                        "crf", "audio"],
}
OUTPUTS = {
    "RealESRGAN_LoadUpscaleModel": ["UPSCALE_MODEL"],
    "RealESRGAN_UpscaleImageTiled": ["IMAGE"],
    "RealESRGAN_HiresFixUpscale": ["IMAGE", "LATENT", "STRING"],
    "RealESRGAN_InterpolateUpscaleModels": ["UPSCALE_MODEL"],
    "RealESRGAN_UpscaleVideo": ["VIDEO"],
    "RealESRGAN_UpscaleImagesToVideo": ["VIDEO"],
}


def expect_close(got: np.ndarray, expected_tensor: torch.Tensor, min_psnr=45.0, max_abs=2):
    """ComfyUI's saved PNG vs the engine's float result quantized the way SaveImage does."""
    expected = harness.comfy_save_quantize(expected_tensor)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= max_abs and harness.psnr(got, expected) >= min_psnr, (
        f"max abs {diff.max()}, PSNR {harness.psnr(got, expected):.1f} dB")


# ---------------------------------------------------------------- registration

def test_nodes_registered_without_import_errors(server, object_info):
    log = server.log()
    assert "IMPORT FAILED" not in log or harness.PACKAGE_DIR_NAME not in log.split("IMPORT FAILED", 1)[1][:400], log
    assert "realesrgan_tiled" not in "".join(line for line in log.splitlines() if "Traceback" in line or "Error" in line)
    for node_id, display in DISPLAY.items():
        info = object_info[node_id]
        assert info["display_name"] == display
        assert info["category"] == "image/upscaling"
        names = list(info["input"]["required"]) + list(info["input"].get("optional", {}))
        assert names == INPUTS[node_id]
        assert info["output"] == OUTPUTS[node_id]
        assert info["deprecated"] is False and info["experimental"] is False  # V3 schema nodes (V1 have neither)
    hires = object_info["RealESRGAN_HiresFixUpscale"]["input"]
    assert hires["required"]["scale_by"][1]["default"] == 2.0
    assert hires["required"]["multiple_of"][1]["default"] == 8
    assert harness.combo_options(hires["required"]["resample"]) == ["lanczos", "bicubic", "area", "bilinear", "nearest-exact"]
    assert harness.combo_options(hires["optional"]["model_passes"]) == ["1", "auto", "2", "3", "4"]
    assert hires["optional"]["model_passes"][1]["default"] == "1"
    tiled = object_info["RealESRGAN_UpscaleImageTiled"]["input"]["required"]
    assert harness.combo_options(tiled["precision"]) == ["auto", "fp32", "fp16", "bf16"]
    assert object_info["RealESRGAN_HiresFixUpscale"]["output_name"] == ["image", "latent", "report"]


def test_model_list_has_bundled_models_and_ncnn_param_not_bin(object_info):
    names = harness.combo_options(object_info["RealESRGAN_LoadUpscaleModel"]["input"]["required"]["model_name"])
    assert names[0] == "bundled/RealESRGAN_x4plus"
    for n in ("RealESRGAN_x4plus", "RealESRGAN_x4plus_anime_6B", "realesr-animevideov3-x2",
              "realesr-animevideov3-x3", "realesr-animevideov3-x4"):
        assert f"bundled/{n}" in names
    assert "ncnn/animevideov3-x2.param" in names
    assert "ncnn/animevideov3-x2.bin" not in names
    # core's loader keeps its own list: we did not add .param to the shared extension set
    core = harness.combo_options(object_info["UpscaleModelLoader"]["input"]["required"]["model_name"])
    assert "broken.safetensors" in core and not any(n.endswith(".param") for n in core)
    checkpoints = harness.combo_options(object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"])
    assert not any(n.endswith(".param") for n in checkpoints)


def test_example_workflows_listed_and_twinned(server):
    names = harness.example_names()
    assert {"tiled_upscale", "hires_fix_image", "hires_fix_ksampler", "core_upscale_with_model", "upscale_video"} <= set(names)
    templates = server.get("/api/workflow_templates")
    assert set(templates[harness.PACKAGE_DIR_NAME]) >= set(names), templates
    for name in names:
        ui = json.loads(server.get(f"/api/workflow_templates/{harness.PACKAGE_DIR_NAME}/{name}.json", raw=True))
        assert any((harness.EXAMPLES_DIR / f"{name}{ext}").is_file() for ext in (".jpg", ".png")), f"{name}: no thumbnail"
        api = harness.load_api(name)
        ui_types = sorted(n["type"] for n in ui["nodes"] if n["type"] not in ("Note", "MarkdownNote"))  # UI-only
        assert ui_types == sorted(v["class_type"] for v in api.values()), name
        for node in ui["nodes"]:  # the bundled models, so the examples run for anyone
            if node["type"] == "RealESRGAN_LoadUpscaleModel":
                assert node["widgets_values"][0].startswith("bundled/")
            if node["type"] == "LoadImage":
                assert node["widgets_values"][0] == "example.png"
            if node["type"] == "LoadVideo":  # the pack's assets/sample.mp4, which its note says to upload
                assert node["widgets_values"][0] == "sample.mp4"


# ---------------------------------------------------------------- example workflows, checked against the engine

def test_example_tiled_upscale(server, input_image, bundled):
    prompt = harness.with_unique_prefix(harness.load_api("tiled_upscale"))
    entry = server.run_prompt(prompt)
    (got,) = server.output_images(entry, harness.nodes_of(prompt, "SaveImage")[0])
    assert got.shape == (96, 128, 3)
    expect_close(got, harness.cpu_upscale(bundled("RealESRGAN_x4plus"), input_image)[0])


def test_example_hires_fix_image(server, input_image, bundled):
    prompt = harness.with_unique_prefix(harness.load_api("hires_fix_image"))
    entry = server.run_prompt(prompt)
    (got,) = server.output_images(entry, harness.nodes_of(prompt, "SaveImage")[0])
    # 32x24 * 1.5 = 48x36 -> nearest multiples of 8: 48x40
    assert got.shape == (40, 48, 3)
    report = server.output_text(entry, harness.nodes_of(prompt, "PreviewAny")[0])
    assert report.startswith("model RealESRGAN_x4plus: 32x24 -> 48x40"), report
    expected = harness.cpu_upscale(bundled("RealESRGAN_x4plus"), input_image, output_size=(40, 48), resample="lanczos")[0]
    expect_close(got, expected)


def test_example_core_upscale_with_our_loader(server, input_image, bundled):
    prompt = harness.with_unique_prefix(harness.load_api("core_upscale_with_model"))
    entry = server.run_prompt(prompt)
    (got,) = server.output_images(entry, harness.nodes_of(prompt, "SaveImage")[0])
    assert got.shape == (96, 128, 3)
    # core runs the whole 32x24 image as one 512 px tile; our engine tiles/blends: tiny differences only
    expect_close(got, harness.cpu_upscale(bundled("RealESRGAN_x4plus"), input_image)[0],
                 min_psnr=40.0, max_abs=8)


def test_example_hires_fix_ksampler_validates_except_checkpoint(server):
    """Needs a diffusion checkpoint, which the test host lacks: ComfyUI must reject it for the
    missing checkpoint only, i.e. every other node (ours included) validates."""
    prompt = harness.with_unique_prefix(harness.load_api("hires_fix_ksampler"))
    with pytest.raises(PromptRejected) as info:
        server.queue(prompt)
    body = json.loads(str(info.value))
    errors = body["node_errors"]
    assert set(errors) == set(harness.nodes_of(prompt, "CheckpointLoaderSimple")), errors
    assert "ckpt_name" in json.dumps(errors)


def test_example_hires_fix_ksampler_runs_with_a_checkpoint(server, sd15_checkpoint):
    """The same graph with a (random-weight) SD1.5 checkpoint, shrunk to a 64 px first pass and 2
    steps a pass: KSampler -> VAE decode -> our Hires-Fix with the VAE -> LATENT -> a second
    KSampler -> decode. Our node's LATENT is what the second KSampler samples from."""
    prompt = harness.with_unique_prefix(harness.load_api("hires_fix_ksampler"))
    (loader,) = harness.nodes_of(prompt, "CheckpointLoaderSimple")
    prompt[loader]["inputs"]["ckpt_name"] = sd15_checkpoint
    (empty,) = harness.nodes_of(prompt, "EmptyLatentImage")
    prompt[empty]["inputs"].update(width=64, height=64)
    for node in harness.nodes_of(prompt, "KSampler"):
        prompt[node]["inputs"]["steps"] = 2
    entry = server.run_prompt(prompt, timeout=600)
    (got,) = server.output_images(entry, harness.nodes_of(prompt, "SaveImage")[0])
    assert got.shape == (128, 128, 3)
    report = server.output_text(entry, harness.nodes_of(prompt, "PreviewAny")[0])
    assert report.startswith("model RealESRGAN_x4plus: 64x64 -> 128x128"), report


def test_interpolated_model_and_model_passes(server, input_image, bundled):
    """The interpolation node feeds the hires-fix node, which runs the x2 blend twice for x4
    (model_passes auto) and says so; checked against the blend and two passes done here."""
    from realesrgan_tiled.loading.interpolate import interpolate

    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "RealESRGAN_LoadUpscaleModel", "inputs": {"model_name": "bundled/realesr-animevideov3-x2"}},
        "3": {"class_type": "RealESRGAN_LoadUpscaleModel", "inputs": {"model_name": "ncnn/animevideov3-x2.param"}},
        "4": {"class_type": "RealESRGAN_InterpolateUpscaleModels",
              "inputs": {"model_a": ["2", 0], "model_b": ["3", 0], "weight": 0.4}},
        "5": {"class_type": "RealESRGAN_HiresFixUpscale",
              "inputs": {"image": ["1", 0], "scale_by": 4.0, "width": 0, "height": 0, "resample": "lanczos",
                         "multiple_of": 8, "upscale_model": ["4", 0], "model_passes": "auto"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "dni"}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}},
    }
    entry = server.run_prompt(harness.with_unique_prefix(prompt))
    (got,) = server.output_images(entry, "6")
    assert got.shape == (96, 128, 3)
    report = server.output_text(entry, "7")
    assert report.startswith("model realesr-animevideov3-x2 x0.6 + ncnn/animevideov3-x2.param x0.4: 32x24 -> 128x96 "
                             "(2 model passes,"), report
    blend = interpolate(bundled("realesr-animevideov3-x2"), bundled("realesr-animevideov3-x2"), 0.4)
    expected = harness.cpu_upscale(blend, input_image, output_size=(96, 128), resample="lanczos", passes="auto")[0]
    expect_close(got, expected)
    # without model_passes (a saved workflow) the model runs once and resampling does the rest
    del prompt["5"]["inputs"]["model_passes"]
    entry = server.run_prompt(harness.with_unique_prefix(prompt))
    assert "model passes" not in server.output_text(entry, "7")


def test_help_pages_are_served_for_every_node(server, object_info):
    """The frontend shows web/docs/<node id>.md (WEB_DIRECTORY) as the node's help: it fetches
    /extensions/<python_module less "custom_nodes.">/docs/<node id>.md."""
    for node_id in DISPLAY:
        assert object_info[node_id]["python_module"] == f"custom_nodes.{harness.PACKAGE_DIR_NAME}"
        page = server.get(f"/extensions/{harness.PACKAGE_DIR_NAME}/docs/{node_id}.md", raw=True).decode()
        assert page.startswith(f"# {DISPLAY[node_id]}\n"), page[:200]
        for name in INPUTS[node_id]:
            assert f"**{name}" in page or f"{name}**" in page, (node_id, name)  # each input is described


def test_health_route_counts_runs_and_fallbacks_and_lists_refused_files(server, input_image):
    before = server.get("/realesrgan_tiled/health")
    assert before["versions"]["host"].startswith("ComfyUI") and before["versions"]["realesrgan_tiled"]
    assert "bundled/RealESRGAN_x4plus" in before["models"] and before["device"] == "cpu"
    prompt = tiled_prompt()
    prompt["5"] = {"class_type": "RealESRGAN_HiresFixUpscale",
                   "inputs": {"image": ["1", 0], "scale_by": 2.0, "width": 0, "height": 0, "resample": "lanczos",
                              "multiple_of": 8}}  # no model: a fallback
    prompt["6"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}}
    server.run_prompt(harness.with_unique_prefix(prompt))
    after = server.get("/realesrgan_tiled/health?check=1")
    assert after["counts"]["runs"] == before["counts"]["runs"] + 1
    assert after["counts"]["fallbacks"] == before["counts"]["fallbacks"] + 1
    assert after["last_run"]["model"] == "realesr-animevideov3-x2" and after["last_run"]["tiles"] >= 1
    assert after["last_run"]["backend"] in ("torch", "ncnn")  # on this CPU server: the measured auto choice
    refused = {r["path"]: r["reason"] for r in after["refused"]}
    assert "not a valid .safetensors file" in refused["broken.safetensors"]
    assert "bundled/RealESRGAN_x4plus" not in refused


# ---------------------------------------------------------------- memory through the model manager

CORE_ROOM_X4 = 512 * 512 * 3 * 4 * 4 * 384  # core's ImageUpscaleWithModel estimate for any x4 model: 4.8 GB


def test_upscalers_load_through_the_model_manager_and_a_loaded_vae_stays(server, input_image, bundled, sd15_checkpoint):
    """Our nodes ask ComfyUI's model manager for the weights plus the engine's working set
    (load_models_gpu through the patcher), so the upscaler is listed among the loaded models
    and nothing the manager holds is evicted by our run. On this CPU server the manager frees
    nothing for CPU models either way; the eviction itself only happens on a GPU
    (bench/gpu_check.py covers it there)."""
    first = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "RealESRGAN_LoadUpscaleModel", "inputs": {"model_name": "bundled/realesr-animevideov3-x2"}},
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_checkpoint}},
        "4": {"class_type": "RealESRGAN_HiresFixUpscale",
              "inputs": {"image": ["1", 0], "scale_by": 2.0, "width": 0, "height": 0, "resample": "lanczos",
                         "multiple_of": 8, "upscale_model": ["2", 0], "vae": ["3", 2]}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 1], "vae": ["3", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "vae"}},
    }
    server.run_prompt(harness.with_unique_prefix(first))
    before = server.get("/realesrgan_tiled/health")["host_loaded_models"]
    assert "AutoencoderKL" in before and "upscaler: realesr-animevideov3-x2" in before, before

    # the same graph plus an x4plus branch: the checkpoint's outputs stay cached, hence alive
    # (a prompt without them lets ComfyUI drop its models as garbage, which is not an eviction)
    second = dict(first, **{
        "7": {"class_type": "RealESRGAN_LoadUpscaleModel", "inputs": {"model_name": "bundled/RealESRGAN_x4plus"}},
        "8": {"class_type": "RealESRGAN_UpscaleImageTiled",
              "inputs": {"upscale_model": ["7", 0], "image": ["1", 0], "tile_size": 0, "overlap": 0,
                         "precision": "auto"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x4"}},
    })
    entry = server.run_prompt(harness.with_unique_prefix(second))
    health = server.get("/realesrgan_tiled/health")
    after = health["host_loaded_models"]
    assert all(after.count(name) >= before.count(name) for name in set(before)), (before, after)  # nothing evicted
    assert "upscaler: RealESRGAN_x4plus" in after, after  # loaded through the manager, and kept there
    asked = health["last_run"]["room_asked_bytes"]
    # the engine's working set for 32x24, not core's 4.8 GB; where auto picks ncnn (its timing, per
    # CPU) the fixed part is ncnn's own weight copies, 0.54 GB for x4plus, the largest of the backends'
    assert 0 < asked < CORE_ROOM_X4 / 5, (asked, health["last_run"].get("backend"))
    (got,) = server.output_images(entry, "9")
    expect_close(got, harness.cpu_upscale(bundled("RealESRGAN_x4plus"), input_image)[0])


# ---------------------------------------------------------------- more host behaviour

def tiled_prompt(image="example.png", model="bundled/realesr-animevideov3-x2", tile_size=0):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "RealESRGAN_LoadUpscaleModel", "inputs": {"model_name": model}},
        "3": {"class_type": "RealESRGAN_UpscaleImageTiled",
              "inputs": {"upscale_model": ["2", 0], "image": ["1", 0], "tile_size": tile_size, "overlap": 0,
                         "precision": "auto"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "t"}},
    }


def test_ncnn_param_file_loads_and_matches_bundled(server, input_image, bundled):
    prompt = harness.with_unique_prefix(tiled_prompt(model="ncnn/animevideov3-x2.param"))
    (got,) = server.output_images(server.run_prompt(prompt), "4")
    assert got.shape == (48, 64, 3)
    expect_close(got, harness.cpu_upscale(bundled("realesr-animevideov3-x2"), input_image)[0])


def test_rgba_image_stays_rgba(server, host_base, bundled):
    from PIL import Image

    prompt = harness.with_unique_prefix(tiled_prompt(image="rgba.png", model="bundled/realesr-animevideov3-x2"))
    prompt["5"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["1", 0], "alpha": ["1", 1]}}
    prompt["3"]["inputs"]["image"] = ["5", 0]
    (got,) = server.output_images(server.run_prompt(prompt), "4")
    assert got.shape == (48, 64, 4)
    rgba = harness.to_image_tensor(np.asarray(Image.open(host_base / "input" / "rgba.png")))
    expect_close(got, harness.cpu_upscale(bundled("realesr-animevideov3-x2"), rgba)[0])


def test_hires_fallback_without_model_and_latent_needs_vae(server, input_image):
    from realesrgan_tiled.engine.resize import resize_images

    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "3": {"class_type": "RealESRGAN_HiresFixUpscale",
              "inputs": {"image": ["1", 0], "scale_by": 2.0, "width": 100, "height": 0, "resample": "bicubic",
                         "multiple_of": 8}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "fb"}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}},
    }
    entry = server.run_prompt(harness.with_unique_prefix(prompt))
    (got,) = server.output_images(entry, "4")
    # width 100 -> 104 (multiple of 8); height follows the aspect ratio: 24 * 100/32 = 75 -> 72
    assert got.shape == (72, 104, 3)
    assert server.output_text(entry, "5") == "bicubic fallback (no upscale model connected): 32x24 -> 104x72"
    expect_close(got, resize_images(input_image, (72, 104), "bicubic")[0])

    # LATENT used without a VAE: the consumer is blocked (ComfyUI's ExecutionBlocker, with a message
    # for the UI); the image path still runs
    prompt["6"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}}
    entry = server.run_prompt(harness.with_unique_prefix(prompt))
    assert "6" not in entry["outputs"] and "4" in entry["outputs"] and "5" in entry["outputs"]


def test_interrupt_stops_a_one_tile_cpu_upscale_between_windows(server):
    """Automatic tiling on CPU makes 256x256 one tile: x4plus takes ~20 s on it here. The
    network checks ComfyUI's interrupt flag between its windows, so the stop is still quick."""
    slow = harness.with_unique_prefix(tiled_prompt(image="whole.png", model="bundled/RealESRGAN_x4plus"))
    started = time.monotonic()
    prompt_id = server.queue(slow)
    while not server.queue_state()["queue_running"]:
        assert time.monotonic() - started < 60, "the prompt never started"
        time.sleep(0.1)
    time.sleep(4.0)  # model loaded, the tile's trunk under way
    t0 = time.monotonic()
    server.interrupt()
    entry = server.wait(prompt_id, timeout=60)
    stopped_after = time.monotonic() - t0
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    assert stopped_after < 3.0, f"took {stopped_after:.1f}s to stop\n{server.log()[-3000:]}"
    assert not entry["outputs"]


def test_interrupt_stops_upscale_within_a_tile_and_next_prompt_runs(server, input_image, bundled):
    # x4plus on 96x96 in 16 px tiles: ~100 tiles, minutes on this CPU
    slow = harness.with_unique_prefix(tiled_prompt(image="big.png", model="bundled/RealESRGAN_x4plus", tile_size=16))
    started = time.monotonic()
    prompt_id = server.queue(slow)
    while not server.queue_state()["queue_running"]:
        assert time.monotonic() - started < 60, "the prompt never started"
        time.sleep(0.1)
    time.sleep(3.0)  # model loaded, tiles under way
    t0 = time.monotonic()
    server.interrupt()
    entry = server.wait(prompt_id, timeout=60)
    stopped_after = time.monotonic() - t0
    status = entry["status"]
    assert status["status_str"] == "error" and not status["completed"], status
    assert any(m[0] == "execution_interrupted" for m in status["messages"]), status["messages"]
    assert stopped_after < 6.0, f"took {stopped_after:.1f}s to stop"
    assert not entry["outputs"], "an interrupted upscale must not save an image"

    # the next prompt runs normally (the model was offloaded, nothing is left half-done)
    nxt = harness.with_unique_prefix(tiled_prompt(model="bundled/realesr-animevideov3-x2"))
    (got,) = server.output_images(server.run_prompt(nxt), "4")
    expect_close(got, harness.cpu_upscale(bundled("realesr-animevideov3-x2"), input_image)[0])
