"""Settings → Upscaling: tile size, overlap, precision. Stored in the host's options (so
POST /sdapi/v1/options sets them) and read at every upscale."""
from __future__ import annotations

from modules import shared

from ..engine import PRECISIONS, Choices

SECTION = ("upscaling", "Upscaling", "postprocessing")
TILE_SIZE = "realesrgan_tiled_tile_size"
OVERLAP = "realesrgan_tiled_overlap"
PRECISION = "realesrgan_tiled_precision"
DEFAULTS = {TILE_SIZE: 0, OVERLAP: 0, PRECISION: "auto"}


def register() -> None:
    """Add our options now, not only in ``on_ui_settings``: that callback runs only when the
    Gradio UI is built, and under --nowebui an option the host does not know cannot be set
    through /sdapi/v1/options. Adding an option keeps a value already saved in config.json."""
    import gradio as gr

    options = {
        TILE_SIZE: shared.OptionInfo(
            DEFAULTS[TILE_SIZE], "Real-ESRGAN (tiled): tile size", gr.Slider, {"minimum": 0, "maximum": 4096, "step": 8},
        ).info("input pixels; 0 = auto, the largest tile that fits the free memory"),
        OVERLAP: shared.OptionInfo(
            DEFAULTS[OVERLAP], "Real-ESRGAN (tiled): tile overlap", gr.Slider, {"minimum": 0, "maximum": 256, "step": 1},
        ).info("input pixels; 0 = auto, enough for the model's receptive field, so tiles blend without seams"),
        PRECISION: shared.OptionInfo(
            DEFAULTS[PRECISION], "Real-ESRGAN (tiled): precision", gr.Radio, {"choices": list(PRECISIONS)},
        ).info("auto = fp16 on CUDA where the model supports it (tiles that overflow re-run in fp32), "
               "fp32 on CPU or with --no-half"),
    }
    for key, info in options.items():
        info.section = SECTION[:2]
        if hasattr(info, "category_id"):
            info.category_id = SECTION[2]
        shared.opts.add_option(key, info)


def value(key: str):
    return shared.opts.data.get(key, DEFAULTS[key])


def choices() -> Choices:
    """The user's settings as the engine's choices; 0 and "auto" leave the decision to it."""
    precision = str(value(PRECISION))
    if precision not in PRECISIONS:
        precision = "auto"
    if precision == "auto" and getattr(shared.cmd_opts, "no_half", False):
        precision = "fp32"  # the host's --no-half: no half precision anywhere
    return Choices(tile_size=int(value(TILE_SIZE)) or None, overlap=int(value(OVERLAP)) or None, precision=precision)
