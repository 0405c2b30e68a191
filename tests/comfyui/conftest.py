"""Fixtures for the real-host tests. Everything here is skipped unless COMFYUI_DIR and
COMFY_PYTHON point at a runnable ComfyUI (see /work/shared/comfyui/README.md)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    configured = harness.host_config() is not None
    skip = pytest.mark.skip(reason="real-host test: set COMFYUI_DIR and COMFY_PYTHON")
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.comfyui)
            if not configured:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def host():
    cfg = harness.host_config()
    if cfg is None:
        pytest.skip("real-host test: set COMFYUI_DIR and COMFY_PYTHON")
    comfy_dir, comfy_python = cfg
    if not (comfy_dir / "main.py").is_file() or not comfy_python.exists():
        pytest.skip(f"COMFYUI_DIR={comfy_dir} / COMFY_PYTHON={comfy_python} is not a ComfyUI install")
    return comfy_dir, comfy_python


@pytest.fixture(scope="session")
def host_base(host, tmp_path_factory):
    """ComfyUI's --base-directory: the package in custom_nodes/, small test images in input/,
    an ncnn .param/.bin pair in models/upscale_models/."""
    base = tmp_path_factory.mktemp("comfy_base")
    for sub in ("custom_nodes", "input", "output", "models/upscale_models/ncnn", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    harness.copy_package(base / "custom_nodes")
    from PIL import Image

    photo = harness.sample_photo((24, 32))
    Image.fromarray(photo).save(base / "input" / "example.png")
    alpha = np.tile(np.linspace(0, 255, photo.shape[1]).astype(np.uint8), (photo.shape[0], 1))
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(base / "input" / "rgba.png")
    Image.fromarray(harness.sample_photo((96, 96))).save(base / "input" / "big.png")
    Image.fromarray(harness.sample_photo((256, 256))).save(base / "input" / "whole.png")
    shutil.copy(harness.REPO / "assets" / "sample.mp4", base / "input" / "sample.mp4")  # the video example's input
    from realesrgan_tiled.loading.bundled import bundled_model_path

    param = bundled_model_path("realesr-animevideov3-x2")
    shutil.copy(param, base / "models/upscale_models/ncnn/animevideov3-x2.param")
    shutil.copy(param.with_suffix(".bin"), base / "models/upscale_models/ncnn/animevideov3-x2.bin")
    (base / "models/upscale_models/broken.safetensors").write_bytes(b"\x00not a model" * 40)  # for the health check
    return base


@pytest.fixture(scope="session")
def sd15_checkpoint(host, host_base):
    """A random-weight SD1.5 checkpoint in models/checkpoints (2 GB, ~20 s), built by the shared
    builder from ComfyUI's own configs: graphs with a real VAE and CLIP, nothing downloaded."""
    builder = harness.SD15_BUILDER
    if not builder.is_file():
        pytest.skip(f"no SD1.5 checkpoint builder at {builder} (set COMFY_SD15_BUILDER)")
    comfy_dir, comfy_python = host
    out = host_base / "models" / "checkpoints" / "random_sd15_fp16.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    res = harness.run([comfy_python, builder, "--comfy", comfy_dir, "--out", out, "--threads", "2"])
    assert res.returncode == 0 and out.is_file(), res.stdout[-3000:]
    return out.name


@pytest.fixture(scope="session")
def host_env(host, host_base, tmp_path_factory):
    """A venv over ComfyUI's where the Manager's install steps ran from the copied package."""
    _, comfy_python = host
    return harness.make_env(comfy_python, tmp_path_factory.mktemp("comfy_env"),
                            host_base / "custom_nodes" / harness.PACKAGE_DIR_NAME)


@pytest.fixture(scope="session")
def server(host, host_base, host_env):
    failed = [(name, res) for name, res, _ in host_env.steps if res.returncode != 0]
    if failed:
        pytest.fail("install steps failed:\n" + "\n".join(f"{n}:\n{r.stdout[-2000:]}" for n, r in failed))
    comfy_dir, _ = host
    srv = harness.ComfyServer(comfy_dir, host_env.python, host_base)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def object_info(server):
    return server.get("/object_info", timeout=120)


@pytest.fixture(scope="session")
def input_image(host_base):
    """example.png as the IMAGE tensor ComfyUI's LoadImage makes of it."""
    from PIL import Image

    return harness.to_image_tensor(np.asarray(Image.open(host_base / "input" / "example.png").convert("RGB")))


@pytest.fixture(scope="session")
def bundled():
    """Load a bundled model in the test process, to compute expected results with the engine."""
    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import bundled_model_path

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(bundled_model_path(name))
        return cache[name]

    return get
