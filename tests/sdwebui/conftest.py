"""Fixtures for the real-WebUI tests. Each host runs only when its variables name a built WebUI
and its Python (A1111_DIR/A1111_PYTHON, FORGE_DIR/FORGE_PYTHON; see README)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from . import harness

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.sdwebui)


@dataclass
class Host:
    name: str
    webui_dir: Path
    python: Path
    flags: list


@pytest.fixture(scope="session", params=list(harness.HOSTS))
def host(request):
    cfg = harness.host_config(request.param)
    dir_var, python_var, flags = harness.HOSTS[request.param]
    if cfg is None:
        pytest.skip(f"real-host test: set {dir_var} and {python_var}")
    webui_dir, python = cfg
    if not (webui_dir / "launch.py").is_file() or not python.exists():
        pytest.skip(f"{dir_var}={webui_dir} / {python_var}={python} is not a WebUI install")
    return Host(request.param, webui_dir, python, flags)


@dataclass
class Data:
    """The --data-dir, and what its model folders hold."""

    root: Path
    extension: Path
    extra_models: Path  # named by --realesrgan-tiled-models-path
    marker: Path  # the hostile pickle's payload would create this file
    breaks_later: Path  # a valid model the tests turn into garbage while the server runs


@pytest.fixture(scope="session")
def data(host, tmp_path_factory) -> Data:
    root = tmp_path_factory.mktemp(f"{host.name}_data")
    extension = harness.clone_extension(root / "extensions")
    models = root / "models"
    extra = tmp_path_factory.mktemp(f"{host.name}_extra_models")
    marker = root / "PAYLOAD_RAN"
    write_models(models, extra, marker)
    return Data(root, extension, extra, marker, models / "RealESRGAN-tiled" / "breaks_later.safetensors")


def write_models(models: Path, extra: Path, marker: Path) -> None:
    from realesrgan_tiled.loading.bundled import bundled_model_path

    from ..model_fixtures import save
    from ..test_hostile_files import SystemPayload, rrdbnet_state

    for sub in ("ESRGAN", "RealESRGAN", "RealESRGAN-tiled"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    compact = harness.real_state_dict("realesr-animevideov3-x4")
    save(compact, models / "ESRGAN" / "compact_x4.pth")  # current torch's zip format (A1111's torch.load refuses it)
    save(compact, models / "RealESRGAN-tiled" / "dup_stem.safetensors")
    save(compact, models / "ESRGAN" / "dup_stem.pth")  # same stem: the earlier folder's file wins
    save(compact, models / "RealESRGAN-tiled" / "breaks_later.safetensors")
    save(harness.real_state_dict("RealESRGAN_x4plus_anime_6B"), models / "RealESRGAN-tiled" / "anime_6b.safetensors")
    # the built-in "R-ESRGAN 4x+" finds this and needs no download (legacy format: A1111's torch.load takes it)
    torch.save(harness.real_state_dict("RealESRGAN_x4plus"), str(models / "RealESRGAN" / "RealESRGAN_x4plus.pth"),
               _use_new_zipfile_serialization=False)
    param = bundled_model_path("realesr-animevideov3-x3")
    (extra / "ncnn").mkdir(parents=True)
    shutil.copy(param, extra / "ncnn" / "video_x3.param")
    shutil.copy(param.with_suffix(".bin"), extra / "ncnn" / "video_x3.bin")
    # refused: a pickle that would run a command, and bytes that are no model
    torch.save({"evil": SystemPayload(marker), **rrdbnet_state(num_feat=4, num_grow_ch=4)}, str(models / "ESRGAN" / "hostile.pth"))
    (models / "ESRGAN" / "garbage.safetensors").write_bytes(b"\x00not a model" * 50)


@pytest.fixture(scope="session")
def host_env(host, data, tmp_path_factory) -> harness.HostEnv:
    return harness.make_env(host.python, tmp_path_factory.mktemp(f"{host.name}_env"), host.webui_dir, data.root,
                            data.extension)


@pytest.fixture(scope="session")
def server(host, data, host_env):
    if host_env.installer.returncode != 0:
        pytest.fail(f"the host's installer run failed:\n{host_env.installer.stdout[-3000:]}")
    srv = harness.WebUIServer(host.webui_dir, host_env.python, data.root,
                              [*host.flags, "--realesrgan-tiled-models-path", str(data.extra_models)])
    srv.start()
    yield srv
    srv.stop()
