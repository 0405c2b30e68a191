"""``--ray`` for the ``upscale`` command: the same flags and files as a local run, on a Ray cluster.

The root ``cli.py`` adds these flags and hands over the parsed arguments with its own
``Choices`` and model builders; the model is built inside each actor, from the same flags.
"""
from __future__ import annotations

import functools
import sys
import time

from ..errors import InputImageError

EXIT_USER_ERROR = 2


def add_flags(p, video: bool = False) -> None:
    """The --ray flags of ``upscale`` (and of ``video``, which has its own --overwrite)."""
    where = ("each video's keyframe segments spread over the actors; OUTPUT and its .parts folder must be on storage every "
             "node sees" if video else "-o may then be an s3://, gs:// or file:// URI; outputs already complete are skipped, "
             "OUT_DIR/_manifest.jsonl lists every input")
    p.add_argument("--ray", nargs="?", const="local", metavar="local|auto|ADDRESS",
                   help=f"run on Ray Data: local (the default) starts a cluster on this machine, auto or ADDRESS "
                        f"(ray://host:10001, host:6379) joins one; {where}")
    p.add_argument("--ray-cpus", type=int, metavar="N",
                   help="with --ray: one actor per N CPUs (default: one per GPU, else one per CPU)")
    if not video:
        p.add_argument("--overwrite", action="store_true",
                       help="with --ray: upscale again inputs whose output is already complete (without --ray outputs are "
                            "always written)")


def check(args) -> None:
    """--ray-cpus and --overwrite mean something only with --ray; say so rather than ignore them."""
    if args.ray is None and args.ray_cpus is not None:
        raise InputImageError("--ray-cpus needs --ray")
    if args.ray_cpus is not None and args.ray_cpus < 1:
        raise InputImageError(f"--ray-cpus must be at least 1, not {args.ray_cpus}")


def run_upscale(args, choices_from, model_from) -> int:
    from ..media.images import collect_inputs
    from .cluster import Cluster
    from .files import MANIFEST, upscale_files

    check(args)
    choices = choices_from(args)  # bad flags fail here, before a cluster starts
    paths = collect_inputs(args.inputs)
    if not paths:
        raise InputImageError("no input images found")
    model = functools.partial(model_from, args)  # built in every actor from the same flags
    with Cluster(args.ray, quiet=args.quiet) as cluster:
        summary = upscale_files(paths, str(args.output), model, choices, cluster, args.device, args.ray_cpus, args.overwrite)
    for row in summary.rows:
        if row["status"] == "failed":
            print(f"error: {row['error']}", file=sys.stderr)
    if not args.quiet:
        pool = f" on {summary.pool.describe()}" if summary.pool else ""
        print(f"{summary.line()}{pool}; manifest {summary.rows and _manifest_path(args.output, MANIFEST)}", file=sys.stderr)
    return EXIT_USER_ERROR if summary.count("failed") else 0


def run_video(args, choices_from, model_from) -> int:
    """``video … --ray``: the local command's checks, outputs and messages; the segments on Ray."""
    from dataclasses import replace

    from ..media.images import collect_inputs
    from ..media.video_files import VIDEO_SUFFIXES
    from ..video.cli import _check_numbers, _outputs, _settings, require_av
    from ..video.pipeline import VideoJob
    from .cluster import Cluster
    from .videos import upscale_videos

    require_av()
    check(args)
    _check_numbers(args)
    choices = replace(choices_from(args), batch_size=args.batch_size)
    pairs = _outputs(args.inputs, args.output, collect_inputs(args.inputs, VIDEO_SUFFIXES))
    jobs = [VideoJob(source, output, args.codec, args.crf, args.pix_fmt, args.start, args.duration, args.resume,
                     args.overwrite, args.segment_frames, _settings(args)) for source, output in pairs]
    start = time.perf_counter()
    with Cluster(args.ray, quiet=args.quiet) as cluster:
        results, pool = upscale_videos(jobs, functools.partial(model_from, args), choices, cluster, args.device, args.ray_cpus)
    failures = 0
    for job, error in results:
        if error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
        elif not args.quiet:
            print(f"wrote {job.output}")
    if not args.quiet:
        ran = f" on {pool.describe()}" if pool else ""
        print(f"videos: done {len(results) - failures}, failed {failures} in {time.perf_counter() - start:.1f} s{ran}",
              file=sys.stderr)
    return EXIT_USER_ERROR if failures else 0


def _manifest_path(output, name: str) -> str:
    text = str(output)
    return f"{text.rstrip('/')}/{name}"
