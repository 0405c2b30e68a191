"""The final file: the segment files' video packets one after the other (remuxed, not
re-encoded), with the source's audio and subtitle packets copied beside them, its container
metadata, chapters and the rotation of its display matrix. Audio a container refuses is
re-encoded (AAC; Opus in WebM) and said so; a subtitle it refuses is left out and said so.

Segments start with a keyframe and carry the source's pts, so concatenation keeps every
timestamp. Each segment's encoder starts its decode timestamps before its first pts (B-frame
reordering); where that would step back past the previous segment's last DTS, the DTS is moved
onto the previous segment's last presentation times, which keeps DTS rising and never after PTS.

Imports only ``av``, numpy, the standard library and ``errors``.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import InputImageError

SKIP_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "duration", "rotate"}
REENCODE = {"webm": ("libopus", 48000)}  # otherwise AAC at the source's rate


@dataclass(frozen=True)
class Window:
    """The part of the source's other streams that goes out, in seconds of its clock, and how
    far their timestamps move back (a --start trim)."""

    start: float | None = None
    end: float | None = None
    shift: float = 0.0


def part_frames(path: Path) -> int | None:
    """How many video packets a finished segment file holds; None when it does not open."""
    try:
        with av.open(str(path)) as c:
            return sum(1 for p in c.demux(c.streams.video[0]) if p.size)
    except (av.error.FFmpegError, IndexError):
        return None


@dataclass(frozen=True)
class Timeline:
    """The output frames' start times (``pts`` in ``time_base``, sorted) and the end of the
    last one: each packet's duration comes from here, so the last frame keeps its length."""

    pts: np.ndarray
    end: int
    time_base: Fraction
    rate: Fraction | None = None  # the source's average frame rate, for the container's header

    def place(self, pts: int, out_tb: Fraction) -> tuple[int, int]:
        """(pts, duration) in ``out_tb`` of the frame nearest ``pts``: a part counts from its own
        start, so in a coarse container (Matroska's milliseconds) its pts are rounded twice."""
        at = pts * out_tb / self.time_base
        i = int(np.searchsorted(self.pts, at))
        if i == len(self.pts) or i > 0 and at - int(self.pts[i - 1]) < int(self.pts[i]) - at:
            i -= 1
        start = round(int(self.pts[i]) * self.time_base / out_tb)
        nxt = self.pts[i + 1] if i + 1 < len(self.pts) else self.end
        return start, round(int(nxt) * self.time_base / out_tb) - start


def concatenate(parts: list[tuple[Path, Fraction]], source_path: Path, video_index: int, target: Path, container: str,
                rotation: int, window: Window, timeline: Timeline, note: Callable[[str], None]) -> None:
    """Write ``target`` (any name: the muxer is ``container``) from the parts, each with the
    time its timestamps count from, and the source's other streams."""
    with av.open(str(source_path)) as source:
        src_video = source.streams[video_index]
        options = {}
        if container in ("mp4", "mov"):  # edit lists in the video's own units, not milliseconds
            options = {"movflags": "+faststart", "movie_timescale": str(Fraction(src_video.time_base).denominator)}
        with av.open(str(target), "w", format=container, options=options) as out:
            _write(parts, source, src_video, out, container, rotation, window, timeline, note)


def _write(parts, source, src_video, out, container: str, rotation: int, window: Window, timeline: Timeline, note) -> None:
    with av.open(str(parts[0][0])) as first:
        template = first.streams.video[0]
        video = out.add_stream_from_template(template, opaque=True)  # by codec id: a decoder-only name (libdav1d) is fine
        video.time_base = template.time_base
        if timeline.rate:
            video.codec_context.framerate = timeline.rate
    _copy_tags(src_video.metadata, video.metadata)
    if rotation:
        video.set_display_rotation(rotation)
    others = _other_streams(source, out, src_video.index, container, note)
    _copy_tags(source.metadata, out.metadata)
    chapters = _chapters(source, window)
    if chapters:
        out.set_chapters(chapters)
    streams = [_video_packets(parts, video, timeline)]
    if others:
        streams.append(_other_packets(source, others, window, container in ("matroska", "webm")))
    for _, _, packet in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        out.mux(packet)
    for reencoder in others.values():
        if isinstance(reencoder, _Reencode):
            out.mux(reencoder.flush())


def _video_packets(parts: list[tuple[Path, Fraction]], stream, timeline: Timeline) -> Iterator[tuple[float, int, av.Packet]]:
    join = DtsJoin()
    for part, origin in parts:
        with av.open(str(part)) as c:
            src = c.streams.video[0]
            if bytes(src.codec_context.extradata or b"") != bytes(stream.codec_context.extradata or b""):
                raise InputImageError(f"{part}: encoded with other codec parameters than the first segment")
            offset = round(origin / stream.time_base)
            for packet in c.demux(src):
                if not packet.size:
                    continue
                if src.time_base != stream.time_base:
                    packet.rescale_ts(stream.time_base)
                pts, duration = timeline.place(packet.pts + offset, stream.time_base)
                dts = join.dts(pts, None if packet.dts is None else packet.dts + offset)
                if dts is None:
                    raise InputImageError(f"{part}: its timestamps do not join the segment before it")
                packet.pts, packet.dts, packet.duration = pts, dts, duration or packet.duration
                packet.stream = stream
                yield float(dts * stream.time_base), 0, packet
        join.part_ends()


class DtsJoin:
    """Decode timestamps across segment joins. Each segment's encoder starts its DTS before
    its first PTS (B-frame reordering); where a DTS is missing (Matroska) or does not rise past
    the previous packet's, it takes the next of the previous segment's presentation times not
    yet used as a DTS (the slots its reorder delay left free), else the previous DTS + 1. DTS
    then rise and never pass PTS; None when no such DTS exists."""

    def __init__(self):
        self.last: int | None = None
        self.recent: list[int] = []
        self.free: list[int] = []

    def dts(self, pts: int, dts: int | None) -> int | None:
        dts = None if dts is None else min(dts, pts)
        if self.last is None:
            dts = pts if dts is None else dts  # Matroska: the demuxer leaves the first DTS unset
        elif dts is None or dts <= self.last:
            while self.free and self.free[0] <= self.last:
                self.free.pop(0)
            dts = self.free.pop(0) if self.free and self.free[0] <= pts else self.last + 1
            if dts > pts:
                return None
        self.last = dts
        self.recent.append(pts)
        return dts

    def part_ends(self) -> None:
        self.free = sorted(p for p in self.recent if p > self.last)
        self.recent = []


class _Reencode:
    """Audio the output container refuses: decoded and encoded again, frame by frame."""

    def __init__(self, out, src, codec: str, rate: int | None):
        rate = rate or src.codec_context.sample_rate
        self.stream = out.add_stream(codec, rate=rate, layout=src.codec_context.layout)
        self.stream.bit_rate = min(96000 * src.codec_context.channels, 512000)
        self.resampler = av.AudioResampler(format=self.stream.codec_context.format, layout=src.codec_context.layout, rate=rate,
                                           frame_size=self.stream.codec_context.frame_size or None)

    def packets(self, packet, shift: int) -> list:
        out = []
        for frame in packet.decode():
            if frame.pts is not None:
                frame.pts -= shift
            for piece in self.resampler.resample(frame):
                out += self.stream.encode(piece)
        return out

    def flush(self) -> list:
        out = []
        for piece in self.resampler.resample(None):
            out += self.stream.encode(piece)
        return out + self.stream.encode(None)


def _other_streams(source, out, video_index: int, container: str, note: Callable[[str], None]) -> dict:
    """Source stream index -> the output stream its packets are copied to, or a ``_Reencode``."""
    chosen: dict = {}
    supported = out.supported_codecs
    for s in source.streams:
        if s.index == video_index:
            continue
        if s.type not in ("audio", "subtitle", "video"):
            note(f"{s.type} stream {s.index} ({s.codec_context.name if s.codec_context else 'unknown'}) is left out")
            continue
        name = s.codec_context.name if s.codec_context else "unknown"
        what = f"{s.type} stream {s.index} ({name})"
        if s.type == "video":
            if not s.disposition & av.stream.Disposition.attached_pic:
                note(f"{what}: only the first video stream is upscaled; this one is left out")
            continue
        if name in supported:
            try:
                copy = out.add_stream_from_template(s)
            except (av.error.FFmpegError, ValueError):
                copy = None
            if copy is not None:
                _copy_tags(s.metadata, copy.metadata)
                copy.disposition = s.disposition
                chosen[s.index] = copy
                continue
        if s.type == "audio":
            codec, rate = REENCODE.get(container, ("aac", None))
            chosen[s.index] = _Reencode(out, s, codec, rate)
            _copy_tags(s.metadata, chosen[s.index].stream.metadata)
            note(f"{what} cannot go in this container as it is: re-encoded to {codec.removeprefix('lib')}")
        else:
            note(f"{what} cannot go in this container: left out")
    return chosen


def _other_packets(source, chosen: dict, window: Window, unsigned: bool) -> Iterator[tuple[float, int, av.Packet]]:
    """The source's packets of the chosen streams in the window, moved by its shift. Where the
    container has no negative timestamps (Matroska), a packet wholly before 0 (AAC's priming
    frame from an MP4 edit list) is left out, or the muxer would move every stream later."""
    streams = [source.streams[i] for i in chosen]
    source.seek(0)
    order = 0
    for packet in source.demux(streams):
        if packet.dts is None or not packet.size:
            continue
        tb = packet.time_base
        when = float((packet.pts if packet.pts is not None else packet.dts) * tb)
        if window.start is not None and when < window.start or window.end is not None and when >= window.end:
            continue
        if unsigned and packet.pts is not None and packet.pts < 0 and packet.pts + (packet.duration or 0) <= 0:
            continue
        shift = round(Fraction(window.shift).limit_denominator(1 << 30) / tb) if window.shift else 0
        target = chosen[packet.stream.index]
        order += 1
        if isinstance(target, _Reencode):
            for encoded in target.packets(packet, shift):
                yield float(encoded.dts * encoded.time_base) if encoded.dts is not None else when, order, encoded
            continue
        if shift:
            packet.pts = None if packet.pts is None else packet.pts - shift
            packet.dts -= shift
        packet.stream = target
        yield float(packet.dts * tb), order, packet


def _chapters(source, window: Window) -> list:
    out = []
    for chapter in source.chapters():
        tb = chapter["time_base"] or Fraction(1, 1000)
        start, end = float(chapter["start"] * tb), float(chapter["end"] * tb)
        if window.end is not None and start >= window.end or window.start is not None and end <= window.start:
            continue
        shift = window.shift / float(tb)
        stop = chapter["end"] if window.end is None else min(chapter["end"], round(window.end / float(tb)))
        out.append({**chapter, "start": max(0, round(chapter["start"] - shift)), "end": max(0, round(stop - shift))})
    return out


def _copy_tags(src, dst) -> None:
    for key, value in src.items():
        if key.lower() not in SKIP_TAGS and not key.startswith("_STATISTICS") and key not in ("BPS", "NUMBER_OF_FRAMES", "NUMBER_OF_BYTES"):
            dst[key] = value
