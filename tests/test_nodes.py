"""The nodes' Python logic without ComfyUI (CI has none). Small stand-ins for ``comfy`` and
``folder_paths`` are put in sys.modules only inside these tests' fixtures; the real host is
exercised by tests/comfyui/."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from realesrgan_tiled.engine.resize import resize_images
from realesrgan_tiled.errors import ModelLoadError, RealESRGANTiledError
from realesrgan_tiled.nodes import _host
from realesrgan_tiled.nodes import upscale as upscale_module
from realesrgan_tiled.nodes.upscale import (
    hires_fix_upscale,
    hires_target_size,
    load_upscale_model,
    round_to_multiple,
    upscale_image_tiled,
)

from .conftest import photo, psnr, upscaled


class Interrupted(Exception):
    """Stands in for comfy.model_management.InterruptProcessingException."""


@pytest.fixture
def fake_comfy(monkeypatch, tmp_path):
    """Minimal ``comfy.model_management`` / ``comfy.utils`` / ``folder_paths``, recording calls."""
    calls = {"progress": [], "interrupt_after": None, "checks": 0}
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = Interrupted
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.intermediate_dtype = lambda: torch.float32

    def check():
        calls["checks"] += 1
        if calls["interrupt_after"] is not None and calls["checks"] > calls["interrupt_after"]:
            raise Interrupted()

    mm.throw_exception_if_processing_interrupted = check
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None):
            calls["progress"].append((value, total))

    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, utils
    models = tmp_path / "upscale_models"
    models.mkdir()
    fp = types.ModuleType("folder_paths")
    fp.get_folder_paths = lambda name: [str(models)]
    fp.get_filename_list = lambda name: sorted(
        p.relative_to(models).as_posix() for p in models.rglob("*") if p.suffix in (".pth", ".safetensors", ".bin"))

    def get_full_path(name, filename):
        p = models / filename
        return str(p) if p.is_file() else None

    fp.get_full_path = get_full_path
    for name, mod in {"comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils, "folder_paths": fp}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    calls["models_dir"] = models
    return calls


@pytest.fixture(scope="module")
def anime_x2():
    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import bundled_model_path

    return load_model(bundled_model_path("realesr-animevideov3-x2"))


def test_package_import_pulls_in_no_comfyui_and_names_the_version_it_needs():
    import subprocess

    code = ("import sys, realesrgan_tiled\n"
            "assert 'realesrgan_tiled.nodes' not in sys.modules, 'the nodes load only when a host asks for them'\n"
            "try:\n    realesrgan_tiled.comfy_entrypoint\nexcept ImportError as e:\n    print(e)\n"
            "bad = [m for m in sys.modules if m in ('comfy', 'folder_paths', 'nodes') or m.startswith('comfy')]\n"
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "need ComfyUI 0.3.64 or newer" in res.stdout and "comfy_api" in res.stdout, res.stdout


@pytest.mark.parametrize("h, w, scale, tw, th, mult, expected", [
    (768, 768, 2.0, 0, 0, 8, (1536, 1536)),
    (24, 32, 1.5, 0, 0, 8, (40, 48)),        # 36 -> 40 (nearest, halves up), 48 stays
    (24, 32, 2.0, 100, 0, 8, (72, 104)),     # width given: height keeps the aspect ratio (75 -> 72)
    (24, 32, 2.0, 0, 50, 8, (48, 64)),       # height given: width 66.7 -> 64
    (24, 32, 2.0, 90, 50, 1, (50, 90)),      # both given: exactly that
    (24, 32, 2.0, 90, 50, 16, (48, 96)),
    (10, 10, 0.1, 0, 0, 8, (8, 8)),          # never below multiple_of
    (513, 300, 1.0, 0, 0, 64, (512, 320)),
])
def test_hires_target_size(h, w, scale, tw, th, mult, expected):
    assert hires_target_size(h, w, scale, tw, th, mult) == expected
    assert all(v % mult == 0 for v in expected)


def test_round_to_multiple():
    assert [round_to_multiple(v, 8) for v in (1, 4, 11.9, 12, 12.1, 20)] == [8, 8, 8, 16, 16, 24]


def test_model_list_bundled_first_ncnn_param_without_bin(fake_comfy):
    d = fake_comfy["models_dir"]
    (d / "sub").mkdir()
    for name in ("a.pth", "sub/pair.param", "sub/pair.bin", "lone.bin", "notes.txt"):
        (d / name).write_bytes(b"x")
    names = _host.list_model_names()
    assert names[0] == "bundled/RealESRGAN_x4plus"
    assert names[5:] == ["a.pth", "lone.bin", "sub/pair.param"]
    assert set(names[:5]) == {f"bundled/{n}" for n in ("RealESRGAN_x4plus", "RealESRGAN_x4plus_anime_6B",
                                                        "realesr-animevideov3-x4", "realesr-animevideov3-x3",
                                                        "realesr-animevideov3-x2")}


def test_loader_bundled_and_errors_name_the_file(fake_comfy):
    model = load_upscale_model("bundled/realesr-animevideov3-x2")
    assert model.scale == 2 and model.realesrgan_tiled_name == "realesr-animevideov3-x2"
    (fake_comfy["models_dir"] / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="broken.pth"):
        load_upscale_model("broken.pth")
    with pytest.raises(ModelLoadError, match="missing.safetensors"):
        load_upscale_model("missing.safetensors")


def test_tiled_node_matches_engine_rgba_and_reports_progress(fake_comfy, anime_x2):
    img = photo(size=(24, 32))
    rgba = torch.cat([img, torch.linspace(0, 1, 32).expand(1, 24, 32).unsqueeze(-1)], -1)
    out = upscale_image_tiled(anime_x2, rgba, 16, 0, "auto")
    assert out.shape == (1, 48, 64, 4)
    expected = upscaled(anime_x2, rgba, tile_size=16, device="cpu")
    assert torch.equal(out, expected)
    assert fake_comfy["progress"] and fake_comfy["progress"][-1][0] == fake_comfy["progress"][-1][1]
    assert fake_comfy["checks"] >= fake_comfy["progress"][-1][1]  # the cancel check ran before every tile


def test_tiled_cancel_is_raised_and_model_offloaded(fake_comfy, anime_x2):
    fake_comfy["interrupt_after"] = 2
    with pytest.raises(Interrupted):
        upscale_image_tiled(anime_x2, photo(size=(48, 48)), 16, 0, "fp32")
    assert next(anime_x2.model.parameters()).device.type == "cpu"


def test_the_model_manager_loads_the_model_where_the_host_can(fake_comfy, anime_x2, monkeypatch):
    """With a patcher and a load_models_gpu that knows force_full_load (current ComfyUI), the
    node loads the model through it, asking for the engine's working set; with an older
    load_models_gpu it moves the model itself (the real host: tests/comfyui)."""
    mm, calls = sys.modules["comfy.model_management"], []

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, force_full_load=False):
        calls.append((models, memory_required, force_full_load))

    monkeypatch.setattr(mm, "load_models_gpu", load_models_gpu, raising=False)
    monkeypatch.setattr(anime_x2, "patcher", object(), raising=False)
    out = upscale_image_tiled(anime_x2, photo(size=(24, 32)), 0, 0, "fp32")
    asked = upscale_module.HEALTH.last_run["room_asked_bytes"]
    assert calls == [([anime_x2.patcher], 0, True), ([anime_x2.patcher], asked, True)] and asked > 0
    assert torch.equal(out, upscaled(anime_x2, photo(size=(24, 32)), device="cpu"))

    def old_load_models_gpu(models, memory_required=0):
        calls.append("old")

    monkeypatch.setattr(mm, "load_models_gpu", old_load_models_gpu)
    upscale_image_tiled(anime_x2, photo(size=(24, 32)), 0, 0, "fp32")
    assert "old" not in calls


def test_hires_model_path_report(fake_comfy, anime_x2):
    anime_x2.realesrgan_tiled_name = "realesr-animevideov3-x2"
    img = photo(size=(24, 32))
    out, latent, report = hires_fix_upscale(img, 1.5, 0, 0, "lanczos", 8, upscale_model=anime_x2)
    assert out.shape == (1, 40, 48, 3)
    assert report.startswith("model realesr-animevideov3-x2: 32x24 -> 48x40"), report
    assert latent is None  # no ComfyUI: no ExecutionBlocker to return (in ComfyUI, consumers are blocked)
    assert psnr(out, upscaled(anime_x2, img, device="cpu", output_size=(40, 48))) > 60


class FailingModel:
    """A descriptor whose network raises, like an unsupported model or a CUDA OOM would."""

    def __init__(self, exc):
        self.exc, self.scale, self.input_channels, self.output_channels = exc, 2, 3, 3
        self.supports_half = self.supports_bfloat16 = False
        self.size_requirements = types.SimpleNamespace(multiple_of=1, get_padding=lambda w, h: (0, 0))
        self.model = torch.nn.Conv2d(3, 12, 1)
        self.architecture = types.SimpleNamespace(name="Failing")

    def to(self, *a, **k):
        return self

    def eval(self):
        return self

    def _call_fn(self, model, x):
        raise self.exc


@pytest.mark.parametrize("exc", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("Given groups=1, weight of size [64, 3, 3, 3], expected input to have 3 channels"),
    NotImplementedError("operator not supported"),
])
def test_hires_falls_back_on_any_model_failure(fake_comfy, exc, caplog):
    """The real engine around a network that fails: the node still returns the exact size."""
    img = photo(size=(24, 32))
    out, _, report = hires_fix_upscale(img, 2.0, 0, 0, "bicubic", 8, upscale_model=FailingModel(exc))
    assert report.startswith("bicubic fallback ("), report
    assert ": 32x24 -> 64x48; " in report
    assert torch.equal(out, resize_images(img, (48, 64), "bicubic"))
    assert "falling back to bicubic" in caplog.text


@pytest.mark.parametrize("exc, reason", [
    (RealESRGANTiledError("out of memory on cuda:0 even with 16 px tiles; free memory, ..."), "CUDA out of memory"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "CUDA out of memory"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB; out of memory"), "out of memory"),
    (ValueError("unsupported model"), "model error: ValueError"),
])
def test_hires_fallback_reason_text(fake_comfy, monkeypatch, anime_x2, exc, reason):
    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(upscale_module, "run_model", fail)
    _, _, report = hires_fix_upscale(photo(size=(24, 32)), 2.0, 0, 0, "lanczos", 8, upscale_model=anime_x2)
    assert report.startswith(f"lanczos fallback ({reason}): 32x24 -> 64x48; {type(exc).__name__}: "), report


def test_hires_without_model_and_rgba(fake_comfy):
    rgba = torch.rand(2, 24, 32, 4)
    out, _, report = hires_fix_upscale(rgba, 2.0, 0, 0, "lanczos", 8)
    assert out.shape == (2, 48, 64, 4)
    assert report == "lanczos fallback (no upscale model connected): 32x24 -> 64x48 (batch of 2)"


def test_hires_does_not_run_model_for_a_downscale(fake_comfy):
    out, _, report = hires_fix_upscale(photo(size=(24, 32)), 0.5, 0, 0, "area", 8,
                                               upscale_model=FailingModel(RuntimeError("must not run")))
    assert out.shape == (1, 16, 16, 3) and report.startswith("area: 32x24 -> 16x16"), report


def test_hires_cancel_is_not_swallowed(fake_comfy, anime_x2):
    fake_comfy["interrupt_after"] = 0
    with pytest.raises(Interrupted):
        hires_fix_upscale(photo(size=(24, 32)), 2.0, 0, 0, "lanczos", 8, upscale_model=anime_x2)


def test_hires_encodes_latent_with_vae_from_rgb(fake_comfy, anime_x2):
    seen = {}

    class Vae:
        def encode(self, pixels):
            seen["shape"] = tuple(pixels.shape)
            return torch.zeros(pixels.shape[0], 4, pixels.shape[1] // 8, pixels.shape[2] // 8)

    rgba = torch.rand(1, 24, 32, 4)
    out, latent, _ = hires_fix_upscale(rgba, 2.0, 0, 0, "lanczos", 8, upscale_model=anime_x2, vae=Vae())
    assert seen["shape"] == (1, 48, 64, 3) and latent["samples"].shape == (1, 4, 6, 8)


def test_attach_patcher_is_harmless_without_comfy(anime_x2):
    _host.attach_patcher(anime_x2)  # no comfy.model_patcher: nothing happens, no error
