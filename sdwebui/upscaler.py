"""Our models as WebUI upscalers (Extras, hires fix, /sdapi/v1). Imported only inside the WebUI.

The host instantiates every direct subclass of ``modules.upscaler.Upscaler`` at start
(``modelloader.load_upscalers``), passing the folder named by ``--<class name minus
'upscaler'>-models-path``: the class name below makes that ``--realesrgan-tiled-models-path``,
which ``preload.py`` declares. Its ``upscale()`` calls ``do_upscale`` once per model pass
(again when asked past the native scale) and then resizes to the exact size."""
from __future__ import annotations

import gc
import logging
import os

import torch
from modules import devices, errors, shared
from modules.upscaler import Upscaler, UpscalerData

from ..engine import Host, upscale
from ..engine.health import HEALTH
from ..errors import RealESRGANTiledError, UpscaleCancelled
from ..loading import load_model
from ..media.images import pil_to_pixels, pixels_to_pil
from . import settings
from .models import discover, native_scale, one_line

log = logging.getLogger("realesrgan_tiled")

OUR_FOLDER = "RealESRGAN-tiled"  # models/RealESRGAN-tiled


class UpscalerRealESRGAN_tiled(Upscaler):  # the host derives the command-line option from this name
    def __init__(self, dirname=None):
        self.name = OUR_FOLDER
        self.user_path = dirname
        super().__init__(create_dirs=True)
        self.cached: tuple[str, object] | None = None  # (path, descriptor): one model at a time
        listed, refused = discover(model_folders(dirname, self.model_path), scale_of=cached_native_scale)
        HEALTH.models_found(listed, refused)
        # positional: Forge's UpscalerData adds a sha256 argument after these
        self.scalers = [UpscalerData(m.name, m.path, self, m.scale) for m in listed]
        log.info("realesrgan_tiled: %d upscalers (%d files refused)", len(listed), len(refused))

    def do_upscale(self, img, selected_model):
        name = self.name_of(selected_model)
        try:
            descriptor = self.load_model(selected_model)
            result = upscale(pil_to_pixels(img), descriptor, settings.choices(), engine_host())
        except UpscaleCancelled:
            HEALTH.interrupted()
            return img  # the host's own upscalers return the input when interrupted
        except Exception as e:
            # The host's convention for an upscaler that cannot run (its ESRGAN does the same):
            # report, return the input, and the host resizes it without the model.
            message = one_line(e)
            HEALTH.fell_back(name, message)
            expected = isinstance(e, (RealESRGANTiledError, torch.cuda.OutOfMemoryError))  # no traceback for these
            errors.report(f"realesrgan_tiled: {name} could not run, the image is resized without it: {message}",
                          exc_info=not expected)
            return img
        HEALTH.ran(name, result.ran)
        return pixels_to_pil(result.images[0])

    def load_model(self, path: str):
        """The model at ``path``, cached; choosing another frees the cached one first."""
        if self.cached is not None and self.cached[0] == path:
            return self.cached[1]
        self.release()
        descriptor = load_model(path)
        descriptor.eval()
        self.cached = (path, descriptor)
        return descriptor

    def release(self) -> None:
        if self.cached is not None:
            self.cached = None
            gc.collect()
            devices.torch_gc()

    def name_of(self, path: str) -> str:
        return next((s.name for s in self.scalers if s.data_path == path), os.path.basename(str(path)))


def cached_native_scale(path) -> int:
    """The model's scale, from the host's per-file cache (keyed by path and size, refreshed when
    the file is newer), so a start does not load every model again. Failures are not cached."""
    try:
        from modules.cache import cached_data_for_file
    except ImportError:
        return native_scale(path)
    title = f"{path}:{os.path.getsize(path)}"
    entry = cached_data_for_file("realesrgan_tiled-models", title, str(path), lambda: {"scale": native_scale(path)})
    return int(entry["scale"])


def model_folders(our_option: str | None, our_folder: str) -> list[str]:
    """Where models are listed from, in order (the first of two same-named files wins): the
    folder named by --realesrgan-tiled-models-path, models/RealESRGAN-tiled, then the host's
    ESRGAN and RealESRGAN folders (their command-line paths, then the defaults)."""
    opts = shared.cmd_opts
    folders = [our_option, our_folder,
               getattr(opts, "esrgan_models_path", None), os.path.join(shared.models_path, "ESRGAN"),
               getattr(opts, "realesrgan_models_path", None), os.path.join(shared.models_path, "RealESRGAN")]
    return [f for f in folders if f]


# ---------------------------------------------------------------- the engine's host

def engine_host() -> Host:
    """The WebUI as the engine's host: its upscaler device, its interrupt, its progress
    (tiles, shown in /sdapi/v1/progress and the console bar), and Forge's memory manager."""
    return Host(device=devices.device_esrgan, progress=Progress(), check_cancel=check_interrupt,
                make_room=make_room)


def check_interrupt() -> None:
    if shared.state.interrupted:
        raise UpscaleCancelled("interrupted")


class Progress:
    """Tiles done as the state's sampling steps (what /sdapi/v1/progress and the UI read), and
    the console bar the host's own tiled upscalers show."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        shared.state.sampling_steps = total
        shared.state.sampling_step = done
        if not shared.opts.data.get("enable_upscale_progressbar", True):
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="tiled upscale (realesrgan_tiled)")
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


def make_room(device: torch.device, required: int) -> None:
    """Forge: its memory manager unloads models as far as ``required`` bytes need (its own
    upscalers free memory first too). A1111 has no manager: release the allocator's cache."""
    if device.type == "cpu":
        return
    try:
        from backend import memory_management
    except ImportError:
        devices.torch_gc()
        return
    memory_management.free_memory(memory_required=required, device=device)
