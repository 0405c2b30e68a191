"""The CLI as a user runs it: a subprocess, real files, exit codes, stderr lines."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from realesrgan_tiled.archs import SRVGGNetCompact
from realesrgan_tiled.loading import load_model
from realesrgan_tiled.media.images import read_image

from .conftest import photo, upscaled


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "realesrgan_tiled", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    torch.manual_seed(3)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2)
    path = tmp_path_factory.mktemp("models") / "tiny_x2.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    return path


def test_info_json_on_real_ncnn_weights(x4plus_path, tmp_path):
    done = cli("info", x4plus_path, "--json", cwd=tmp_path)  # from another directory
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["architecture"] == "RRDBNet" and info["key_format"] == "ncnn"
    assert (info["scale"], info["num_block"], info["num_feat"], info["num_grow_ch"]) == (4, 23, 64, 32)
    assert info["in_channels"] == info["out_channels"] == 3


def test_info_accepts_bundled_model_names():
    info = json.loads(cli("info", "realesr-animevideov3-x2", "--json").stdout)
    assert (info["architecture"], info["scale"], info["num_conv"], info["act_type"]) == ("SRVGGNetCompact", 2, 16, "prelu")


def test_info_json_on_pth(small_model):
    info = json.loads(cli("info", small_model, "--json").stdout)
    assert info["architecture"] == "SRVGGNetCompact"
    assert (info["scale"], info["num_conv"], info["num_feat"], info["act_type"]) == (2, 2, 8, "prelu")


@pytest.mark.parametrize("content,expect", [
    (None, "no such file"), (b"", "empty"), (b"\x00garbage" * 10, "not a readable"),
])
def test_info_bad_input_is_one_line_exit_2(tmp_path, content, expect):
    path = tmp_path / "model.pth"
    if content is not None:
        path.write_bytes(content)
    done = cli("info", path, "--json")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.pth" in lines[0] and expect in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_upscale_mixed_inputs_writes_each_and_reports_the_bad_one(tmp_path, small_model):
    src = tmp_path / "in"
    src.mkdir()
    rgb = (photo("astronaut", (20, 24))[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(src / "a.png")
    Image.fromarray(rgb).save(src / "b.jpg", quality=95)
    rgba = np.concatenate([rgb, np.linspace(0, 255, 20 * 24).reshape(20, 24, 1).astype(np.uint8)], -1)
    Image.fromarray(rgba).save(src / "c.png")
    Image.fromarray(rgb).convert("CMYK").save(src / "d.jpg")
    Image.fromarray(rgb).convert("P").save(src / "e.png")
    Image.fromarray(rgb[..., 0]).save(src / "f.png")  # grayscale
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    done = cli("upscale", src, "-o", out, "--model", small_model, "--quiet")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0] and "Traceback" not in done.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]
    model = load_model(small_model)
    for name, mode in [("a", "RGB"), ("c", "RGBA"), ("d", "RGB"), ("f", "L")]:
        source = next(src.glob(f"{name}.*"))
        result = Image.open(out / f"{name}.png")
        assert result.mode == mode and result.size == (48, 40)
        expected = upscaled(model, read_image(source).pixels)[0]
        got = torch.from_numpy(np.asarray(result, dtype=np.float32) / 255).reshape(expected.shape)
        assert (got - expected).abs().max() <= 1 / 255 + 1e-6  # only 8-bit rounding


def test_sixteen_bit_png_stays_sixteen_bit(tmp_path, small_model):
    import png

    arr = (photo("astronaut", (10, 12))[0].numpy() * 65535).round().astype(np.uint16)
    png.from_array(arr.reshape(10, -1), "RGB;16").save(str(tmp_path / "deep.png"))
    done = cli("upscale", tmp_path / "deep.png", "-o", tmp_path / "out", "--model", small_model, "--quiet")
    assert done.returncode == 0, done.stderr
    width, height, rows, info = png.Reader(filename=str(tmp_path / "out" / "deep.png")).asDirect()
    assert info["bitdepth"] == 16 and (width, height) == (24, 20)
    got = np.vstack([np.asarray(r, dtype=np.float64) for r in rows]).reshape(20, 24, 3) / 65535
    expected = upscaled(load_model(small_model), torch.from_numpy(arr.astype(np.float32) / 65535)[None])[0]
    assert np.abs(got - expected.numpy()).max() <= 1 / 65535 + 1e-6


def test_exact_size_and_scale_options(tmp_path, small_model):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "z.png")
    assert cli("upscale", tmp_path / "z.png", "-o", tmp_path / "o1", "--model", small_model, "--scale", "1.5", "--quiet").returncode == 0
    assert Image.open(tmp_path / "o1" / "z.png").size == (15, 15)
    exact = ("--width", "7", "--height", "9", "--quiet")
    assert cli("upscale", tmp_path / "z.png", "-o", tmp_path / "o2", "--model", small_model, *exact).returncode == 0
    assert Image.open(tmp_path / "o2" / "z.png").size == (7, 9)
    done = cli("upscale", tmp_path / "z.png", "-o", tmp_path / "o3", "--model", small_model, "--width", "7")
    assert done.returncode == 2 and "--height" in done.stderr


def test_bad_model_for_upscale_is_one_line(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "z.png")
    done = cli("upscale", tmp_path / "z.png", "-o", tmp_path / "o", "--model", tmp_path / "missing.safetensors")
    assert done.returncode == 2 and "missing.safetensors" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_pixels_converted_in_bands_equal_the_whole_image_rounding(bit_depth):
    from realesrgan_tiled.media.images import PNG_ROWS_PER_BAND, png_array

    top = 65535 if bit_depth == 16 else 255
    halves = ((torch.arange(top, dtype=torch.float64) + 0.5) / top).float()  # every rounding tie
    values = torch.cat([halves, torch.nextafter(halves, torch.tensor(2.0)), torch.nextafter(halves, torch.tensor(-2.0)),
                        torch.rand(3 * 200 * 40, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1])
    rows = 2 * PNG_ROWS_PER_BAND + 5  # more than one band, the last one partial
    pixels = values[: rows * (values.numel() // rows // 3) * 3].reshape(rows, -1, 3)
    for image in (pixels, pixels.movedim(-1, 0).contiguous().movedim(0, -1), pixels[..., :1]):  # strided, gray
        whole = np.rint(image.clamp(0, 1).numpy().astype(np.float64) * top).astype(np.uint16 if bit_depth == 16 else np.uint8)
        got = png_array(image, bit_depth)
        assert got.dtype == whole.dtype and np.array_equal(got, whole)
