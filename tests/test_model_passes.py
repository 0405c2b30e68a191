"""Past the native scale: ``Choices.passes`` runs the model again on its own output while the
target needs it (engine), in the Hires-Fix node and the CLI. The oracle is the engine run pass
by pass here, then resampled."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from realesrgan_tiled.cli import main as cli_main
from realesrgan_tiled.engine.resize import resize_images
from realesrgan_tiled.engine.settings import MAX_AUTO_PASSES, model_passes
from realesrgan_tiled.errors import InputImageError
from realesrgan_tiled.loading import load_model
from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.nodes.upscale import hires_fix_upscale

from .conftest import photo, run_engine, upscaled


@pytest.fixture(scope="module")
def x2():
    return load_model(bundled_model_path("realesr-animevideov3-x2"))


@pytest.mark.parametrize("choice, size, target, scale, count", [
    (None, (10, 10), (80, 80), 4, 1),  # the default: one pass, as before
    (1, (10, 10), (80, 80), 4, 1),
    ("auto", (10, 10), (80, 80), 4, 2),  # 40 < 80: a second pass
    ("auto", (10, 10), (40, 30), 4, 1),  # one pass covers it
    ("auto", (10, 10), (41, 40), 4, 2),  # one row short: another pass
    (2, (10, 10), (10_000, 10), 2, 2),  # N caps the count
    ("auto", (10, 10), (10**7, 10), 2, MAX_AUTO_PASSES),
    ("auto", (10, 10), (80, 80), 1, 1),  # an x1 model never gets bigger
])
def test_pass_count(choice, size, target, scale, count):
    assert model_passes(choice, size, target, scale) == count


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True])
def test_bad_pass_choices_are_refused(bad):
    with pytest.raises(InputImageError, match="model passes must be 'auto' or a whole number"):
        model_passes(bad, (8, 8), (64, 64), 2)


def test_two_passes_equal_the_model_run_twice_then_resampled(x2):
    image = photo("astronaut", (20, 24))
    result = run_engine(x2, image, output_size=(72, 96), passes="auto", resample="bicubic")
    once = upscaled(x2, image)
    expected = resize_images(upscaled(x2, once), (72, 96), "bicubic")
    assert result.ran.passes == 2 and torch.allclose(result.images, expected, atol=1e-6)
    one_pass = run_engine(x2, image, output_size=(72, 96), resample="bicubic")
    assert one_pass.ran.passes == 1
    assert torch.allclose(one_pass.images, resize_images(once, (72, 96), "bicubic"), atol=1e-6)


def test_hires_node_default_is_one_pass_and_auto_reports_the_passes(x2):
    image = photo("astronaut", (16, 16))
    out_default, _, report_default = hires_fix_upscale(image, 4.0, 0, 0, "lanczos", 8, upscale_model=x2)
    out_auto, _, report_auto = hires_fix_upscale(image, 4.0, 0, 0, "lanczos", 8, upscale_model=x2, model_passes="auto")
    assert out_default.shape == out_auto.shape == (1, 64, 64, 3)
    assert "model passes" not in report_default and "(2 model passes," in report_auto
    expected = resize_images(upscaled(x2, upscaled(x2, image)), (64, 64), "lanczos")
    assert torch.allclose(out_auto, expected, atol=1e-6)
    assert not torch.allclose(out_default, out_auto, atol=1e-3)


def test_cli_passes_auto(tmp_path):
    arr = (photo("astronaut", (12, 16))[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "in.png")
    args = ["upscale", str(tmp_path / "in.png"), "--model", "realesr-animevideov3-x2", "--scale", "4", "--quiet"]
    assert cli_main([*args, "-o", str(tmp_path / "auto"), "--passes", "auto"]) == 0
    assert cli_main([*args, "-o", str(tmp_path / "one")]) == 0
    auto = np.asarray(Image.open(tmp_path / "auto" / "in.png"))
    one = np.asarray(Image.open(tmp_path / "one" / "in.png"))
    assert auto.shape == one.shape == (48, 64, 3) and not np.array_equal(auto, one)
    assert cli_main([*args, "-o", str(tmp_path / "bad"), "--passes", "x"]) == 2
