"""A folder (or list) of image files through a Ray actor pool: what ``upscale … --ray`` runs.

The driver only plans and reports: it names every output as the local CLI does, skips the
inputs whose PNG is already complete (resume), hands the rest to Ray Data as paths
(``read_binary_files``), and collects one small row per file from the actors, which decode,
upscale and write. ``OUT_DIR/_manifest.jsonl`` gets one row per input at the end.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .actor import Output, Upscaler
from .cluster import READ_CPUS, Cluster, Pool, size_pool

MANIFEST = "_manifest.jsonl"
MAX_READ_BLOCKS = 2000  # one file a block up to this: the first outputs come back early, a million files stay 2000 tasks


@dataclass
class Summary:
    rows: list[dict] = field(default_factory=list)  # one per input, in input order
    seconds: float = 0.0  # the Ray part: from the dataset's start to its last row
    first_output: float | None = None  # seconds from the dataset's start to the first row back
    pool: Pool | None = None

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)

    def line(self) -> str:
        done = self.count("done")
        rate = f", {done / self.seconds:.2f} images/s" if done and self.seconds else ""
        return (f"done {done}, skipped {self.count('skipped')}, failed {self.count('failed')} "
                f"in {self.seconds:.1f} s{rate}")


def output_names(paths: list[Path]) -> list[str]:
    """<stem>.png; a second input with the same stem (a.jpg after a.png) gets <stem>_<ext>.png,
    the names the local CLI gives."""
    names, taken = [], set()
    for path in paths:
        name = f"{path.stem}.png"
        if name in taken:
            name = f"{path.stem}_{path.suffix.lstrip('.').lower()}.png"
        taken.add(name)
        names.append(name)
    return names


def upscale_files(paths: list[Path], output_dir: str, model, choices, cluster: Cluster, device: str | None = None,
                  cpus_per_actor: int | None = None, overwrite: bool = False) -> Summary:
    """Every input gets one output or one error row; outputs already complete are skipped
    unless ``overwrite``. ``model`` is what ``Upscaler`` takes (a name, a file or a loader)."""
    out = Output(output_dir)
    out.make()
    names = output_names(paths)
    given = {str(p.resolve()): str(p) for p in paths}
    rows = {str(p.resolve()): _row(str(p), out.join(name)) for p, name in zip(paths, names)}
    pending = []
    for path, name in zip(paths, names):
        key = str(path.resolve())
        size = None if overwrite else out.complete_png_size(rows[key]["output"])
        if size:
            rows[key].update(status="skipped", width=size[0], height=size[1])
        else:
            pending.append((key, name))
    summary = Summary()
    if pending:
        summary = _run(pending, out, model, choices, cluster, device, cpus_per_actor)
        for got in summary.rows:
            key = got["input"]
            error = got["error"]
            rows[key].update(got, input=given[key], status="failed" if error else "done",
                             error=error.replace(key, given[key]) if error else None)
    for row in rows.values():  # a file Ray never listed (deleted since): an error row, not a hole
        if row["status"] is None:
            row.update(status="failed", error=f"{row['input']}: not read (the file went missing during the run)")
    summary.rows = list(rows.values())
    out.put(out.join(MANIFEST), "".join(json.dumps(row) + "\n" for row in summary.rows).encode())
    return summary


def _row(source: str, target: str) -> dict:
    return {"input": source, "output": target, "status": None, "width": 0, "height": 0, "seconds": 0.0, "error": None}


def _run(pending: list[tuple[str, str]], out: Output, model, choices, cluster: Cluster, device, cpus_per_actor) -> Summary:
    import ray.data

    pool = size_pool(cluster.resources(), device, cpus_per_actor)
    pool = Pool(min(pool.size, len(pending)), pool.num_cpus, pool.num_gpus, pool.threads)
    renamed = {key: name for key, name in pending if name != f"{Path(key).stem}.png"}
    ds = ray.data.read_binary_files([key for key, _ in pending], include_paths=True, num_cpus=READ_CPUS,
                                    override_num_blocks=min(len(pending), MAX_READ_BLOCKS))
    ds = ds.map_batches(Upscaler, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool.size),
                        num_cpus=pool.num_cpus, num_gpus=pool.num_gpus,
                        fn_constructor_kwargs={"model": model, "choices": choices, "device": device,
                                               "output_dir": out.where, "threads": pool.threads, "names": renamed})
    start = time.perf_counter()
    summary = Summary(pool=pool)
    seen = set()
    for row in ds.iter_rows():
        if summary.first_output is None:
            summary.first_output = time.perf_counter() - start
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        if row["input"] not in seen:  # a retried task's rows arrive once; this keeps it so
            seen.add(row["input"])
            summary.rows.append(row)
    summary.seconds = time.perf_counter() - start
    return summary
