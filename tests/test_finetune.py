"""Fine-tuning end to end on CPU: a small Compact generator on real photos (scikit-image's),
checked against independent oracles: our loader and spandrel on the exported file, an
uninterrupted run for --resume, a second run for the seed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from spandrel import ModelLoader

from realesrgan_tiled.archs import SRVGGNetCompact
from realesrgan_tiled.errors import RealESRGANTiledError, UpscaleCancelled
from realesrgan_tiled.loading import load_model
from realesrgan_tiled.sdwebui.models import discover
from realesrgan_tiled.train.checkpoint import checkpoint_path
from realesrgan_tiled.train.finetune import FinetuneError, Settings, finetune

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos, plus three files that cannot train: damaged, tiny, transparent."""
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        arr = getattr(skimage.data, name)()
        Image.fromarray(arr).save(folder / f"{name}.png")
    (folder / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(skimage.data.astronaut()[:20, :20]).save(folder / "tiny.png")
    rgba = np.dstack([skimage.data.coffee(), np.full(skimage.data.coffee().shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(folder / "see-through.png")
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A small x2 Compact generator with random weights: fine-tuning must beat it."""
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2)
    path = tmp_path_factory.mktemp("base") / "tiny_x2.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _settings(photos: Path, base: Path, out: Path, **overrides) -> Settings:
    values = dict(data=str(photos), base=str(base), out=str(out), iterations=24, batch_size=2, patch_size=32,
                  loss="l1", degradation="bicubic", lr=2e-3, device="cpu", eval_every=8, eval_crop=64,
                  report=str(out.with_suffix(".json")))
    return Settings(**{**values, **overrides})


def _losses(settings: Settings, **kwargs) -> tuple[dict, list[dict]]:
    seen = []
    report = finetune(settings, progress=lambda i, n, losses: seen.append(losses), **kwargs)
    return report, seen


def test_l1_run_learns_reports_and_exports_a_model_every_loader_reads(photos, base, tmp_path):
    out = tmp_path / "tuned.safetensors"
    report, losses = _losses(_settings(photos, base, out))
    first, last = np.mean([x["l1"] for x in losses[:6]]), np.mean([x["l1"] for x in losses[-6:]])
    assert last < first, f"training L1 did not go down: {first:.4f} -> {last:.4f}"
    # the bad files are reported by name and skipped; whole images are held out, never trained on
    assert set(Path(p).name for p in report["data"]["skipped"]) == {"damaged.jpg", "tiny.png", "see-through.png"}
    assert not set(report["data"]["held_out"]) & set(report["data"]["train"])
    assert report["data"]["held_out"] and len(report["data"]["train"]) + len(report["data"]["held_out"]) == len(PHOTOS)
    metrics = report["metrics"]
    assert metrics["selection"] == "psnr_y"
    assert metrics["finetuned"]["mean"]["psnr_y"] > metrics["base"]["mean"]["psnr_y"]
    assert set(metrics["base"]["per_image"]) == set(report["data"]["held_out"])
    assert json.loads(out.with_suffix(".json").read_text())["metrics"]["best_iteration"] == metrics["best_iteration"]
    # the export: our loader and spandrel (ComfyUI core's loader) read it and agree; the WebUI
    # extension lists it by the name contract, at its native scale
    ours, theirs = load_model(out), ModelLoader().load_from_file(str(out))
    listed, refused = discover([tmp_path], bundled=False)
    assert [(m.name, m.scale) for m in listed] == [("tuned (tiled)", 2)] and not refused
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() <= 1e-5
    tuned, original = load_file(str(out)), load_file(str(base))
    assert any(not torch.equal(tuned[k], original[k]) for k in original), "the EMA never moved"
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["base_model"] == str(base) and meta["data_fingerprint"] == report["data"]["fingerprint"]
    assert int(meta["iterations"]) == metrics["best_iteration"]
    assert json.loads(meta["metrics"])["finetuned"]["psnr_y"] == metrics["finetuned"]["mean"]["psnr_y"]


def test_resume_continues_the_same_run(photos, base, tmp_path):
    whole = tmp_path / "whole.safetensors"
    finetune(_settings(photos, base, whole, iterations=16, report=None))
    parted = tmp_path / "parted.safetensors"
    calls = {"n": 0}

    def stop_after_ten() -> bool:
        calls["n"] += 1
        return calls["n"] > 10

    with pytest.raises(UpscaleCancelled):
        finetune(_settings(photos, base, parted, iterations=16, report=None), should_stop=stop_after_ten)
    assert checkpoint_path(parted).is_file() and not parted.exists()
    state = torch.load(checkpoint_path(parted), weights_only=True)  # resumable without unpickling code
    assert state["iteration"] == 10
    # as `finetune --resume CHECKPOINT` alone: everything else, the 16 iterations too, comes from the checkpoint
    finetune(Settings(data=None, base=None, out=None, device=None), resume=str(checkpoint_path(parted)))
    a, b = load_file(str(whole)), load_file(str(parted))
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the uninterrupted one"


def test_same_seed_same_first_steps_other_seed_differs(photos, base, tmp_path):
    def first_losses(seed):
        _, losses = _losses(_settings(photos, base, tmp_path / f"s{seed}.safetensors", iterations=4, eval_every=4,
                                      seed=seed, report=None, force=True))
        return [x["l1"] for x in losses]

    assert first_losses(3) == first_losses(3)
    assert first_losses(3) != first_losses(4)


def test_no_gain_is_not_exported_unless_forced(photos, tmp_path):
    out = tmp_path / "same.safetensors"
    settings = _settings(photos, "realesr-animevideov3-x4", out, iterations=2, eval_every=2, lr=0.0)
    with pytest.raises(FinetuneError, match="beat the base"):
        finetune(settings)
    assert not out.exists()
    assert json.loads(out.with_suffix(".json").read_text())["exported"] is None
    finetune(_settings(photos, "realesr-animevideov3-x4", out, iterations=2, eval_every=2, lr=0.0, force=True))
    assert out.exists()


def test_a_non_finite_loss_skips_the_step_and_names_the_loss(photos, tmp_path):
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e30)  # finite weights, infinite outputs
    path = tmp_path / "overflowing.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    with pytest.raises(FinetuneError, match="non-finite l1 loss"):
        finetune(_settings(photos, path, tmp_path / "o.safetensors", iterations=40, report=None))


def test_gan_recipe_runs_both_networks(photos, base, tmp_path):
    report, losses = _losses(_settings(photos, base, tmp_path / "gan.safetensors", loss="gan", iterations=10,
                                       eval_every=10, degradation="realesrgan", force=True))
    assert report["discriminator_warmup"] == 2  # the discriminator learns alone first
    assert "gan" not in losses[0] and "discriminator" in losses[0]
    assert {"l1", "perceptual", "gan", "discriminator"} <= set(losses[-1])
    assert report["metrics"]["selection"] == "perceptual"


@pytest.mark.parametrize("case,message", [
    ("empty", "holds no images"),
    ("one-image", "at least 2"),
    ("not-ours", "fine-tuning takes"),
    ("resized", "without a fixed resize"),
    ("paired-mismatch", "needs"),
    ("paired-without-lq", "goes with --lq"),
])
def test_bad_setups_get_clear_errors(photos, base, tmp_path, case, message):
    data, base_model, extra = photos, base, {}
    if case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "one-image":
        data = tmp_path / "one"
        data.mkdir()
        Image.fromarray(skimage.data.astronaut()).save(data / "a.png")
    elif case == "not-ours":
        from spandrel.architectures.SPAN import SPAN

        base_model = tmp_path / "span.pth"
        torch.save(SPAN(num_in_ch=3, num_out_ch=3, upscale=2).state_dict(), base_model)
    elif case == "resized":
        base_model = "realesr-animevideov3-x2"  # the bundled x2 is the x4 network plus a fixed resize
    elif case == "paired-mismatch":
        lq = tmp_path / "lq"
        lq.mkdir()
        for name in PHOTOS:
            Image.fromarray(getattr(skimage.data, name)()).save(lq / f"{name}.png")  # full size, not half
        data = tmp_path / "hr"
        data.mkdir()
        for name in PHOTOS:
            Image.fromarray(getattr(skimage.data, name)()).save(data / f"{name}.png")
        extra = dict(degradation="paired", lq=str(lq))
    elif case == "paired-without-lq":
        extra = dict(degradation="paired")
    with pytest.raises(RealESRGANTiledError, match=message):
        finetune(_settings(data, base_model, tmp_path / "x.safetensors", **extra))


def test_cli_finetune_and_its_errors(photos, base, tmp_path):
    out = tmp_path / "cli.safetensors"
    run = [sys.executable, "-m", "realesrgan_tiled", "finetune", "--data", str(photos), "--base", str(base), "-o", str(out),
           "--iterations", "8", "--batch-size", "2", "--patch-size", "32", "--loss", "l1", "--degradation", "bicubic",
           "--lr", "2e-3", "--device", "cpu", "--eval-every", "8", "--eval-crop", "64", "--report", str(tmp_path / "r.json"),
           "--sharpen-gt", "on", "--ema", "off", "--quiet"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "held-out psnr_y: base" in done.stdout and "against the plain photos: base" in done.stdout and out.exists()
    written = json.loads((tmp_path / "r.json").read_text())
    assert (written["gate"]["target"], written["settings"]["sharpen_gt"], written["settings"]["ema"]) == ("usm-sharpened", True, False)
    for extra, message in ((["--base", str(base)], "needs --data"), (run[4:] + ["--lr", "-1"], "--lr must be positive")):
        bad = subprocess.run([sys.executable, "-m", "realesrgan_tiled", "finetune", *extra],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("unshuffle,scale", [(1, 4), (2, 2), (4, 1)])
def test_rrdbnet_bases_of_every_scale_train_and_export(photos, tmp_path, unshuffle, scale):
    """RRDBNet x4, and x2/x1 with pixel-unshuffle (RealESRGAN_x2plus's layout): patches fit
    the unshuffle, and the export is read by spandrel as the same network."""
    from realesrgan_tiled.archs import RRDBNet

    torch.manual_seed(0)
    net = RRDBNet(num_feat=16, num_block=1, num_grow_ch=32, num_upsample=2, unshuffle=unshuffle)  # spandrel reads 32 grow channels only
    base = tmp_path / f"rrdb_x{scale}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(base))
    out = tmp_path / "tuned.safetensors"
    report = finetune(_settings(photos, base, out, iterations=3, eval_every=3, patch_size=32, report=None, force=True))
    assert report["base"]["scale"] == scale and report["patch_size"] % (8 * scale * unshuffle) == 0
    ours, theirs = load_model(out), ModelLoader().load_from_file(str(out))
    x = torch.rand(1, 3, 16, 20)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == (1, 3, 16 * scale, 20 * scale) and (a - b[..., : 16 * scale, : 20 * scale]).abs().max() <= 1e-5


def test_gan_can_start_from_a_pretrained_discriminator(photos, base, tmp_path):
    """Real-ESRGAN ships its discriminators (RealESRGAN_x4plus_netD.pth, wrapped in params):
    one given skips the warm-up, and its weights are the ones trained on."""
    from realesrgan_tiled.archs.unet_discriminator import UNetDiscriminatorSN

    torch.manual_seed(1)
    netd = tmp_path / "netD.pth"
    torch.save({"params": UNetDiscriminatorSN().state_dict()}, netd)
    report, losses = _losses(_settings(photos, base, tmp_path / "d.safetensors", loss="gan", iterations=2, eval_every=2,
                                       discriminator=str(netd), force=True, report=None))
    assert report["discriminator_warmup"] == 0 and "gan" in losses[0]
    with pytest.raises(RealESRGANTiledError, match="--discriminator .*not a UNetDiscriminatorSN"):
        finetune(_settings(photos, base, tmp_path / "e.safetensors", loss="gan", discriminator=str(base)))
    with pytest.raises(RealESRGANTiledError, match="goes with --loss gan"):
        finetune(_settings(photos, base, tmp_path / "f.safetensors", loss="l1", discriminator=str(netd)))
