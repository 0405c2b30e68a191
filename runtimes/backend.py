"""Which backend runs our networks: torch (our plans, every device) or ncnn (CPU, fp32, where the
``ncnn`` package is installed).

"auto" is measured, not guessed: the first time a network of a given shape runs on the CPU, a
small representative piece of it (``speed_probe`` in ``ncnn/<network>.py``) is timed on both backends
and the faster one is kept, for the process and in a small cache file (per CPU model, thread
count and library versions), so a later process — each CLI call, each host start — does not
pay the probe again. The engine reports which one ran
(``RunReport.backend``); ``Choices.backend``, the CLI's ``--backend`` or the environment
variable ``REALESRGAN_TILED_BACKEND`` pin one.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..errors import InputImageError
from . import ncnn

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "ncnn")
ENVIRONMENT_VARIABLE = "REALESRGAN_TILED_BACKEND"
CACHE_DIR_VARIABLE = "REALESRGAN_TILED_CACHE_DIR"  # default: $XDG_CACHE_HOME/realesrgan_tiled or ~/.cache/...

_chosen: contextvars.ContextVar[str | None] = contextvars.ContextVar("backend", default=None)
_measured: dict[tuple, str] = {}
_measure_lock = threading.Lock()


def requested(choice: str | None) -> str:
    """The user's choice, else the environment's, else "auto"; checked."""
    value = choice if choice is not None else os.environ.get(ENVIRONMENT_VARIABLE) or "auto"
    if value not in BACKENDS:
        source = "backend" if choice is not None else ENVIRONMENT_VARIABLE
        raise InputImageError(f"{source} must be one of {', '.join(BACKENDS)}, not {value!r}")
    return value


def resolve(choice: str | None, model, device: torch.device, dtype: torch.dtype, pixels: int | None = None,
            ncnn_fits: Callable[[], bool] | None = None) -> str:
    """The backend a run of ``model`` on ``device`` in ``dtype`` uses. ncnn runs only our
    networks, on the CPU, in fp32; asked for elsewhere, it is torch (with a warning). ``auto``
    keeps torch for inputs of ``pixels`` that its plans run whole (no window halo to pay: there
    the probe's comparison does not hold, and ncnn measured slower), and where ``ncnn_fits()``
    says ncnn's larger working set would not fit."""
    wanted = requested(choice)
    if wanted == "torch":
        return "torch"
    why_not = _ncnn_unusable(model, device, dtype)
    if why_not is not None:
        if wanted == "ncnn":
            log.warning("the ncnn backend cannot run this: %s; running on torch", why_not)
        return "torch"
    if wanted == "ncnn":
        return "ncnn"
    if pixels is not None and not model.our_architecture.torch_plan_walks_windows(model.network, pixels):
        return "torch"
    if ncnn_fits is not None and not ncnn_fits():
        return "torch"
    return _faster(model)


def _ncnn_unusable(model, device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cpu":
        return f"it runs on the CPU only, not {device.type}"
    if dtype != torch.float32:
        return "it runs in fp32 only"
    if getattr(model, "our_architecture", None) is None or ncnn.network_support(model.our_architecture.name) is None:
        return "it runs our RRDBNet and SRVGGNetCompact networks only"
    if not ncnn.available():
        return "the ncnn package is not installed (pip install ncnn)"
    return None


@contextlib.contextmanager
def using(backend: str) -> Iterator[None]:
    """Within this block our networks run on ``backend`` ("torch" or "ncnn")."""
    token = _chosen.set(backend)
    try:
        yield
    finally:
        _chosen.reset(token)


def current(model, x_or_device) -> str:
    """The backend for a call of ``model`` now: the engine's choice, or for a direct call (ComfyUI
    core's node, a spandrel user) the measured auto choice."""
    chosen = _chosen.get()
    if chosen is not None:
        return chosen
    is_tensor = isinstance(x_or_device, torch.Tensor)
    device = x_or_device.device if is_tensor else x_or_device
    dtype = x_or_device.dtype if is_tensor else torch.float32
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    pixels = x_or_device.shape[-2] * x_or_device.shape[-1] if is_tensor else None
    return resolve(None, model, torch.device(device), dtype, pixels)


def _faster(model) -> str:
    arch, net = model.our_architecture, model.network
    support = ncnn.network_support(arch.name)
    key = (arch.name, support.probe_key(net), torch.get_num_threads())
    with _measure_lock:
        if key not in _measured:
            stored = _cache_key(key)
            cached = _read_cache().get(stored)
            if cached in ("torch", "ncnn"):
                _measured[key] = cached
            else:
                _measured[key] = _measure(support.speed_probe(net))
                log.info("backend for %s on this CPU: %s (measured)", arch.name, _measured[key])
                _write_cache(stored, _measured[key])
        return _measured[key]


def cache_file() -> Path:
    base = os.environ.get(CACHE_DIR_VARIABLE)
    if not base:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "realesrgan_tiled"
    return Path(base) / "cpu_backends.json"


def _cache_key(key: tuple) -> str:
    """What the measurement depends on: the network's shape, threads, this CPU, both libraries."""
    import ncnn as ncnn_package

    arch, shape, threads = key
    return (f"{arch} {'/'.join(map(str, shape))} | {threads} threads | {cpu_name()} | torch {torch.__version__} "
            f"| ncnn {ncnn_package.__version__}")


def cpu_name() -> str:
    """This CPU's model name (what the measured choice and the benches are tied to)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _read_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, unreadable or damaged: measure again
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(stored: str, choice: str) -> None:
    """Best effort: a read-only home only means measuring again next time."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = dict(_read_cache(), **{stored: choice})
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        log.debug("could not store the measured backend in %s: %s", path, e)


def _measure(probes: dict[str, Callable[[], None]]) -> str:
    """The backend whose probe ran fastest, each timed after one warm-up run."""
    seconds = {}
    with torch.inference_mode():
        for name, probe in probes.items():
            probe()
            start = time.perf_counter()
            probe()
            seconds[name] = time.perf_counter() - start
    return min(seconds, key=seconds.get)


def measured() -> dict[tuple, str]:
    """The auto choices made so far in this process (for health reports and tests)."""
    return dict(_measured)
