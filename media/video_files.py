"""Video files in, through PyAV: open and check an input, scan its frames' timestamps and
keyframes (packets only, nothing decoded), and decode a run of frames as RGB arrays with their
timestamps. Every way a file can be wrong ends in one ``InputImageError`` line naming it.

Imports only ``av``, numpy, the standard library and ``errors``; the caller imports this
module only once it knows PyAV is installed.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter

from ..errors import InputImageError

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
                  ".mpg", ".mpeg", ".3gp", ".ogv", ".y4m", ".nut")
# AVColorSpace -> the matrix swscale converts with (it knows these five)
_MATRIX = {1: Colorspace.ITU709, 4: Colorspace.FCC, 5: Colorspace.ITU601, 6: Colorspace.ITU601,
           7: Colorspace.SMPTE240M, 9: Colorspace.BT2020, 10: Colorspace.BT2020}
UNSPECIFIED = 2  # AVCOL_PRI / TRC / SPC_UNSPECIFIED


@dataclass(frozen=True)
class Colour:
    """The colour tags (FFmpeg's AVColorPrimaries / Transfer / Space / Range numbers)."""

    primaries: int = UNSPECIFIED
    transfer: int = UNSPECIFIED
    matrix: int = UNSPECIFIED  # 0: RGB (gbr)
    range: int = 0  # 0 unspecified, 1 limited (tv), 2 full (pc)


@dataclass
class VideoSource:
    """What the pipeline needs to know of an input, from its header and a packet scan."""

    path: Path
    format_name: str
    codec: str
    width: int
    height: int
    pix_fmt: str
    bits: int  # bits per component of the decoded format (8, 10, 12, 16)
    time_base: Fraction
    rate: Fraction | None  # average frame rate (None: the file does not say)
    pts: np.ndarray  # every frame's pts in presentation order (int64)
    keyframe: np.ndarray  # bool per frame: decoding can start here
    colour: Colour = field(default_factory=Colour)  # as tagged, matrix and range resolved (see ``decode_colour``)
    tagged: Colour = field(default_factory=Colour)  # as the file says, for the output's tags
    rotation: int = 0  # counter-clockwise degrees of the display matrix
    stream_index: int = 0
    last_duration: int = 0  # the last frame's duration in time_base (its packet's, else the frame interval)
    sample_aspect: Fraction | None = None  # pixel aspect ratio (anamorphic video), None: square

    @property
    def frames(self) -> int:
        return len(self.pts)

    def seconds(self, index: int) -> float:
        return float((int(self.pts[index]) - int(self.pts[0])) * self.time_base)


def open_input(path: Path):
    """An opened input container, or one line saying why the file is not a video we can read."""
    if not path.is_file():
        raise InputImageError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        container = av.open(str(path), "r")
    except av.error.FFmpegError as e:
        raise InputImageError(f"{path}: not a readable video, or truncated ({_why(e)})") from None
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):
        container.close()
        raise InputImageError(f"{path}: an image, not a video (the upscale command takes images)")
    return container


def video_stream(container, path: Path):
    """The first video stream that is not a cover picture."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise InputImageError(f"{path}: no video stream")


def probe(path: Path) -> VideoSource:
    """Header, the first frame (rotation, colour tags, that the codec decodes) and every video
    packet's timestamp and keyframe flag. Reads the whole file once without decoding it."""
    path = Path(path)
    with open_input(path) as container:
        stream = video_stream(container, path)
        ctx = stream.codec_context
        if ctx is None or stream.codec_context.codec is None:
            raise InputImageError(f"{path}: unsupported video codec ({stream.codec_context and stream.codec_context.name})")
        first = _first_frame(container, stream, path)
        pts, keyframe, last_duration = _scan(container, stream, path)
        pix_fmt = first.format.name
        bits = max(c.bits for c in av.VideoFormat(pix_fmt).components)
        tagged = Colour(*(_tag(getattr(first, name), getattr(ctx, name), unset)
                          for name, unset in (("color_primaries", (0, 2)), ("color_trc", (0, 2)),
                                              ("colorspace", (2,)), ("color_range", (0,)))))
        rate = stream.average_rate or stream.guessed_rate
        source = VideoSource(path, container.format.name, ctx.name, first.width, first.height, pix_fmt, bits,
                             Fraction(stream.time_base), Fraction(rate) if rate else None, pts, keyframe,
                             decode_colour(tagged, pix_fmt, first.height), tagged, int(first.rotation or 0), stream.index)
        if not last_duration:
            gaps = np.diff(pts)
            last_duration = int(np.median(gaps)) if len(gaps) else round(1 / (source.rate or 25) / source.time_base)
        source.last_duration = last_duration
        sar = stream.sample_aspect_ratio or ctx.sample_aspect_ratio
        source.sample_aspect = Fraction(sar) if sar and Fraction(sar) != 1 else None
    if stream.frames and source.frames < stream.frames:
        raise InputImageError(f"{path}: truncated: {source.frames} of the {stream.frames} frames its header lists are there")
    declared = _declared_seconds(stream)
    if declared:
        have = float((int(pts[-1]) + source.last_duration - int(pts[0])) * source.time_base)
        interval = source.last_duration * float(source.time_base)
        if have + max(3 * interval, 0.02 * declared) < declared:
            raise InputImageError(f"{path}: truncated: its video stops at {have:.2f} s of the {declared:.2f} s its header lists")
    return source


def _declared_seconds(stream) -> float | None:
    """The video stream's length as its header states it (MP4's track duration, Matroska's
    DURATION tag), or None."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (AttributeError, ValueError):
        return None


def decode_colour(tagged: Colour, pix_fmt: str, height: int) -> Colour:
    """The matrix and range to convert with: as tagged, else what a player assumes for an
    untagged file of this size (BT.709 from 720 rows, BT.601 below; limited range, full for
    the ``yuvj`` formats). The output is tagged with these, so players do not guess again
    at the new size."""
    matrix = tagged.matrix
    if av.VideoFormat(pix_fmt).is_rgb:
        matrix = 0
    elif matrix not in _MATRIX:
        matrix = 1 if height >= 720 else 6
    colour_range = tagged.range if tagged.range in (1, 2) else (2 if pix_fmt.startswith("yuvj") else 1)
    return Colour(tagged.primaries, tagged.transfer, matrix, colour_range)


def _tag(on_frame: int, on_stream: int, unset: tuple[int, ...]) -> int:
    return int(on_frame) if int(on_frame) not in unset else int(on_stream)


def sws_matrix(colour: Colour):
    return _MATRIX.get(colour.matrix, Colorspace.ITU601)


def sws_range(colour: Colour):
    return ColorRange.JPEG if colour.range == 2 else ColorRange.MPEG


def decode_frames(source: VideoSource, first: int, count: int, rgb_format: str) -> Iterator[tuple[int, np.ndarray]]:
    """Frames ``first`` to ``first + count - 1`` (presentation order) as ``(pts, [H, W, 3]
    array)``: uint8 for ``rgb24``, uint16 for ``rgb48le``. It seeks to the keyframe at or before
    the first frame and decodes on from there; a frame of another size is resampled to the
    first frame's, so the encoder sees one size."""
    wanted = source.pts[first:first + count]
    if not len(wanted):
        return
    start, end = int(wanted[0]), int(wanted[-1])
    reformatter = VideoReformatter()
    done = 0
    with open_input(source.path) as container:
        stream = container.streams[source.stream_index]
        stream.thread_type = "AUTO"
        if first > 0:
            container.seek(start, stream=stream, backward=True, any_frame=False)
        try:
            for frame in _frames(container, stream):
                if frame.pts is None or frame.pts < start:
                    continue
                if frame.pts > end:
                    break
                if done == 0 and frame.pts != start:
                    raise InputImageError(f"{source.path}: frame {first} (pts {start}) cannot be decoded after a seek")
                yield frame.pts, _to_rgb(frame, source, reformatter, rgb_format)
                done += 1
                if done == count:
                    return
        except av.error.FFmpegError as e:
            raise InputImageError(f"{source.path}: corrupt at frame {first + done} ({_why(e)})") from None
    raise InputImageError(f"{source.path}: truncated or corrupt: frame {first + done} of {source.frames} did not decode")


def _to_rgb(frame, source: VideoSource, reformatter: VideoReformatter, rgb_format: str) -> np.ndarray:
    colour = source.colour
    rgb = reformatter.reformat(frame, width=source.width, height=source.height, format=rgb_format,
                               src_colorspace=sws_matrix(colour), dst_colorspace=sws_matrix(colour),
                               src_color_range=sws_range(colour), dst_color_range=ColorRange.JPEG,
                               interpolation="BICUBIC")
    return rgb.to_ndarray()


def _frames(container, stream) -> Iterator:
    for packet in container.demux(stream):
        yield from packet.decode()  # the last, empty packet flushes the decoder


def _first_frame(container, stream, path: Path):
    try:
        for frame in _frames(container, stream):
            container.seek(0)
            return frame
    except av.error.FFmpegError as e:
        raise InputImageError(f"{path}: the video does not decode ({_why(e)})") from None
    raise InputImageError(f"{path}: no video frames (empty or truncated)")


def _scan(container, stream, path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Each video packet's pts and keyframe flag, sorted into presentation order, and the
    duration of the last frame's packet."""
    pts, keys, last = [], [], (None, 0)
    try:
        container.seek(0)
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                if packet.size and packet.pts is None:
                    raise InputImageError(f"{path}: video packets without timestamps (a raw stream?): remux it into .mkv first")
                continue
            if packet.is_corrupt:
                raise InputImageError(f"{path}: corrupt video packet at pts {packet.pts}")
            pts.append(packet.pts)
            if last[0] is None or packet.pts > last[0]:
                last = (packet.pts, packet.duration or 0)
            keys.append(packet.is_keyframe)
    except av.error.FFmpegError as e:
        raise InputImageError(f"{path}: corrupt or truncated ({_why(e)})") from None
    if not pts:
        raise InputImageError(f"{path}: no video frames (empty or truncated)")
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    pts_sorted = np.asarray(pts, dtype=np.int64)[order]
    if len(np.unique(pts_sorted)) != len(pts_sorted):
        raise InputImageError(f"{path}: video frames with repeated timestamps: remux it first")
    keyframe = np.asarray(keys, dtype=bool)[order]
    keyframe[0] = True  # decoding always starts at the file's start
    return pts_sorted, keyframe, int(last[1])



def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)
