"""``video … --ray``: the keyframe segments of every input video as rows of a Ray dataset.

The driver probes each video and plans its segments exactly as the local ``video`` command
does (the same ``OUTPUT.parts/`` folder, so ``--resume`` keeps what any earlier run, local or on
Ray, finished). Each pending segment is one row: an actor seeks to its keyframe, upscales and
encodes it into its part file (written under a temporary name, renamed when complete). When a
video's segments are all in, the driver joins them by remux with the source's audio, subtitles
and chapters. A long video spreads over the actors segment by segment; short ones (one
segment each) run one per actor. The parts folder must be on storage every node sees.
"""
from __future__ import annotations

import sys
import time

from ..engine import Choices, Host
from ..errors import RealESRGANTiledError
from ..video.pipeline import Planned, abandon, finish, prepare, run_segments
from .actor import build_model
from .cluster import Cluster, Pool, size_pool

SEGMENT_COLUMNS = ("job", "segment", "frames", "seconds", "error")


class SegmentEncoder:
    """The actor: the model loaded once; each row is (job, segment) of the plans it was given."""

    def __init__(self, model, plans: list[Planned], choices: Choices | None = None, device: str | None = None,
                 threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model, self.plans, self.choices, self.device = build_model(model), plans, choices or Choices(), device

    def __call__(self, batch: dict) -> dict:
        rows = [self._segment(int(job), int(index)) for job, index in zip(batch["job"], batch["segment"])]
        return {column: [row[column] for row in rows] for column in SEGMENT_COLUMNS}

    def _segment(self, job: int, index: int) -> dict:
        plan = self.plans[job]
        segment = plan.segments[index]
        start, row = time.perf_counter(), {"job": job, "segment": index, "frames": 0, "seconds": 0.0, "error": None}
        try:
            run_segments(plan.source, [segment], plan.encoding, plan.shift, self.model, self.choices, Host(device=self.device),
                         plan.work, lambda frames: None, lambda line: None)
            row["frames"] = segment.count
        except (RealESRGANTiledError, OSError) as e:
            source = str(plan.job.source)
            row["error"] = str(e) if source in str(e) else f"{source}: {e}"
        row["seconds"] = time.perf_counter() - start
        return row


def upscale_videos(jobs, model, choices: Choices, cluster: Cluster, device: str | None = None,
                   cpus_per_actor: int | None = None, note=None) -> tuple[list[tuple], Pool | None]:
    """``jobs``: ``VideoJob``s. Returns (job, error or None) for each, and the pool that ran."""
    note = note or (lambda line: print(f"note: {line}", file=sys.stderr))
    results, plans = {}, []
    for job in jobs:
        try:
            plans.append(prepare(job, note))
        except (RealESRGANTiledError, OSError) as e:
            results[id(job)] = _message(job, e)
    rows = [{"job": j, "segment": seg.index} for j, plan in enumerate(plans) for seg in plan.pending]
    failed: dict[int, str] = {}
    pool = None
    if rows:
        import ray.data

        pool = size_pool(cluster.resources(), device, cpus_per_actor)
        pool = Pool(min(pool.size, len(rows)), pool.num_cpus, pool.num_gpus, pool.threads)
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(SegmentEncoder, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool.size),
                            num_cpus=pool.num_cpus, num_gpus=pool.num_gpus,
                            fn_constructor_kwargs={"model": model, "plans": plans, "choices": choices, "device": device,
                                                   "threads": pool.threads})
        for row in ds.iter_rows():
            if row["error"] is not None and int(row["job"]) not in failed:
                failed[int(row["job"])] = str(row["error"])
    for j, plan in enumerate(plans):
        if j in failed:
            abandon(plan)  # finished segments stay for --resume
            results[id(plan.job)] = failed[j]
            continue
        try:
            finish(plan, note)
            results[id(plan.job)] = None
        except (RealESRGANTiledError, OSError) as e:
            abandon(plan)
            results[id(plan.job)] = _message(plan.job, e)
    return [(job, results[id(job)]) for job in jobs], pool


def _message(job, e: BaseException) -> str:
    text = str(e) if isinstance(e, RealESRGANTiledError) else f"{e.filename or ''}: {e.strerror or e}"
    return text if str(job.source) in text or str(job.output) in text else f"{job.source}: {text}"
