"""Video files out, through PyAV: which container an output name means, which encoder, pixel
format and options the user's flags mean, and the writer of one segment file (frames in, a
finished file renamed into place only once its trailer is written).

Imports only ``av``, numpy, the standard library and ``errors``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, VideoReformatter

from ..errors import InputImageError
from .video_files import Colour, VideoSource, sws_matrix, sws_range

CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
ALIASES = {"h264": "libx264", "x264": "libx264", "h265": "libx265", "hevc": "libx265", "x265": "libx265",
           "av1": "libsvtav1", "svtav1": "libsvtav1", "vp9": "libvpx-vp9", "prores": "prores_ks", "nvenc": "h264_nvenc"}
# (option name, default) of each encoder's constant-quality knob
QUALITY = {"libx264": ("crf", 18), "libx265": ("crf", 20), "libsvtav1": ("crf", 28), "libvpx-vp9": ("crf", 24),
           "h264_nvenc": ("cq", 19), "hevc_nvenc": ("cq", 21), "av1_nvenc": ("cq", 28)}
EXTRA = {"libx265": {"x265-params": "log-level=error"}, "libvpx-vp9": {"row-mt": "1", "b": "0"},
         "h264_nvenc": {"rc": "vbr", "b": "0"}, "hevc_nvenc": {"rc": "vbr", "b": "0"}, "av1_nvenc": {"rc": "vbr", "b": "0"},
         "ffv1": {"level": "3", "slicecrc": "1"}, "prores_ks": {"profile": "3"}}


@dataclass(frozen=True)
class Encoding:
    """What each segment is encoded with: the same for every segment, so they concatenate."""

    container: str  # FFmpeg muxer name
    suffix: str
    codec: str  # encoder name
    pix_fmt: str
    options: dict
    colour: Colour  # the output's tags; the RGB -> YUV matrix and range
    notes: tuple[str, ...] = ()  # what of the source this encoder cannot keep

    @property
    def bits(self) -> int:
        return max(c.bits for c in av.VideoFormat(self.pix_fmt).components)


def container_for(output: Path) -> tuple[str, str]:
    suffix = output.suffix.lower()
    if suffix not in CONTAINERS:
        raise InputImageError(f"{output}: the output must end in {', '.join(CONTAINERS)}")
    return CONTAINERS[suffix], suffix


def choose_encoding(output: Path, source: VideoSource, codec: str | None, crf: float | None,
                    pix_fmt: str | None) -> Encoding:
    """The user's --codec / --crf / --pix-fmt for this output, checked against this build of
    FFmpeg and the container, with defaults that keep what the source has (its chroma layout
    and bit depth where the encoder takes them)."""
    container, suffix = container_for(output)
    name = ALIASES.get((codec or "").lower(), codec) or ("libvpx-vp9" if container == "webm" else "libx264")
    try:
        encoder = av.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        raise InputImageError(f"--codec {name}: this build of FFmpeg (PyAV) has no such encoder") from None
    if encoder.type != "video":
        raise InputImageError(f"--codec {name} is not a video encoder")
    with av.open(os.devnull, "w", format=container) as probe_out:
        if encoder.canonical_name not in probe_out.supported_codecs:
            raise InputImageError(f"--codec {name} ({encoder.canonical_name}) cannot go in a {suffix} file; "
                                  f"use .mkv{' or .mov' if encoder.canonical_name == 'prores' else ''}")
    options = dict(EXTRA.get(name, {}))
    if crf is not None and name not in QUALITY:
        raise InputImageError(f"--crf does not apply to {name}" + (" (lossless)" if name == "ffv1" else ""))
    if name in QUALITY:
        key, default = QUALITY[name]
        value = default if crf is None else crf
        options[key] = str(int(value)) if float(value).is_integer() else str(value)
    formats = [f.name for f in encoder.video_formats or ()]
    chosen = _pix_fmt(name, formats, source, pix_fmt)
    if name == "prores_ks" and "444" in chosen:
        options["profile"] = "4"  # 4444; 422 HQ (3) otherwise
    notes = ()
    if not pix_fmt and source.bits > 8 and max(c.bits for c in av.VideoFormat(chosen).components) <= 8:
        notes = (f"{name} in this build has no {source.bits}-bit format: the output is {chosen} (8-bit)",)
    return Encoding(container, suffix, name, chosen, options, output_colour(source, chosen), notes)


def _pix_fmt(codec: str, formats: list[str], source: VideoSource, wanted: str | None) -> str:
    if wanted:
        if formats and wanted not in formats:
            raise InputImageError(f"--pix-fmt {wanted}: {codec} takes {', '.join(formats)}")
        return wanted
    src = source.pix_fmt.replace("yuvj", "yuv")
    if src in formats or not formats:
        return src
    layout = "444" if av.VideoFormat(src).is_rgb else _layout(src)
    deep = source.bits > 8
    for name in ((f"yuv{layout}p10le", "yuv420p10le", "p010le") if deep else ()) + (f"yuv{layout}p", "yuv420p", "nv12"):
        if name in formats:
            return name
    return formats[0]


def _layout(pix_fmt: str) -> str:
    f = av.VideoFormat(pix_fmt)
    horizontal, vertical = f.chroma_width(2) < 2, f.chroma_height(2) < 2
    return "420" if horizontal and vertical else "422" if horizontal else "444"


def output_colour(source: VideoSource, pix_fmt: str) -> Colour:
    """The source's colour tags; an RGB target is tagged RGB, an RGB source going to YUV gets
    BT.709 limited range (an upscale is HD)."""
    colour = source.colour
    if av.VideoFormat(pix_fmt).is_rgb:
        return replace(colour, matrix=0, range=2)
    if colour.matrix == 0:
        return replace(colour, matrix=1, range=1)
    return colour


def even_size(pix_fmt: str, height: int, width: int) -> tuple[int, int]:
    """The largest size a pixel format with subsampled chroma can hold (x264 and others refuse
    an odd side there)."""
    f = av.VideoFormat(pix_fmt)
    return (height - height % 2 if f.chroma_height(2) < 2 else height,
            width - width % 2 if f.chroma_width(2) < 2 else width)


class PartWriter:
    """One segment's file: frames with their pts go in, the file is written as ``NAME.tmp``
    and renamed to ``NAME`` only by ``finish`` (trailer written, flushed to disk)."""

    def __init__(self, path: Path, encoding: Encoding, width: int, height: int, time_base: Fraction,
                 rate: Fraction | None, sample_aspect: Fraction | None = None):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.encoding, self.frames = encoding, 0
        self.time_base = time_base  # the frames' clock; the muxer may give the stream another (MP4: 1/1000 -> 1/16000)
        self.rgb = "rgb48le" if encoding.bits > 8 else "rgb24"
        self.reformatter = VideoReformatter()
        if encoding.codec == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # errors only: SVT-AV1 prints its banner per encoder otherwise
        self.out = av.open(str(self.tmp), "w", format=encoding.container)
        try:
            stream = self.out.add_stream(encoding.codec, rate=rate or Fraction(25), options=dict(encoding.options))
            stream.width, stream.height, stream.pix_fmt = width, height, encoding.pix_fmt
            stream.time_base = time_base
            ctx = stream.codec_context
            ctx.time_base = time_base
            colour = encoding.colour
            ctx.color_primaries, ctx.color_trc = colour.primaries, colour.transfer
            ctx.colorspace, ctx.color_range = colour.matrix, colour.range
            if sample_aspect:
                ctx.sample_aspect_ratio = sample_aspect
            self.stream = stream
        except (av.error.FFmpegError, ValueError) as e:
            self.abort()
            raise InputImageError(f"{encoding.codec} does not take a {width}x{height} {encoding.pix_fmt} video ({e})") from None

    def write(self, rgb: np.ndarray, pts: int) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format=self.rgb)
        colour = self.encoding.colour
        frame = self.reformatter.reformat(frame, format=self.encoding.pix_fmt, src_colorspace=sws_matrix(colour),
                                          dst_colorspace=sws_matrix(colour), src_color_range=ColorRange.JPEG,
                                          dst_color_range=sws_range(colour), interpolation="BICUBIC")
        frame.pts, frame.time_base = pts, self.time_base
        try:
            packets = self.stream.encode(frame)
        except (av.error.FFmpegError, ValueError) as e:
            raise InputImageError(f"{self.encoding.codec} could not encode ({e}); is its hardware here?") from None
        try:
            self.out.mux(packets)
        except av.error.FFmpegError as e:
            raise InputImageError(f"{self.path.name}: the {self.encoding.container} muxer refused a frame ({e})") from None
        self.frames += 1

    def finish(self) -> None:
        self.out.mux(self.stream.encode(None))
        self.out.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.out.close()
        except Exception:  # noqa: BLE001 - a half-written part is deleted whatever state its muxer is in
            pass
        self.tmp.unlink(missing_ok=True)
