"""Everything the nodes need from ComfyUI, imported lazily inside functions.

ComfyUI's modules (``comfy.*``, ``folder_paths``) are only importable inside ComfyUI, so this
module never imports them at import time: the package (and CI, which has no ComfyUI) can import
the nodes and exercise their Python logic. Each helper degrades to a plain-PyTorch behaviour when
a host feature is missing (older/newer ComfyUI builds differ in what they expose).
"""
from __future__ import annotations

import inspect
import logging
import os
import sys

import torch

from ..loading.bundled import BUNDLED, DEFAULT_MODEL

log = logging.getLogger("realesrgan_tiled")

CATEGORY = "image/upscaling"
FOLDER = "upscale_models"
BUNDLED_PREFIX = "bundled/"
NCNN_SUFFIX = ".param"


# ---------------------------------------------------------------- model names (folder_paths)

def bundled_names() -> list[str]:
    """Stable combo names of the bundled models, the default first (they end up in saved workflows)."""
    ordered = [DEFAULT_MODEL] + [n for n in BUNDLED if n != DEFAULT_MODEL]
    return [BUNDLED_PREFIX + n for n in ordered]


def list_model_names() -> list[str]:
    """The ``model_name`` choices: bundled models first (so a fresh node defaults to one that
    works without any download), then every file in ``models/upscale_models`` that
    ``folder_paths`` lists, plus ncnn ``.param`` files; the ``.bin`` half of an ncnn pair is
    hidden (it is loaded through its ``.param``)."""
    import folder_paths

    try:
        files = list(folder_paths.get_filename_list(FOLDER))
    except Exception as e:  # a broken extra_model_paths.yaml must not hide the bundled models
        log.warning("realesrgan_tiled: could not list %s: %s", FOLDER, e)
        files = []
    params = set(_scan_param_files(folder_paths))
    files = sorted((set(files) | params) - {_bin_of(p) for p in params})
    return bundled_names() + files


def _bin_of(param_name: str) -> str:
    return param_name[: -len(NCNN_SUFFIX)] + ".bin"


def _scan_param_files(folder_paths) -> list[str]:
    """ncnn ``.param`` files under the upscale_models folders, as names relative to their folder.

    We scan for them ourselves instead of adding ``.param`` to the folder's extension set: in
    ComfyUI that set is the one object shared by every model folder (checkpoints, loras, ...),
    and core's own UpscaleModelLoader cannot load ncnn files anyway."""
    out = []
    try:
        roots = folder_paths.get_folder_paths(FOLDER)
    except Exception:
        return out
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for name in filenames:
                if name.lower().endswith(NCNN_SUFFIX):
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    out.append(rel.replace(os.sep, "/") if os.sep != "/" else rel)
    return out


def bundled_name(model_name: str) -> str | None:
    """``bundled/RealESRGAN_x4plus`` -> ``RealESRGAN_x4plus``; None for a file name."""
    if model_name.startswith(BUNDLED_PREFIX) and model_name[len(BUNDLED_PREFIX):] in BUNDLED:
        return model_name[len(BUNDLED_PREFIX):]
    return None


def resolve_model_path(model_name: str) -> str:
    """Combo name -> file path. Raises ``ModelLoadError`` naming the file when it is missing."""
    from ..errors import ModelLoadError
    from ..loading.bundled import bundled_model_path

    bundled = bundled_name(model_name)
    if bundled is not None:
        return str(bundled_model_path(bundled))
    import folder_paths

    path = folder_paths.get_full_path(FOLDER, model_name)
    if path is None:
        raise ModelLoadError(
            f"{model_name}: no such file in models/{FOLDER} "
            f"(searched: {', '.join(folder_paths.get_folder_paths(FOLDER)) or 'no folders'})"
        )
    return path


def new_temp_folder(kind: str) -> str:
    """A fresh folder under ComfyUI's temp directory (emptied at every start, so a killed run
    leaves nothing for long), else under the system's."""
    import tempfile

    try:
        import folder_paths
        base = os.path.join(folder_paths.get_temp_directory(), "realesrgan_tiled")
    except ImportError:
        base = None
    if base:
        os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{kind}-", dir=base)


# ---------------------------------------------------------------- model management

def torch_device() -> torch.device:
    try:
        import comfy.model_management as mm
    except ImportError:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return mm.get_torch_device()


def offload_device() -> torch.device:
    try:
        import comfy.model_management as mm
    except ImportError:
        return torch.device("cpu")
    return torch.device(mm.unet_offload_device())


def output_device_dtype() -> tuple[torch.device, torch.dtype]:
    """Where the host wants IMAGE tensors between nodes (CPU/float32 unless told otherwise)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return torch.device("cpu"), torch.float32
    device = mm.intermediate_device() if hasattr(mm, "intermediate_device") else torch.device("cpu")
    dtype = mm.intermediate_dtype() if hasattr(mm, "intermediate_dtype") else torch.float32
    return torch.device(device), dtype


def attach_patcher(descriptor) -> None:
    """Give our descriptor a ``patcher`` like core's loader does in current ComfyUI (whose
    ImageUpscaleWithModel reads ``upscale_model.patcher.load_device`` and loads it with
    ``load_models_gpu``). Harmless where the host has no use for it (0.3.x)."""
    try:
        import comfy.model_management as mm
        import comfy.model_patcher as mp
    except ImportError:
        return
    patcher_cls = getattr(mp, "CoreModelPatcher", None) or getattr(mp, "ModelPatcher", None)
    if patcher_cls is None:
        return
    try:
        descriptor.patcher = patcher_cls(
            descriptor.model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
        )
        descriptor.patcher.realesrgan_tiled_name = getattr(descriptor, "realesrgan_tiled_name", None)
    except Exception as e:  # a patcher signature we do not know: the descriptor still works without
        log.warning("realesrgan_tiled: could not attach a ModelPatcher (%s); core nodes of newer "
                    "ComfyUI builds may not accept this model", e)


def engine_host(descriptor):
    """The engine's Host for one node run: ComfyUI's device, progress bar, interrupt check,
    intermediate device/dtype and offload device, and its model manager for memory."""
    from ..engine import Host

    place = manager_placement(descriptor)
    if place is None:
        release_from_manager(descriptor)
    out_device, out_dtype = output_device_dtype()
    return Host(device=torch_device(), progress=progress_callback(), check_cancel=interrupt_check(),
                output_device=out_device, output_dtype=out_dtype, offload_device=offload_device(),
                make_room=make_room, place_model=place, is_oom=host_is_oom())


def manager_placement(descriptor):
    """The engine's ``place_model`` through ComfyUI's model manager, the way current core's
    ImageUpscaleWithModel loads an upscaler: ``load_models_gpu([patcher], memory_required=...,
    force_full_load=True)``, where memory_required is the engine's estimate of a tile's working
    set rather than core's fixed 384 bytes per pixel of a 512 px tile (4.8 GB for x4). The
    manager counts the model, evicts others only as far as that needs, and keeps it loaded
    after the run. None where the host cannot (no patcher, or a load_models_gpu older than
    force_full_load): the engine then moves the model itself and asks ``make_room``."""
    patcher = getattr(descriptor, "patcher", None)
    try:
        import comfy.model_management as mm
    except ImportError:
        return None
    load = getattr(mm, "load_models_gpu", None)
    if patcher is None or load is None or "force_full_load" not in inspect.signature(load).parameters:
        return None

    def place_model(device: torch.device, working_set: int) -> None:
        load([patcher], memory_required=working_set, force_full_load=True)

    return place_model


def release_from_manager(descriptor) -> None:
    """Before our engine moves the model itself: if the host's model manager holds this model
    (core's ImageUpscaleWithModel in current ComfyUI loads it through its patcher), unload it
    there first so the manager's bookkeeping stays true. Best effort."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    patcher = getattr(descriptor, "patcher", None)
    loaded = getattr(mm, "current_loaded_models", None)
    if patcher is not None and isinstance(loaded, list):
        try:
            for i in range(len(loaded) - 1, -1, -1):
                if getattr(loaded[i], "model", None) is patcher:
                    loaded.pop(i).model_unload()
        except Exception as e:
            log.debug("realesrgan_tiled: could not release the model from the host: %s", e)


def host_is_oom():
    """ComfyUI's own out-of-memory test (``model_management.is_oom``, newer builds): it also
    knows torch.AcceleratorError. None where the host has none; the engine's test still runs."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return None
    return getattr(mm, "is_oom", None)


def make_room(device: torch.device, required: int) -> None:
    """The engine asks for ``required`` bytes on ``device`` (the weights, then the working set
    of a tile): the model manager unloads other models only as far as that needs. Best effort."""
    if device.type == "cpu":
        return
    try:
        import comfy.model_management as mm

        mm.free_memory(required, device)
    except Exception as e:
        log.debug("realesrgan_tiled: free_memory failed: %s", e)


# ---------------------------------------------------------------- progress and cancel

def progress_callback():
    """A ``progress(done, total)`` for the engine that drives ComfyUI's per-node progress bar."""
    try:
        import comfy.utils
    except ImportError:
        return None
    state = {"bar": None}

    def progress(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = comfy.utils.ProgressBar(total)
        state["bar"].update_absolute(done, total)

    return progress


def interrupt_check():
    """ComfyUI's interrupt check: raises InterruptProcessingException after POST /interrupt."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return None
    return mm.throw_exception_if_processing_interrupted


def blocked_output(message: str):
    """An output value that makes ComfyUI stop any node fed from it with ``message``
    (``ExecutionBlocker``: ComfyUI's mechanism for an output that is invalid in this
    configuration; an unconnected output is never looked at). Cache-safe, unlike checking the
    prompt for a connection. None where ComfyUI is absent."""
    for module in ("comfy_execution.graph_utils", "comfy_execution.graph"):
        try:
            return __import__(module, fromlist=["ExecutionBlocker"]).ExecutionBlocker(message)
        except (ImportError, AttributeError):
            continue
    return None


def is_cancellation(exc: BaseException) -> bool:
    """True for the exceptions that mean "the user cancelled" and must never be swallowed."""
    from ..errors import UpscaleCancelled

    if isinstance(exc, (UpscaleCancelled, KeyboardInterrupt)):
        return True
    try:
        import comfy.model_management as mm
    except ImportError:
        return False
    interrupt = getattr(mm, "InterruptProcessingException", None)
    return interrupt is not None and isinstance(exc, interrupt)


# ---------------------------------------------------------------- health route

HEALTH_ROUTE = "/realesrgan_tiled/health"
_probed: dict[tuple, str | None] = {}  # (path, size, mtime) -> why it does not load, or None


def register_health_route() -> None:
    """GET /realesrgan_tiled/health on ComfyUI's server (``?check=1`` also loads every model
    file once, to list those that are refused). Nothing outside ComfyUI."""
    server = sys.modules.get("server")  # ComfyUI's, already imported when it loads custom nodes; never import one
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "routes"):
        return
    from aiohttp import web

    @instance.routes.get(HEALTH_ROUTE)
    async def health(request):
        return web.json_response(health_report(check=request.query.get("check") == "1"))


def health_report(check: bool = False) -> dict:
    from ..engine.health import HEALTH, versions

    names = list_model_names()
    if check:
        for name in names:
            reason = _probe(name)
            if reason is not None:
                HEALTH.refused_model(name, reason)
    device = torch_device()
    try:
        import comfyui_version

        comfy = f"ComfyUI {comfyui_version.__version__}"
    except ImportError:
        comfy = "ComfyUI"
    report = HEALTH.report(
        device=str(device),
        precision={"default": "auto", "auto_here": "fp32" if device.type != "cuda" else
                   "fp16 where the model supports it (non-finite tiles re-run in fp32)"},
        versions=versions(host=comfy),
        host_loaded_models=_loaded_models(),
    )
    report["models"] = names
    return report


def _probe(name: str) -> str | None:
    from ..loading import load_model

    try:
        path = resolve_model_path(name)
        stat = os.stat(path)
    except Exception as e:
        return " ".join(str(e).split())
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _probed:
        try:
            load_model(path)
            _probed[key] = None
        except Exception as e:
            _probed[key] = " ".join(str(e).split())
    return _probed[key]


def _loaded_models() -> list[str]:
    """What the host's model manager holds now (a checkpoint should stay across our upscale):
    class names, and ``upscaler: NAME`` for ours."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return []
    out = []
    for loaded in list(getattr(mm, "current_loaded_models", [])):
        patcher = getattr(loaded, "model", None)
        ours = getattr(patcher, "realesrgan_tiled_name", None)
        module = getattr(patcher, "model", None)
        out.append(f"upscaler: {ours}" if ours else type(module).__name__ if module is not None else type(loaded).__name__)
    return out
