"""Command line: ``python -m realesrgan_tiled info MODEL --json`` and ``… upscale INPUT … -o DIR``.

User mistakes (bad files, bad options) end in one clear line on stderr and exit status 2,
never a traceback; in ``upscale`` the other inputs are still processed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .archs import ACT_TYPES
from .engine import PRECISIONS
from .errors import RealESRGANTiledError

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except RealESRGANTiledError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m realesrgan_tiled", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a model file")
    info.add_argument("model", help="model file (.pth, .safetensors, .ckpt, .pt, .bin, ncnn .param) or a bundled model name")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--act", choices=ACT_TYPES, help="SRVGGNetCompact activation when the weights cannot tell")
    info.set_defaults(func=_cmd_info)

    up = sub.add_parser("upscale", help="upscale image files or folders of images")
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    up.add_argument("-o", "--output", required=True, type=Path, help="output folder (PNG files)")
    up.add_argument("--model", help="model file, or a bundled model name (default RealESRGAN_x4plus)")
    size = up.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="overall scale factor, e.g. 1.5 with an x4 model")
    size.add_argument("--width", type=int, help="exact output width (with --height)")
    up.add_argument("--height", type=int, help="exact output height (with --width)")
    up.add_argument("--passes", default="1",
                    help="model passes: 1 (default) runs the model once, then resamples to the size asked; auto runs it "
                         "again on its output while the size asked needs it (up to 4); N: like auto, at most N")
    up.add_argument("--tile", default="auto", help="tile size in px, or auto (default)")
    up.add_argument("--overlap", type=int, help="tile overlap in px (default: chosen per model)")
    up.add_argument("--precision", choices=PRECISIONS, help="default: auto (fp16 on CUDA, fp32 on CPU)")
    up.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    up.add_argument("--act", choices=ACT_TYPES, help="SRVGGNetCompact activation when the weights cannot tell")
    up.add_argument("--interpolate", metavar="MODEL_B",
                    help="blend --model with this model of the same architecture, weight by weight (network interpolation)")
    up.add_argument("--interpolate-weight", type=float, default=0.5, metavar="W",
                    help="how much of MODEL_B in the blend, 0..1 (default 0.5; 0 = --model alone)")
    up.add_argument("--quiet", action="store_true", help="no progress bar")
    up.set_defaults(func=_cmd_upscale)
    return parser


def _cmd_info(args) -> int:
    from .loading import load_model, model_info

    info = model_info(load_model(_resolve_model(args.model), act_type=args.act))
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def _resolve_model(name: str | None) -> Path:
    from .bundled_models import BUNDLED, DEFAULT_MODEL, bundled_model_path

    if name is None or name in BUNDLED:
        return bundled_model_path(name or DEFAULT_MODEL)
    return Path(name)


def _cmd_upscale(args) -> int:
    from .engine import Choices, Host, upscale
    from .errors import InputImageError
    from .image_files import collect_inputs, read_image, write_png
    from .loading import load_model

    if (args.width is None) != (args.height is None):
        raise InputImageError("--width and --height go together")
    choices = Choices(
        tile_size=None if args.tile == "auto" else _positive_int(args.tile, "--tile"),
        overlap=args.overlap,
        precision=args.precision,
        output_scale=args.scale,
        output_size=None if args.width is None else (args.height, args.width),
        passes="auto" if args.passes == "auto" else _positive_int(args.passes, "--passes", "a whole number or 'auto'"),
    )
    model = load_model(_resolve_model(args.model), act_type=args.act)
    if args.interpolate is not None:
        from .interpolate import interpolate

        model = interpolate(model, load_model(_resolve_model(args.interpolate), act_type=args.act), args.interpolate_weight)
    paths = collect_inputs(args.inputs)
    if not paths:
        raise InputImageError("no input images found")
    args.output.mkdir(parents=True, exist_ok=True)
    failures = 0
    written: set[str] = set()
    for path in paths:
        try:
            image = read_image(path)
            with _progress_bar(path.name, args.quiet) as update:
                result = upscale(image.pixels, model, choices, Host(device=args.device, progress=update))
            target = _output_path(args.output, path, written)
            write_png(target, result.images[0], image.bit_depth)
        except (RealESRGANTiledError, OSError) as e:
            failures += 1
            message = str(e) if str(path) in str(e) else f"{path}: {e}"
            print(f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR if failures else 0


def _positive_int(text: str, option: str, what: str = "a whole number of pixels or 'auto'") -> int:
    from .errors import InputImageError

    try:
        value = int(text)
    except ValueError:
        raise InputImageError(f"{option} must be {what}, not {text!r}") from None
    if value < 1:
        raise InputImageError(f"{option} must be positive, not {value}")
    return value


def _output_path(folder: Path, source: Path, written: set[str]) -> Path:
    """<stem>.png; a second input with the same stem (a.jpg after a.png) gets <stem>_<ext>.png."""
    name = f"{source.stem}.png"
    if name in written:
        name = f"{source.stem}_{source.suffix.lstrip('.').lower()}.png"
    written.add(name)
    return folder / name


class _progress_bar:
    """tqdm on stderr, one bar per image, advanced per tile."""

    def __init__(self, label: str, quiet: bool):
        self.label, self.quiet, self.bar = label, quiet, None

    def __enter__(self):
        return self._update

    def _update(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.label, unit="tile", file=sys.stderr, leave=True)
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
