"""Frames held in memory (a ComfyUI IMAGE batch) written as a small lossless video file, with
their audio, so the video pipeline can take them like any file: segments, progress, cancel and
the remux with the audio are then the file path's, not a second copy of them.

The frames are the *input* (before the 4x upscale), so this file is small beside the result.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import InputImageError

CONTAINER = "nut"  # takes FFV1 and AAC, and keeps the exact clock (Matroska rounds to 1/1000 s, MOV refuses FFV1)
AUDIO_BIT_RATE = 192_000


def frame_rate(fps: float) -> Fraction:
    """``fps`` as a rational the encoders keep: 23.976 -> 24000/1001, 30 -> 30."""
    if not fps > 0:
        raise InputImageError(f"fps must be positive, not {fps}")
    if abs(fps - round(fps)) < 1e-6:
        return Fraction(round(fps))
    ntsc = Fraction(round(fps * 1.001) * 1000, 1001)  # 23.976, 29.97, 59.94: what the float stood for
    if abs(float(ntsc) - fps) < 5e-3:
        return ntsc
    return Fraction(fps).limit_denominator(1000)


def write_frames_file(path: Path, frames: Iterable[np.ndarray], rate: Fraction,
                      audio: tuple[np.ndarray, int] | None = None, check: Callable[[], None] | None = None) -> int:
    """Write uint8 RGB frames ``[H, W, 3]`` (FFV1, lossless) and ``audio`` (float samples
    ``[channels, samples]``, sample rate; AAC, cut at the video's end) to ``path``. ``check``
    runs before each frame (a host's cancel). Returns the frame count."""
    count = 0
    with av.open(str(path), "w", format=CONTAINER) as out:
        video = out.add_stream("ffv1", rate=rate)
        video.time_base = video.codec_context.time_base = 1 / rate
        video.pix_fmt = "bgr0"  # FFV1's 8-bit RGB: every value kept
        sound = _audio_stream(out, audio)
        for frame in frames:
            if check:
                check()
            if count == 0:
                video.width, video.height = frame.shape[1], frame.shape[0]
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = count
            out.mux(video.encode(picture.reformat(format="bgr0")))
            count += 1
        if count == 0:
            raise InputImageError("the image batch holds no frames")
        out.mux(video.encode(None))
        if sound is not None:
            _write_audio(out, sound, audio, count / rate)
    return count


def _audio_stream(out, audio):
    if audio is None:
        return None
    samples, sample_rate = audio
    if samples.ndim != 2 or samples.shape[0] not in (1, 2) or samples.shape[1] == 0:
        raise InputImageError(f"the audio must be mono or stereo samples, got shape {tuple(samples.shape)}")
    stream = out.add_stream("aac", rate=int(sample_rate))
    stream.layout = "mono" if samples.shape[0] == 1 else "stereo"
    stream.bit_rate = AUDIO_BIT_RATE
    return stream


def _write_audio(out, stream, audio, seconds: Fraction) -> None:
    samples, sample_rate = audio
    keep = min(samples.shape[1], int(np.ceil(float(seconds) * sample_rate)))  # no sound after the last frame
    planar = np.ascontiguousarray(samples[:, :keep], dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=stream.layout.name)
    frame.sample_rate, frame.pts = int(sample_rate), 0
    out.mux(stream.encode(frame))  # PyAV cuts it into the encoder's frame size
    out.mux(stream.encode(None))
