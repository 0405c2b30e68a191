"""The WebUI adapter's host-neutral parts, without a WebUI: which models are listed under which
names (sdwebui/models.py), the health counters (health.py) and the PIL <-> pixels steps.
The real hosts are in tests/sdwebui/."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from realesrgan_tiled.engine import RunReport
from realesrgan_tiled.engine.health import Health
from realesrgan_tiled.loading.bundled import BUNDLED, bundled_model_path
from realesrgan_tiled.media.images import pil_to_pixels, pixels_to_pil
from realesrgan_tiled.sdwebui.models import discover, model_files

from .model_fixtures import rrdbnet_state, save, srvgg_state
from .test_hostile_files import SystemPayload


def test_bundled_models_come_first_with_their_native_scales():
    listed, refused = discover([])
    assert refused == []
    assert [m.name for m in listed][0] == "RealESRGAN_x4plus (tiled)"
    assert {m.name: m.scale for m in listed} == {
        "RealESRGAN_x4plus (tiled)": 4, "RealESRGAN_x4plus_anime_6B (tiled)": 4, "realesr-animevideov3-x4 (tiled)": 4,
        "realesr-animevideov3-x3 (tiled)": 3, "realesr-animevideov3-x2 (tiled)": 2}
    assert len(listed) == len(BUNDLED)


def test_folder_files_are_named_by_stem_and_the_first_folder_wins(tmp_path):
    first, second = tmp_path / "RealESRGAN-tiled", tmp_path / "ESRGAN"
    (first / "sub").mkdir(parents=True)
    second.mkdir()
    save(srvgg_state(upscale=2), first / "sub" / "compact.safetensors")  # subfolders count, as in the host
    save(srvgg_state(upscale=4), second / "compact.pth")  # same stem, later folder: refused
    save(rrdbnet_state(num_feat=8, num_grow_ch=8, num_upsample=1), second / "rrdb_x2.pth")
    param = bundled_model_path("realesr-animevideov3-x3")
    shutil.copy(param, second / "video.param")
    shutil.copy(param.with_suffix(".bin"), second / "video.bin")  # listed once, through its .param
    listed, refused = discover([first, second, first], bundled=False)  # a folder named twice is read once
    assert [(m.name, m.scale) for m in listed] == [("compact (tiled)", 2), ("rrdb_x2 (tiled)", 2), ("video (tiled)", 3)]
    assert listed[0].path == str(first / "sub" / "compact.safetensors")
    (dup,) = refused
    assert dup.path == str(second / "compact.pth") and "same name as" in dup.reason
    assert str(first / "sub" / "compact.safetensors") in dup.reason


def test_unreadable_files_are_refused_with_one_line_and_never_run(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"evil": SystemPayload(marker), **rrdbnet_state(num_feat=4, num_grow_ch=4)}, str(tmp_path / "hostile.pth"))
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a model")
    listed, refused = discover([tmp_path], bundled=False)
    assert listed == [] and not marker.exists()
    reasons = {r.path.rsplit("/", 1)[-1]: r.reason for r in refused}
    assert set(reasons) == {"hostile.pth", "garbage.safetensors", "empty.pt"}
    assert "posix.system" in reasons["hostile.pth"] and "empty" in reasons["empty.pt"]
    assert all("\n" not in r for r in reasons.values())


def test_model_files_skips_missing_folders_and_lone_bins(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "b.pth").write_bytes(b"x")
    (tmp_path / "c.PTH").write_bytes(b"x")
    assert model_files([tmp_path / "missing", tmp_path]) == [tmp_path / "c.PTH"]


def test_health_counts_runs_fallbacks_and_interrupts():
    health = Health()
    health.ran("m (tiled)", RunReport(tiles=4, oom_retries=2, fp32_reruns=1, precision="fp16", device="cuda:0", tile_size=256,
                                      backend="torch"))
    health.fell_back("m (tiled)", "m.pth: not a valid .safetensors file")
    health.interrupted()
    report = health.report(device="cuda:0")
    assert report["counts"] == {"runs": 1, "fallbacks": 1, "failures": 0, "interrupted": 1, "oom_retries": 2,
                                "fp32_reruns": 1}
    assert report["last_error"]["message"] == "m.pth: not a valid .safetensors file"
    assert report["last_run"]["tiles"] == 4 and report["last_run"]["backend"] == "torch" and report["device"] == "cuda:0"
    assert isinstance(report["cpu_backend_measured"], dict)


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("RGBA", 4), ("L", 1), ("LA", 4), ("P", 3), ("I;16", 1), ("CMYK", 3)])
def test_pil_images_of_every_mode_become_pixels_and_back(mode, channels):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert(mode) if mode != "I;16" else Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    pixels = pil_to_pixels(im)
    assert pixels.shape == (1, 6, 5, channels) and pixels.dtype == torch.float32
    back = pixels_to_pil(pixels[0])
    assert back.mode == {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    if mode in ("RGB", "RGBA", "L"):
        assert np.array_equal(np.asarray(back), np.asarray(im))  # 8-bit exact round trip
