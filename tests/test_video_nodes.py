"""The ComfyUI video nodes' work (nodes/video.py) on real encodes, without ComfyUI: clips made
from real photos with an audio track, upscaled by the bundled animevideov3-x2, read back with
PyAV and compared with the engine's own output for the same frames. ComfyUI's VIDEO class is
not importable here; ``FileVideo`` has the methods of it the node calls (``get_stream_source``,
newer builds' ``get_active_trim_window``). The real class, Load Video and Save Video run in
tests/comfyui/test_video_host.py."""
from __future__ import annotations

import io
import tempfile
from fractions import Fraction

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from realesrgan_tiled.engine import Choices, Host, upscale  # noqa: E402
from realesrgan_tiled.errors import InputImageError  # noqa: E402
from realesrgan_tiled.loading import load_model  # noqa: E402
from realesrgan_tiled.loading.bundled import model_path  # noqa: E402
from realesrgan_tiled.nodes.video import upscale_images_to_video_file, upscale_video_file  # noqa: E402

from .test_video import frames_of, make_clip, read  # noqa: E402


class FileVideo:
    def __init__(self, source, trim=None):
        self.source, self.trim = source, trim

    def get_stream_source(self):
        return self.source

    def __getattr__(self, name):
        if name == "get_active_trim_window" and self.trim is not None:
            return lambda: self.trim
        raise AttributeError(name)


@pytest.fixture(scope="module")
def model():
    return load_model(model_path("realesr-animevideov3-x2"))


@pytest.fixture(autouse=True)
def fast_backend_and_own_temp(monkeypatch, tmp_path):
    monkeypatch.setenv("REALESRGAN_TILED_BACKEND", "ncnn")  # the fastest CPU plan for these small frames
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()


def engine_frames(pixels: list[np.ndarray], model) -> list[np.ndarray]:
    images = torch.from_numpy(np.stack(pixels)).float().div(255)
    out = upscale(images, model, Choices(backend="ncnn"), Host(device="cpu")).images
    return list(out.clamp(0, 1).mul(255).round().to(torch.uint8).numpy())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))


def assert_frames_are_these(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """Each frame is its own upscale (within yuv420p and codec noise), and not its neighbour's."""
    assert len(got) == len(want)
    for i, frame in enumerate(got):
        own = psnr(frame, want[i])
        assert own > 30, (i, own)
        if i + 1 < len(want):
            assert own > psnr(frame, want[i + 1]) + 3, i


def test_a_video_is_upscaled_frame_for_frame_with_its_audio_and_timestamps(tmp_path, model):
    src = make_clip(tmp_path / "in.mp4", n=10)
    out = upscale_video_file(model, FileVideo(str(src)), 0, 0, "auto", "libx264", -1)
    a, b = read(src), read(out)
    assert out.endswith(".mp4") and str(tmp_path / "temp") in out
    assert b["times"] == a["times"] and b["size"] == (96, 128) and b["pix_fmt"] == "yuv420p"
    assert b["audio"] == a["audio"] and b["audio_codec"] == "aac"  # copied packet for packet
    assert_frames_are_these(b["pixels"], engine_frames(a["pixels"], model))


def test_a_trimmed_video_gives_only_its_window(tmp_path, model):
    src = make_clip(tmp_path / "in.mp4", n=12, rate=30)
    out = upscale_video_file(model, FileVideo(str(src), trim=(0.1, 0.2)), 0, 0, "auto", "libx265", -1)
    a, b = read(src), read(out)
    assert len(b["pts"]) == 6  # frames 3..8: [0.1 s, 0.3 s) at 30 fps
    assert_frames_are_these(b["pixels"], engine_frames(a["pixels"][3:9], model))


def test_a_video_held_in_memory_works_like_a_file(tmp_path, model):
    src = make_clip(tmp_path / "in.mkv", n=6, audio=None)
    out = upscale_video_file(model, FileVideo(io.BytesIO(src.read_bytes())), 0, 0, "fp32", "libx264", 0)
    assert_frames_are_these(read(out)["pixels"], engine_frames(read(src)["pixels"], model))


def test_an_image_batch_becomes_a_video_with_its_audio(tmp_path, model):
    pixels = frames_of("coffee", 9, 40, 56)
    images = torch.from_numpy(np.stack(pixels)).float().div(255)
    rgba = torch.cat([images, torch.ones_like(images[..., :1])], dim=-1)  # alpha is dropped
    rate = 48000
    waveform = torch.sin(torch.arange(rate * 2) / rate * 2 * torch.pi * 440).repeat(1, 2, 1) * 0.3  # 2 s stereo
    out = upscale_images_to_video_file(model, rgba, 23.976, 0, 0, "auto", "libx264", 0,
                                       {"waveform": waveform, "sample_rate": rate})
    b = read(out)
    assert b["rate"] == Fraction(24000, 1001) and len(b["pts"]) == 9 and b["pix_fmt"] == "yuv420p"
    assert b["audio_codec"] == "aac"
    audio_seconds = sum(d for _, d in b["audio"]) / rate
    assert abs(audio_seconds - 9 / (24000 / 1001)) < 0.05  # cut at the last frame, not 2 s
    assert_frames_are_these(b["pixels"], engine_frames(pixels, model))
    assert not list((tmp_path / "temp").rglob("frames.nut"))  # the input-size file is gone


def test_bad_input_names_the_file_and_leaves_no_folder(tmp_path, model):
    src = make_clip(tmp_path / "in.mp4", n=10)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(InputImageError, match="cut.mp4"):
        upscale_video_file(model, FileVideo(str(cut)), 0, 0, "auto", "libx264", -1)
    with pytest.raises(InputImageError, match="fps"):
        upscale_images_to_video_file(model, torch.zeros(2, 8, 8, 3), 0, 0, 0, "auto", "libx264", -1)
    assert list((tmp_path / "temp").iterdir()) == []
