"""The video nodes in a real ComfyUI, with core's Load Video, Get Video Components and Save
Video: the example workflow over /prompt, the saved file read back with PyAV and compared with
the engine run on the same decoded frames; the IMAGE batch variant; a cancel that leaves no
partial file."""
from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import harness
import numpy as np
import pytest
import torch

av = pytest.importorskip("av")


def saved_video(server, entry: dict, node_id: str) -> Path:
    (result,) = entry["outputs"][node_id]["images"]  # Save Video's preview entry
    return server.base / "output" / result["subfolder"] / result["filename"]


def read(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        c.seek(0)
        audio = [(p.pts, p.duration) for p in c.demux(c.streams.audio[0]) if p.size] if c.streams.audio else []
        return {"pixels": [f.to_ndarray(format="rgb24") for f in frames], "rate": v.average_rate,
                "times": [f.pts * Fraction(v.time_base) for f in frames], "audio": audio,
                "audio_codec": c.streams.audio[0].codec_context.name if c.streams.audio else None}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))


def assert_upscaled_frame_for_frame(got: list[np.ndarray], source: list[np.ndarray], model) -> None:
    """Every frame is its own frame through the engine (within codec noise), in order."""
    want = harness.cpu_upscale(model, torch.from_numpy(np.stack(source)).float().div(255))
    want = list(want.clamp(0, 1).mul(255).round().to(torch.uint8).numpy())
    assert len(got) == len(want)
    for i in range(0, len(got) - 4, 5):
        own = psnr(got[i], want[i])
        assert own > 30 and own > psnr(got[i], want[i + 4]) + 2, (i, own)


def test_example_upscale_video_through_load_and_save_video(server, host_base, bundled):
    prompt = harness.with_unique_prefix(harness.load_api("upscale_video"))
    entry = server.run_prompt(prompt, timeout=600)
    out = read(saved_video(server, entry, "4"))
    source = read(host_base / "input" / "sample.mp4")
    assert out["times"] == source["times"] and out["rate"] == 24
    assert out["pixels"][0].shape == (288, 384, 3)
    assert out["audio"] == source["audio"] and out["audio_codec"] == "aac"  # copied by our node, then by Save Video
    assert_upscaled_frame_for_frame(out["pixels"], source["pixels"], bundled("realesr-animevideov3-x2"))


def test_image_batch_to_video_keeps_fps_and_audio(server, host_base, bundled):
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "sample.mp4"}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "RealESRGAN_LoadUpscaleModel", "inputs": {"model_name": "bundled/realesr-animevideov3-x2"}},
        "4": {"class_type": "RealESRGAN_UpscaleImagesToVideo",
              "inputs": {"upscale_model": ["3", 0], "images": ["2", 0], "fps": ["2", 2], "tile_size": 0, "overlap": 0,
                         "precision": "auto", "codec": "libx264", "crf": -1, "audio": ["2", 1]}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "video/frames",
                                                    "format": "auto", "codec": "auto"}},
    }
    entry = server.run_prompt(harness.with_unique_prefix(prompt), timeout=600)
    out = read(saved_video(server, entry, "5"))
    source = read(host_base / "input" / "sample.mp4")
    assert len(out["pixels"]) == 48 and out["rate"] == 24 and out["audio_codec"] == "aac"
    assert abs(sum(d for _, d in out["audio"]) / 48000 - 2.0) < 0.05
    assert_upscaled_frame_for_frame(out["pixels"], source["pixels"], bundled("realesr-animevideov3-x2"))


def test_a_cancelled_video_leaves_no_partial_file(server, host_base):
    prompt = harness.with_unique_prefix(harness.load_api("upscale_video"))
    prompt["2"]["inputs"]["model_name"] = "bundled/realesr-animevideov3-x4"  # the x4 output: more to cancel
    temp = host_base / "temp" / "realesrgan_tiled"
    earlier = set(temp.glob("*"))  # finished results of the tests before, still in use by ComfyUI's cache
    started = time.monotonic()
    prompt_id = server.queue(prompt)
    while not server.queue_state()["queue_running"]:
        assert time.monotonic() - started < 60, "the prompt never started"
        time.sleep(0.1)
    while not set(temp.glob("video-*/upscaled.mp4.parts/*.tmp")):  # frames are being encoded
        assert time.monotonic() - started < 240, server.log()[-3000:]
        time.sleep(0.2)
    server.interrupt()
    entry = server.wait(prompt_id, timeout=60)
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    assert not entry["outputs"]
    assert set(temp.glob("*")) == earlier
