"""Keyframe-aligned segments and the work folder that makes a video run resumable.

A run is split into segments that each start at a keyframe of the source (a new one at the
first keyframe after every ``SEGMENT_FRAMES`` frames). Each is encoded to its own file in
``OUTPUT.parts/``, written under a temporary name and renamed once complete, so a file there
with a final name is a finished segment and nothing else is. ``plan.json`` records what the
parts were made from (the source file, the frame range, the model and encoder settings): a
resumed run goes on only with the same, so its result equals an uninterrupted run's.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputImageError

SEGMENT_FRAMES = 300
PLAN = "plan.json"


@dataclass(frozen=True)
class Segment:
    index: int
    first: int  # index of its first frame in the source (presentation order)
    count: int


def plan_segments(keyframe: np.ndarray, first: int, end: int, every: int = SEGMENT_FRAMES) -> list[Segment]:
    """Frames ``first .. end - 1`` in segments of at least ``every`` frames, each after the
    first starting at a keyframe (the first starts at ``first``: decoding seeks to the keyframe
    before it and skips ahead). A source with no keyframe after ``first + every`` is one segment."""
    segments, start = [], first
    while True:
        later = np.flatnonzero(keyframe[start + every:end]) if start + every < end else ()
        if not len(later):
            segments.append(Segment(len(segments), start, end - start))
            return segments
        nxt = start + every + int(later[0])
        segments.append(Segment(len(segments), start, nxt - start))
        start = nxt


def contiguous_runs(segments: list[Segment]) -> list[list[Segment]]:
    """Pending segments grouped where one follows the other: each group is decoded in one pass."""
    runs: list[list[Segment]] = []
    for seg in segments:
        if runs and runs[-1][-1].first + runs[-1][-1].count == seg.first:
            runs[-1].append(seg)
        else:
            runs.append([seg])
    return runs


class WorkFolder:
    """``OUTPUT.parts/``: plan.json and one file per finished segment."""

    def __init__(self, output: Path, suffix: str):
        self.output, self.suffix = output, suffix
        self.path = output.with_name(output.name + ".parts")

    def part(self, index: int) -> Path:
        return self.path / f"segment-{index:05d}{self.suffix}"

    def final_tmp(self) -> Path:
        return self.path / f"final{self.suffix}.tmp"

    def prepare(self, plan: dict, resume: bool, overwrite: bool) -> None:
        """Start the folder, or keep a matching one for --resume. Without --resume an existing
        folder is an error (it is an unfinished run), unless --overwrite starts over."""
        plan = json.loads(json.dumps(plan))  # as it reads back (tuples become lists)
        if self.path.exists():
            if resume:
                old = self._read_plan()
                if old != plan:
                    changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k)) if old else ["plan.json"]
                    if not overwrite:
                        raise InputImageError(f"{self.path} was made with other settings ({', '.join(changed)} differ): "
                                              f"run with those, or pass --overwrite to start over")
                    shutil.rmtree(self.path)
            elif overwrite:
                shutil.rmtree(self.path)
            else:
                raise InputImageError(f"{self.path} holds an unfinished run for {self.output.name}: "
                                      f"pass --resume to continue it or --overwrite to start over")
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob("*.tmp"):  # a killed run's half-written segment or final file
            stale.unlink()
        target = self.path / PLAN
        tmp = target.with_name(PLAN + ".tmp")
        tmp.write_text(json.dumps(plan, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, target)

    def _read_plan(self) -> dict:
        try:
            return json.loads((self.path / PLAN).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def finished(self, segments: list[Segment], frames_in) -> set[int]:
        """Indices of segments whose file is there, opens, and holds all its frames."""
        done = set()
        for seg in segments:
            path = self.part(seg.index)
            if path.is_file() and frames_in(path) == seg.count:
                done.add(seg.index)
            elif path.exists():
                path.unlink()
        return done

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def holds_parts(self) -> bool:
        return self.path.is_dir() and any(self.path.glob(f"segment-*{self.suffix}"))
