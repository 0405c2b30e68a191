"""What the video nodes do, with no ComfyUI import (``schema.py`` wraps the returned path in
ComfyUI's ``VideoFromFile``). Both run the CLI's video pipeline (``video/pipeline.py``) from a
file to a file in ComfyUI's temp directory, so no upscaled frame is ever stacked in RAM, and
ComfyUI's Save Video then copies the streams without encoding again."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from ..engine import Choices
from ..engine.health import HEALTH
from . import _host
from .upscale import _short, auto_if_zero, model_label

log = logging.getLogger("realesrgan_tiled")

VIDEO_CODECS = ("libx264", "libx265", "libsvtav1")  # what Save Video's .mp4 takes as they are
OUTPUT_NAME = "upscaled.mp4"


def upscale_video_file(upscale_model, video, tile_size: int, overlap: int, precision: str, codec: str,
                       crf: int) -> str:
    """Upscale Video (Real-ESRGAN): a VIDEO (its file, trimmed as the host says) -> the path
    of the upscaled .mp4, audio and subtitles copied."""
    from ..video.pipeline import VideoJob

    folder = Path(_host.new_temp_folder("video"))
    try:
        source, start, duration = _source_file(video, folder)
        job = VideoJob(source, folder / OUTPUT_NAME, codec=codec, crf=_crf(crf), start=start, duration=duration)
        return _run(job, upscale_model, _choices(tile_size, overlap, precision))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # a cancelled or failed run leaves no partial file
        raise


def upscale_images_to_video_file(upscale_model, images: torch.Tensor, fps: float, tile_size: int, overlap: int,
                                 precision: str, codec: str, crf: int, audio=None) -> str:
    """Upscale Images to Video (Real-ESRGAN): an IMAGE batch (+ AUDIO) -> the path of the
    upscaled .mp4. The frames go through a lossless file of the input size first, so the 4x
    frames are encoded one by one and never stacked."""
    from ..media.frames_file import frame_rate, write_frames_file
    from ..video.pipeline import VideoJob

    folder = Path(_host.new_temp_folder("frames"))
    try:
        frames = folder / "frames.nut"
        write_frames_file(frames, _rgb_bytes(images), frame_rate(fps), _samples(audio), _host.interrupt_check())
        # yuv420p, as core's Create Video makes: an RGB source would otherwise become 4:4:4
        job = VideoJob(frames, folder / OUTPUT_NAME, codec=codec, crf=_crf(crf), pix_fmt="yuv420p")
        out = _run(job, upscale_model, _choices(tile_size, overlap, precision))
        frames.unlink()
        return out
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _choices(tile_size: int, overlap: int, precision: str) -> Choices:
    return Choices(tile_size=auto_if_zero(tile_size), overlap=auto_if_zero(overlap), precision=precision)


def _crf(crf: int) -> int | None:
    """The widget's -1 means the codec's own default."""
    return None if crf is None or crf < 0 else int(crf)


def _run(job, model, choices: Choices) -> str:
    """The pipeline with ComfyUI's device, model manager and interrupt; the node's bar counts frames."""
    from ..video.pipeline import upscale_video

    bar = _host.progress_callback()
    try:
        upscale_video(job, model, choices, _host.engine_host(model), progress=bar,
                      note=lambda line: log.info("Upscale Video (Real-ESRGAN): %s", line))
    except BaseException as e:
        if _host.is_cancellation(e) or not isinstance(e, Exception):
            HEALTH.interrupted()
        else:
            HEALTH.failed(model_label(model), _short(e))
        raise
    return str(job.output)


def _source_file(video, folder: Path) -> tuple[Path, float | None, float | None]:
    """(file, start, duration) of a VIDEO. A file-backed one is read where it lies; one with
    edits its file does not hold yet, or held in memory, is written out first."""
    edits = getattr(video, "has_pending_frame_edits", None)
    if callable(edits) and edits():
        path = folder / "source.mp4"
        video.save_to(str(path))  # the host applies its edits (and trim) here
        return path, None, None
    source = video.get_stream_source()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
    else:  # BytesIO
        path = folder / "source.video"
        source.seek(0)
        with open(path, "wb") as f:
            shutil.copyfileobj(source, f)
    start, duration = _trim_window(video)
    return path, start, duration


def _trim_window(video) -> tuple[float | None, float | None]:
    """Newer ComfyUI's trimmed VIDEO: (start, duration) in seconds, duration 0 = to the end."""
    window = getattr(video, "get_active_trim_window", None)
    start, duration = window() if callable(window) else (0.0, 0.0)
    return (float(start) or None), (float(duration) or None)


def _rgb_bytes(images: torch.Tensor):
    """Each IMAGE frame as uint8 RGB, one at a time (a video has no alpha; gray becomes RGB)."""
    if images.ndim != 4 or images.shape[0] == 0:
        from ..errors import InputImageError

        raise InputImageError(f"images must be a [frames, height, width, channels] batch, got {tuple(images.shape)}")
    for frame in images:
        rgb = frame[..., :3] if frame.shape[-1] >= 3 else frame[..., :1].expand(*frame.shape[:2], 3)
        yield rgb.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


def _samples(audio):
    """ComfyUI's AUDIO ({"waveform": [batch, channels, samples], "sample_rate"}) -> the
    first item's samples and rate; None without audio."""
    if not audio or audio.get("waveform") is None:
        return None
    waveform = audio["waveform"]
    return waveform[0].float().cpu().numpy(), int(audio["sample_rate"])
