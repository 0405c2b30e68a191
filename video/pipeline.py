"""One video file through the engine: probe, plan the segments, decode -> upscale -> encode
on three threads with small queues between them, then concatenate the segments with the
source's audio and subtitles into OUTPUT.

Memory does not grow with the video's length: at most ``QUEUE_FRAMES`` decoded frames and as
many upscaled ones wait between the threads, and the engine holds a chunk of frames. PyAV
decodes and encodes without the GIL, torch runs the model without it, so the three overlap.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..engine import Choices, Host, upscale_stream
from ..errors import InputImageError
from ..media.video_encode import Encoding, PartWriter, choose_encoding, container_for, even_size
from ..media.video_files import VideoSource, decode_frames, probe
from ..media.video_remux import Timeline, Window, concatenate, part_frames
from .segments import SEGMENT_FRAMES, Segment, WorkFolder, contiguous_runs, plan_segments

QUEUE_FRAMES = 4
_END = object()


@dataclass
class VideoJob:
    """One input, one output and the user's video flags."""

    source: Path
    output: Path
    codec: str | None = None
    crf: float | None = None
    pix_fmt: str | None = None
    start: float | None = None
    duration: float | None = None
    resume: bool = False
    overwrite: bool = False
    segment_frames: int = SEGMENT_FRAMES
    settings: dict = field(default_factory=dict)  # what else decides the result (model, size): kept in plan.json


def upscale_video(job: VideoJob, model, choices: Choices, host: Host | None = None,
                  progress: Callable[[int, int], None] | None = None, note: Callable[[str], None] | None = None) -> Path:
    """Upscale ``job.source`` into ``job.output``; ``progress(frames done, total)`` after each
    frame written (first with the frames of segments an earlier run finished). ``host`` gives
    the device, the cancel check and the model manager (its output device, dtype and per-tile
    progress are the pipeline's own). Resumable: a killed run leaves ``OUTPUT.parts/`` and
    never an OUTPUT."""
    note = note or (lambda line: print(f"note: {line}", file=sys.stderr))
    host = host or Host()
    plan = prepare(job, note)
    total, count = plan.end - plan.first, [sum(s.count for s in plan.segments if s.index in plan.done)]

    def advance(frames: int) -> None:
        count[0] += frames
        if progress:
            progress(count[0], total)

    advance(0)
    try:
        if plan.pending:
            run_segments(plan.source, plan.pending, plan.encoding, plan.shift, model, choices, host, plan.work, advance, note)
        finish(plan, note)
    except BaseException:
        abandon(plan)
        raise
    return job.output


@dataclass
class Planned:
    """A job's probed source, encoder and segments, its work folder, and the segments an
    earlier run finished: what any worker needs to encode one segment, and ``finish`` to join them."""

    job: VideoJob
    source: VideoSource
    encoding: Encoding
    first: int
    end: int
    segments: list[Segment]
    work: WorkFolder
    shift: int
    done: set[int]

    @property
    def pending(self) -> list[Segment]:
        return [s for s in self.segments if s.index not in self.done]


def prepare(job: VideoJob, note: Callable[[str], None]) -> Planned:
    """Check the output, probe the source, plan the segments and ready ``OUTPUT.parts/``
    (``--resume``: keep the finished segments of the same plan)."""
    container_for(job.output)
    if job.output.resolve() == job.source.resolve():
        raise InputImageError(f"{job.output}: the output cannot be the input")
    if job.output.is_dir():
        raise InputImageError(f"{job.output}: is a folder")
    if job.output.exists() and not job.overwrite:
        raise InputImageError(f"{job.output} exists: pass --overwrite to replace it")
    source = probe(job.source)
    encoding = choose_encoding(job.output, source, job.codec, job.crf, job.pix_fmt)
    for line in encoding.notes:
        note(line)
    first, end = frame_range(source, job.start, job.duration)
    segments = plan_segments(source.keyframe, first, end, job.segment_frames)
    work = WorkFolder(job.output, encoding.suffix)
    stat = job.source.stat()
    plan = {"source": str(job.source.resolve()), "source_bytes": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
            "frames": [first, end], "segments": [[s.first, s.count] for s in segments],
            "encoding": [encoding.codec, encoding.pix_fmt, sorted(encoding.options.items())], **job.settings}
    work.prepare(plan, job.resume, job.overwrite)
    done = work.finished(segments, part_frames)
    shift = int(source.pts[first] - source.pts[0]) if job.start else 0
    return Planned(job, source, encoding, first, end, segments, work, shift, done)


def finish(plan: Planned, note: Callable[[str], None]) -> None:
    """Every segment is in its part: concatenate them by remux with the source's audio and
    subtitles into a temporary file, rename it to OUTPUT, remove the parts."""
    source, first, end, shift, work = plan.source, plan.first, plan.end, plan.shift, plan.work
    window = Window(start=_seconds(source, first) if plan.job.start else None,
                    end=_seconds(source, end) if end < source.frames else None,
                    shift=float(shift * source.time_base))
    final = work.final_tmp()
    parts = [(work.part(s.index), (int(source.pts[s.first]) - shift) * source.time_base) for s in plan.segments]
    ends = int(source.pts[end]) if end < source.frames else int(source.pts[-1]) + source.last_duration
    timeline = Timeline(source.pts[first:end] - shift, ends - shift, source.time_base, source.rate)
    concatenate(parts, source.path, source.stream_index, final, plan.encoding.container, source.rotation, window, timeline, note)
    os.replace(final, plan.job.output)
    work.remove()


def abandon(plan: Planned) -> None:
    """After a failure: no half-written final file; the parts stay where there are any to resume."""
    plan.work.final_tmp().unlink(missing_ok=True)
    if not plan.work.holds_parts():
        plan.work.remove()  # nothing finished: nothing to resume


def frame_range(source: VideoSource, start: float | None, duration: float | None) -> tuple[int, int]:
    """The frames --start / --duration select: those whose time (from the first frame) is in
    [start, start + duration)."""
    times = (source.pts - source.pts[0]).astype(np.float64) * float(source.time_base)
    eps = 1e-6
    first = int(np.searchsorted(times, (start or 0) - eps)) if start else 0
    end = source.frames if duration is None else int(np.searchsorted(times, (start or 0) + duration - eps))
    if first >= end:
        length = times[-1] + (1 / float(source.rate) if source.rate else 0)
        raise InputImageError(f"{source.path}: --start/--duration select no frames (the video is {length:.3f} s)")
    return first, end


def _seconds(source: VideoSource, index: int) -> float:
    return float(int(source.pts[index]) * source.time_base)


def run_segments(source: VideoSource, pending: list[Segment], encoding: Encoding, shift: int, model, choices: Choices,
                 host: Host, work: WorkFolder, advance: Callable[[int], None], note: Callable[[str], None]) -> None:
    """Decode, upscale and encode the pending segments, each into its own finished part."""
    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(QUEUE_FRAMES)
    upscaled: queue.Queue = queue.Queue(QUEUE_FRAMES)
    rgb = "rgb48le" if source.bits > 8 and encoding.bits > 8 else "rgb24"
    failed: list[BaseException] = []

    def decode() -> None:
        try:
            for run in contiguous_runs(pending):
                frames = decode_frames(source, run[0].first, sum(s.count for s in run), rgb)
                try:
                    for seg in run:
                        for _, (pts, array) in zip(range(seg.count), frames):
                            if not _put(decoded, (seg, pts, array), stop):
                                return
                finally:
                    frames.close()
            _put(decoded, _END, stop)
        except BaseException as e:  # noqa: BLE001 - handed to the engine thread, which raises it
            _put(decoded, _Failed(e), stop)

    writer = _SegmentWriter(source, encoding, shift, work, advance, note)

    def encode() -> None:
        try:
            while (item := _get(upscaled, stop)) is not None and item is not _END:
                writer.write(*item)
            if item is _END:
                writer.close()
        except BaseException as e:  # noqa: BLE001 - raised again by the engine thread
            failed.append(e)
            stop.set()
        finally:
            writer.abort()

    meta: deque = deque()

    def frames():
        while (item := _get(decoded, stop)) is not _END:
            if item is None:
                return
            if isinstance(item, _Failed):
                raise item.error
            seg, pts, array = item
            meta.append((seg, pts))
            yield array

    threads = [threading.Thread(target=decode, name="video-decode", daemon=True),
               threading.Thread(target=encode, name="video-encode", daemon=True)]
    for t in threads:
        t.start()
    dtype = torch.uint8 if encoding.bits <= 8 else torch.float32
    # frames leave the device in the encoder's dtype; progress counts frames (``advance``), not tiles
    stream = upscale_stream(frames(), model, choices, replace(host, output_device="cpu", output_dtype=dtype, progress=None))
    try:
        for out in stream:
            seg, pts = meta.popleft()
            if not _put(upscaled, (seg, pts, out), stop):
                break
        else:
            _put(upscaled, _END, stop)
            threads[1].join()
    finally:
        stream.close()  # the engine hands the model back
        stop.set()
        for t in threads:
            t.join(timeout=30)
    if failed:
        raise failed[0]


class _SegmentWriter:
    """The encoder thread's side: a part file per segment, finished when the next begins."""

    def __init__(self, source: VideoSource, encoding: Encoding, shift: int, work: WorkFolder,
                 advance: Callable[[int], None], note: Callable[[str], None]):
        self.source, self.encoding, self.shift, self.work = source, encoding, shift, work
        self.advance, self.note = advance, note
        self.part: PartWriter | None = None
        self.segment: Segment | None = None
        self.size: tuple[int, int] | None = None

    def write(self, seg: Segment, pts: int, out: torch.Tensor) -> None:
        if seg is not self.segment:
            self.close()
            self.segment = seg
        array = out.numpy()
        if self.size is None:
            self.size = even_size(self.encoding.pix_fmt, *array.shape[:2])
            if self.size != array.shape[:2]:
                self.note(f"{self.encoding.pix_fmt} needs even sides: the {array.shape[1]}x{array.shape[0]} frames are "
                          f"cropped to {self.size[1]}x{self.size[0]}")
        h, w = self.size
        array = array[:h, :w]
        if array.dtype != np.uint8:
            array = np.rint(np.clip(array, 0, 1) * 65535).astype(np.uint16)
        if self.part is None:
            self.part = PartWriter(self.work.part(seg.index), self.encoding, w, h, self.source.time_base, self.source.rate,
                                   self._sample_aspect(h, w))
        # each part counts from its own first frame (a part starting late would need an edit list,
        # which MP4 keeps in coarser units); the concatenation adds the origin back
        self.part.write(np.ascontiguousarray(array), pts - int(self.source.pts[seg.first]))
        self.advance(1)

    def _sample_aspect(self, h: int, w: int):
        """The pixel aspect that keeps the source's display aspect at this size (anamorphic
        sources; --width/--height of another shape)."""
        src = self.source
        sar = Fraction(src.sample_aspect or 1) * Fraction(src.width * h, src.height * w)
        return None if abs(sar - 1) < 0.01 else sar.limit_denominator(10000)  # (not for a 1 px crop to even)

    def close(self) -> None:
        """Finish the current segment's file (all its frames are in)."""
        if self.part is None:
            return
        if self.part.frames != self.segment.count:
            raise InputImageError(f"{self.source.path}: segment {self.segment.index} got {self.part.frames} of "
                                  f"{self.segment.count} frames")
        part, self.part = self.part, None
        part.finish()

    def abort(self) -> None:
        if self.part is not None:
            self.part.abort()
            self.part = None


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event):
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return None
