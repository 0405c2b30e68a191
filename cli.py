"""Command line: ``python -m realesrgan_tiled info MODEL --json``, ``… upscale INPUT … -o DIR``,
``… video INPUT … -o OUTPUT`` and ``… finetune --data HR_DIR --base MODEL -o OUT.safetensors``.

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
from .runtimes.backend import BACKENDS

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
    # a str, not a Path: with --ray it may be a URI (Path would fold file:// to file:/)
    up.add_argument("-o", "--output", required=True, help="output folder (PNG files); with --ray also s3://, gs://, file://")
    add_model_flags(up)
    up.add_argument("--quiet", action="store_true", help="no progress bar")
    from .on_ray.cli import add_flags as add_ray_flags

    add_ray_flags(up)
    up.set_defaults(func=_cmd_upscale)
    from .video.cli import add_parser as add_video

    add_ray_flags(add_video(sub, add_model_flags, _cmd_video), video=True)
    _add_finetune(sub)
    return parser


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The model, size, tile, precision, device and backend flags ``upscale`` and ``video`` share."""
    p.add_argument("--model", help="model file, or a bundled model name (default RealESRGAN_x4plus)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="overall scale factor, e.g. 1.5 with an x4 model")
    size.add_argument("--width", type=int, help="exact output width (with --height)")
    p.add_argument("--height", type=int, help="exact output height (with --width)")
    p.add_argument("--passes", default="1",
                   help="model passes: 1 (default) runs the model once, then resamples to the size asked; auto runs it "
                        "again on its output while the size asked needs it (up to 4); N: like auto, at most N")
    p.add_argument("--tile", default="auto", help="tile size in px, or auto (default)")
    p.add_argument("--overlap", type=int, help="tile overlap in px (default: chosen per model)")
    p.add_argument("--precision", choices=PRECISIONS, help="default: auto (fp16 on CUDA; on the CPU fp32, or bf16 where the CPU runs it "
                        "natively and it measured faster at >= 50 dB)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=BACKENDS,
                   help="auto (default: on the CPU, the fastest of torch, ncnn and openvino, measured), torch, ncnn (CPU, fp32) "
                        "or openvino (CPU, fp32/bf16; pip install realesrgan_tiled[openvino])")
    p.add_argument("--act", choices=ACT_TYPES, help="SRVGGNetCompact activation when the weights cannot tell")
    p.add_argument("--interpolate", metavar="MODEL_B",
                   help="blend --model with this model of the same architecture, weight by weight (network interpolation)")
    p.add_argument("--interpolate-weight", type=float, default=0.5, metavar="W",
                   help="how much of MODEL_B in the blend, 0..1 (default 0.5; 0 = --model alone)")


def _choices(args):
    """``Choices`` from the shared model flags."""
    from .engine import Choices
    from .errors import InputImageError

    if (args.width is None) != (args.height is None):
        raise InputImageError("--width and --height go together")
    return Choices(
        tile_size=None if args.tile == "auto" else _positive_int(args.tile, "--tile"),
        overlap=args.overlap,
        precision=args.precision,
        output_scale=args.scale,
        output_size=None if args.width is None else (args.height, args.width),
        passes="auto" if args.passes == "auto" else _positive_int(args.passes, "--passes", "a whole number or 'auto'"),
        backend=args.backend,
    )


def _model(args):
    """The model the shared flags name (blended with --interpolate's)."""
    from .loading import load_model
    from .loading.bundled import model_path

    model = load_model(model_path(args.model), act_type=args.act)
    if args.interpolate is not None:
        from .loading.interpolate import interpolate

        model = interpolate(model, load_model(model_path(args.interpolate), act_type=args.act), args.interpolate_weight)
    return model


def _cmd_video(args) -> int:
    from .on_ray import cli as on_ray
    from .video.cli import run

    if args.ray is not None:
        return on_ray.run_video(args, _choices, _model)
    on_ray.check(args)
    return run(args, _choices, _model)


def _add_finetune(sub) -> None:
    ft = sub.add_parser("finetune", help="fine-tune a model on your own photos; exported only if it beats the base on held-out images")
    ft.add_argument("--data", metavar="HR_DIR", help="folder of high-resolution training photos")
    ft.add_argument("--base", metavar="MODEL", help="model to start from: a bundled name, a file, or an ncnn .param")
    ft.add_argument("-o", "--output", metavar="OUT.safetensors", help="the fine-tuned model")
    ft.add_argument("--val", metavar="HR_DIR", help="held-out photos (default: a fifth of --data's images, whole)")
    ft.add_argument("--iterations", type=int, help="training steps in all (default 1000; on --resume, the run's own)")
    ft.add_argument("--batch-size", type=int, help="patches per step (default 8 on CUDA, 4 on CPU)")
    ft.add_argument("--patch-size", type=int, help="HR patch side in px (default 256 on CUDA, 128 on CPU)")
    ft.add_argument("--loss", choices=("l1", "perceptual", "gan"), default="gan",
                    help="l1; perceptual (l1 + a perceptual distance); gan (both + U-Net discriminator, Real-ESRGAN's recipe; default)")
    ft.add_argument("--degradation", choices=("realesrgan", "bicubic", "paired"), default="realesrgan",
                    help="how training inputs are made: Real-ESRGAN's second-order pipeline (default), bicubic + JPEG, "
                         "or your own LR images (paired, with --lq)")
    ft.add_argument("--lq", metavar="LQ_DIR", help="with --degradation paired: LR images named like the HR ones")
    ft.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    ft.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed gives the same run")
    ft.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    ft.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint (OUT.resume, beside OUT.safetensors)")
    ft.add_argument("--report", metavar="REPORT.json", help="write the held-out metrics of base and fine-tuned model here")
    ft.add_argument("--force", action="store_true", default=None, help="export even if the result does not beat the base")
    ft.add_argument("--vgg19", metavar="FILE",
                    help="torchvision vgg19 weights (vgg19-dcbb9e9d.pth): Real-ESRGAN's VGG19 feature loss; default: the ST-LPIPS VGG16 "
                         "distance, which ships with the train extra")
    ft.add_argument("--discriminator", metavar="FILE",
                    help="with --loss gan: start from this UNetDiscriminatorSN (e.g. RealESRGAN_x4plus_netD.pth) instead of a new one")
    ft.add_argument("--sharpen-gt", choices=("on", "off"),
                    help="train (and gate) against USM-sharpened photos, as Real-ESRGAN does: default on for perceptual "
                         "and gan, off for l1 (a fidelity fine-tune)")
    ft.add_argument("--ema", choices=("on", "off"), default="on",
                    help="export an EMA of the weights (decay warming up to 0.999; default on), or the weights themselves")
    ft.add_argument("--eval-every", type=int, help="evaluate and checkpoint every N iterations (default: a tenth of the run)")
    ft.add_argument("--eval-crop", default="512", help="held-out images are centre-cropped to this many px a side, or 'none'")
    ft.add_argument("--quiet", action="store_true", help="no progress bar")
    ft.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args) -> int:
    from .train.finetune import Settings, finetune

    if args.resume is None and not (args.data and args.base and args.output):
        raise RealESRGANTiledError("finetune needs --data, --base and -o (or --resume CHECKPOINT)")
    for option, value in (("--iterations", args.iterations), ("--eval-every", args.eval_every),
                          ("--batch-size", args.batch_size), ("--patch-size", args.patch_size)):
        if value is not None and value < 1:
            raise RealESRGANTiledError(f"{option} must be at least 1, not {value}")
    if not args.lr > 0:
        raise RealESRGANTiledError(f"--lr must be positive, not {args.lr}")
    crop = None if args.eval_crop.lower() == "none" else _positive_int(args.eval_crop, "--eval-crop", "a whole number of px or 'none'")
    settings = Settings(data=args.data, base=args.base, out=args.output, val=args.val, iterations=args.iterations,
                        batch_size=args.batch_size, patch_size=args.patch_size, loss=args.loss, degradation=args.degradation,
                        lq=args.lq, lr=args.lr, seed=args.seed, device=args.device, report=args.report, force=args.force,
                        vgg19=args.vgg19, eval_every=args.eval_every, eval_crop=crop, discriminator=args.discriminator,
                        sharpen_gt=None if args.sharpen_gt is None else args.sharpen_gt == "on", ema=args.ema == "on")
    logging.getLogger("realesrgan_tiled").setLevel(logging.INFO)
    try:
        with _progress_bar("fine-tuning", args.quiet, unit="it") as progress:
            report = finetune(settings, resume=args.resume, progress=progress)
    except OSError as e:  # a full disk, an unwritable folder: one line, the checkpoint of the last evaluation stays
        raise RealESRGANTiledError(f"{e.filename or ''}: {e.strerror or e}") from None
    metrics = report["metrics"]
    key = metrics["selection"]
    print(f"held-out {key}: base {metrics['base']['mean'][key]:.4f} -> fine-tuned {metrics['finetuned']['mean'][key]:.4f} "
          f"(gate: {report['gate']['says']}; best at iteration {metrics['best_iteration']}); wrote {report['exported']}")
    if "against_plain" in metrics["finetuned"]:  # sharpened targets: what the gain costs in fidelity to the photos
        plain = {side: metrics[side]["against_plain"]["mean"]["psnr_y"] for side in ("base", "finetuned")}
        print(f"held-out psnr_y against the plain photos: base {plain['base']:.4f} -> fine-tuned {plain['finetuned']:.4f}")
    return 0


def _cmd_info(args) -> int:
    from .loading import load_model, model_info
    from .loading.bundled import model_path

    info = model_info(load_model(model_path(args.model), act_type=args.act))
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def _cmd_upscale(args) -> int:
    from .errors import InputImageError
    from .media.images import collect_inputs
    from .on_ray import cli as on_ray

    if args.ray is not None:
        return on_ray.run_upscale(args, _choices, _model)
    on_ray.check(args)
    args.output = Path(args.output)
    choices = _choices(args)
    model = _model(args)
    paths = collect_inputs(args.inputs)
    if not paths:
        raise InputImageError("no input images found")
    args.output.mkdir(parents=True, exist_ok=True)
    failures = 0
    written: set[str] = set()
    for path in paths:
        try:
            _upscale_file(path, model, choices, args, written)
        except (RealESRGANTiledError, OSError) as e:
            failures += 1
            message = str(e) if str(path) in str(e) else f"{path}: {e}"
            print(f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR if failures else 0


def _upscale_file(path: Path, model, choices, args, written: set[str]) -> None:
    """One input to one PNG. Each big array is dropped as soon as the next step has what it
    needs, so at most the float result and the PNG's pixels live at once, and nothing of this
    image is alive (the locals die here) while the next one is read and upscaled."""
    from .engine import Host, upscale
    from .media.images import png_array, read_image, write_png_array

    image = read_image(path)
    with _progress_bar(path.name, args.quiet) as update:
        result = upscale(image.pixels, model, choices, Host(device=args.device, progress=update))
    bit_depth = image.bit_depth
    del image  # the float input
    target = _output_path(args.output, path, written)
    pixels = png_array(result.images[0], bit_depth)
    del result  # the float result, 4 (16-bit: 2) times the size of ``pixels``: gone before the encoder's copy
    write_png_array(target, pixels)


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
    """tqdm on stderr with an ETA: one bar per upscaled image (advanced per tile), or over a
    fine-tuning run's iterations (with the step's losses)."""

    def __init__(self, label: str, quiet: bool, unit: str = "tile"):
        self.label, self.quiet, self.unit, self.bar = label, quiet, unit, None

    def __enter__(self):
        return self._update

    def _update(self, done: float, total: int, postfix: dict | None = None) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            # a resumed run's first report is past 0: start the bar there, so the rate counts this sitting only
            self.bar = tqdm(total=total, initial=max(done - 1, 0), desc=self.label, unit=self.unit, file=sys.stderr, leave=True)
        self.bar.update(done - self.bar.n)
        if postfix:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
