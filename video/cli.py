"""The ``video`` command: ``python -m realesrgan_tiled video INPUT … -o OUTPUT``.

The root ``cli.py`` registers it with its shared model flags and builds the model and
``Choices``; this module owns the video flags, the output names and the per-file loop. PyAV is
imported only when the command runs, so the rest of the CLI works without it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import InputImageError, RealESRGANTiledError
from .segments import SEGMENT_FRAMES

EXIT_USER_ERROR = 2
KEEP_SUFFIX = (".mp4", ".m4v", ".mkv", ".webm", ".mov")  # an input of another container goes out as .mkv


def add_parser(sub, add_model_flags, func) -> argparse.ArgumentParser:
    v = sub.add_parser("video", help="upscale video files: audio, subtitles and timestamps kept, resumable",
                       description="Upscale video files frame by frame with bounded memory; audio and subtitles are "
                                   "copied, timestamps, rotation and colour tags kept. A killed run continues with --resume.")
    v.add_argument("inputs", nargs="+", metavar="INPUT", help="video files or folders of videos")
    v.add_argument("-o", "--output", required=True, type=Path,
                   help="output file (.mp4, .mkv, .mov, .webm) for one input, or a folder (several inputs or a folder)")
    add_model_flags(v)
    v.add_argument("--codec", help="encoder: libx264 (default; libvpx-vp9 for .webm), libx265, libsvtav1, libvpx-vp9, ffv1 "
                                   "(lossless), prores (prores_ks), h264_nvenc/hevc_nvenc/av1_nvenc where there is an NVIDIA GPU")
    v.add_argument("--crf", type=float, help="constant quality (lower is better): default 18 libx264, 20 libx265, 28 libsvtav1, "
                                             "24 libvpx-vp9, 19 NVENC (its -cq)")
    v.add_argument("--pix-fmt", help="encoder pixel format (default: the source's, e.g. yuv420p10le stays 10-bit, where the "
                                     "encoder takes it)")
    v.add_argument("--start", type=float, metavar="SECONDS", help="begin this far into the video (timestamps then start at 0)")
    v.add_argument("--duration", type=float, metavar="SECONDS", help="upscale only this long a piece")
    v.add_argument("--batch-size", type=int, metavar="N", help="frames per forward (default: auto; 1 on the CPU)")
    v.add_argument("--segment-frames", type=int, default=SEGMENT_FRAMES, metavar="N",
                   help=f"resume granularity: a new segment at the first keyframe after every N frames (default {SEGMENT_FRAMES})")
    v.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished segment")
    v.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT, and start an unfinished run over")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=func)
    return v


def require_av() -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        raise RealESRGANTiledError("the video command needs PyAV: pip install av") from None


def run(args: argparse.Namespace, choices_from, model_from) -> int:
    """Every input in turn; a failure is one ``error:`` line and the rest are still done."""
    require_av()
    from ..engine import Host
    from ..media.images import collect_inputs
    from ..media.video_files import VIDEO_SUFFIXES
    from .pipeline import VideoJob, upscale_video

    _check_numbers(args)
    choices = replace(choices_from(args), batch_size=args.batch_size)
    jobs = _outputs(args.inputs, args.output, collect_inputs(args.inputs, VIDEO_SUFFIXES))
    model = model_from(args)
    failures = 0
    for source, output in jobs:
        job = VideoJob(source, output, args.codec, args.crf, args.pix_fmt, args.start, args.duration, args.resume,
                       args.overwrite, args.segment_frames, _settings(args))
        try:
            with _Bar(source.name, args.quiet) as bar:
                upscale_video(job, model, choices, Host(device=args.device), progress=bar.update)
            if not args.quiet:
                print(f"wrote {output}")
        except (RealESRGANTiledError, OSError) as e:
            failures += 1
            text = str(e) if isinstance(e, RealESRGANTiledError) else f"{e.filename or ''}: {e.strerror or e}"
            print(f"error: {text if str(source) in text or str(output) in text else f'{source}: {text}'}", file=sys.stderr)
        except KeyboardInterrupt:
            print(f"interrupted: the same command with --resume continues {output.name} from its last finished segment",
                  file=sys.stderr)
            return 130
    return EXIT_USER_ERROR if failures else 0


def _check_numbers(args) -> None:
    for option, value, low in (("--start", args.start, 0), ("--duration", args.duration, 0), ("--crf", args.crf, 0)):
        if value is not None and not value >= low:
            raise InputImageError(f"{option} must be at least {low}, not {value}")
    if args.duration is not None and args.duration == 0:
        raise InputImageError("--duration must be positive")
    for option, value in (("--batch-size", args.batch_size), ("--segment-frames", args.segment_frames)):
        if value is not None and value < 1:
            raise InputImageError(f"{option} must be at least 1, not {value}")


def _outputs(inputs: list[str], output: Path, paths: list[Path]) -> list[tuple[Path, Path]]:
    """(input, output) pairs: with one input file ``-o`` may name the file; otherwise it is a
    folder and each output is named like its input (another container than MP4, MKV, MOV or
    WebM becomes .mkv)."""
    if not paths:
        raise InputImageError("no input videos found")
    one_file = len(inputs) == 1 and len(paths) == 1 and not Path(inputs[0]).is_dir()
    if one_file and output.suffix and not output.is_dir():
        return [(paths[0], output)]
    pairs, taken = [], set()
    for path in paths:
        suffix = path.suffix.lower() if path.suffix.lower() in KEEP_SUFFIX else ".mkv"
        name = f"{path.stem}{suffix}"
        n = 1
        while name in taken:
            n += 1
            name = f"{path.stem}_{n}{suffix}"
        taken.add(name)
        pairs.append((path, output / name))
    output.mkdir(parents=True, exist_ok=True)
    return pairs


def _settings(args) -> dict:
    """What else decides the result, for the resume check (device, backend, precision, tile and
    batch size may change between sittings: they move frames by float noise only)."""
    model = args.model
    if model and Path(model).is_file():
        stat = Path(model).stat()
        model = [str(Path(model).resolve()), stat.st_size, stat.st_mtime_ns]
    return {"model": model, "act": args.act, "interpolate": args.interpolate,
            "interpolate_weight": args.interpolate_weight if args.interpolate else None,
            "scale": args.scale, "size": [args.width, args.height], "passes": args.passes,
            "segment_frames": args.segment_frames, "start": args.start, "duration": args.duration}


class _Bar:
    """A tqdm bar on stderr over a file's frames, starting at those an earlier run finished."""

    def __init__(self, label: str, quiet: bool):
        self.label, self.quiet, self.bar = label, quiet, None

    def __enter__(self):
        return self

    def update(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=self.label, unit="frame", file=sys.stderr, leave=True)
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
