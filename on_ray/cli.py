"""``--ray`` for the ``upscale`` command: the same flags and files as a local run, on a Ray cluster.

The root ``cli.py`` adds these flags and hands over the parsed arguments with its own
``Choices`` and model builders; the model is built inside each actor, from the same flags.
"""
from __future__ import annotations

import functools
import sys

from ..errors import InputImageError

EXIT_USER_ERROR = 2


def add_flags(p) -> None:
    p.add_argument("--ray", nargs="?", const="local", metavar="local|auto|ADDRESS",
                   help="run on Ray Data: local (default) starts a cluster on this machine, auto or ADDRESS "
                        "(ray://host:10001, host:6379) joins one; -o may then be an s3://, gs:// or file:// URI. "
                        "Outputs already complete are skipped; OUT_DIR/_manifest.jsonl lists every input")
    p.add_argument("--ray-cpus", type=int, metavar="N",
                   help="with --ray: one actor per N CPUs (default: one per GPU, else one per CPU)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --ray: upscale again inputs whose output is already complete (without --ray outputs are always written)")


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


def _manifest_path(output, name: str) -> str:
    text = str(output)
    return f"{text.rstrip('/')}/{name}"
