"""Which backend runs our networks: torch (our plans, every device), ncnn (CPU, fp32, where the
``ncnn`` package is installed) or OpenVINO (CPU, fp32 or bf16, where ``openvino`` is installed:
the optional extra ``realesrgan_tiled[openvino]``).

"auto" is measured, not guessed: the first time a network of a given shape class runs on the
CPU, a representative piece of it (``probes.py``) is timed on every candidate that could win —
our windowed torch plans, our whole-map torch plan (what ComfyUI core's plain forward
computes), ncnn, OpenVINO — and the fastest is kept, for the process and in a small cache file
(per CPU model, thread count, shape class and library versions), so a later process does not
pay the probe again. Where the precision is ``auto`` too and the CPU runs bf16 natively (AMX,
AVX512-BF16, ARM BF16), the bf16 runs are candidates as well; a bf16 winner is kept only if
its output stays within ``probes.FIDELITY_DB`` of fp32 on a real photo, else the fastest fp32
one runs. The engine reports what ran (``RunReport.backend``, ``.precision``);
``Choices.backend``, the CLI's ``--backend`` or ``REALESRGAN_TILED_BACKEND`` pin a backend.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib.metadata
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
from . import ncnn, openvino, probes
from .plans import plan_for

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "ncnn", "openvino")  # what a user may ask for
RUNS = ("torch", "torch-whole", "ncnn", "openvino")  # what runs ("torch-whole": the torch plan over whole maps)
ENVIRONMENT_VARIABLE = "REALESRGAN_TILED_BACKEND"
AUTO_BF16_VARIABLE = "REALESRGAN_TILED_AUTO_BF16"  # "0": precision auto stays fp32 on the CPU
CACHE_DIR_VARIABLE = "REALESRGAN_TILED_CACHE_DIR"  # default: $XDG_CACHE_HOME/realesrgan_tiled or ~/.cache/...
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}

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
            fits: Callable[[str], bool] | None = None) -> str:
    """What runs ``model`` on ``device`` in ``dtype`` (one of RUNS); see ``choose``."""
    return choose(choice, model, device, dtype, pixels, fits)[0]


def choose(choice: str | None, model, device: torch.device, dtype: torch.dtype, pixels: int | None = None,
           fits: Callable[[str], bool] | None = None, bf16_allowed: bool = False,
           check_cancel: Callable[[], None] | None = None) -> tuple[str, torch.dtype]:
    """(what runs, in which dtype). ncnn runs our networks on the CPU in fp32, OpenVINO on the
    CPU in fp32 or bf16; asked for elsewhere, it is torch (with a warning). ``auto`` measures
    (module docstring) among the candidates that ``fits(name)`` allows (a backend whose fixed
    working set would not fit the memory is left out); ``bf16_allowed``: the precision was
    ``auto``, so bf16 runs are candidates where this CPU runs bf16 natively. ``check_cancel``
    runs between the measurement's probes (a first run's can take a minute)."""
    wanted = requested(choice)
    if wanted == "torch":
        return "torch", dtype
    if wanted != "auto":
        why_not = unusable(wanted, model, device, dtype)
        if why_not is None:
            return wanted, dtype
        log.warning("the %s backend cannot run this: %s; running on torch", wanted, why_not)
        return "torch", dtype
    if device.type != "cpu" or getattr(model, "our_architecture", None) is None or dtype not in DTYPE_NAMES:
        return "torch", dtype
    dtypes = [dtype]
    bf16_allowed = bf16_allowed and os.environ.get(AUTO_BF16_VARIABLE, "1") != "0"
    if bf16_allowed and dtype == torch.float32 and model.supports_bfloat16 and cpu_runs_bf16():
        dtypes.append(torch.bfloat16)
    winner = _fastest(model, dtypes, pixels, fits, check_cancel)
    name, precision = winner.split("/")
    return name, {v: k for k, v in DTYPE_NAMES.items()}[precision]


def unusable(name: str, model, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``name`` (ncnn or openvino) cannot run this, or None."""
    if name in ("torch", "torch-whole"):
        return None
    if device.type != "cpu":
        return f"it runs on the CPU only, not {device.type}"
    if name == "ncnn" and dtype != torch.float32:
        return "it runs in fp32 only"
    if dtype not in DTYPE_NAMES:
        return "it runs in fp32 and bf16 only"
    support = {"ncnn": ncnn, "openvino": openvino}[name]
    if getattr(model, "our_architecture", None) is None or support.network_support(model.our_architecture.name) is None:
        return "it runs our RRDBNet and SRVGGNetCompact networks only"
    if not support.available():
        extra = "pip install ncnn" if name == "ncnn" else "pip install realesrgan_tiled[openvino]"
        return f"the {name} package is not installed ({extra})"
    return None


def cpu_runs_bf16() -> bool:
    """This CPU has bf16 matrix or dot-product instructions that oneDNN and OpenVINO use
    (x86: AMX-BF16 or AVX512-BF16; ARM: the BF16 extension), from its feature flags; torch's
    own ``_is_mkldnn_bf16_supported`` also says yes where bf16 is emulated with AVX-512."""
    flags = cpu_flags()
    return bool({"amx_bf16", "avx512_bf16", "bf16"} & flags) and torch.backends.mkldnn.is_available()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@contextlib.contextmanager
def using(backend: str) -> Iterator[None]:
    """Within this block our networks run on ``backend`` (one of RUNS)."""
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


def _fastest(model, dtypes: list[torch.dtype], pixels: int | None, fits: Callable[[str], bool] | None,
             check_cancel: Callable[[], None] | None = None) -> str:
    """"name/precision" of the fastest candidate, measured once per key (process and disk)."""
    arch, net = model.our_architecture, model.network
    side = probes.shape_class(net, arch.name, pixels)
    allowed = {name for name in RUNS if unusable(name, model, torch.device("cpu"), torch.float32) is None
               and (fits is None or name == "torch" or fits(name))}
    key = (arch.name, probes.network_key(arch.name, net), torch.get_num_threads(), side, "+".join(DTYPE_NAMES[d] for d in dtypes),
           ",".join(sorted(allowed)))
    with _measure_lock:
        if key not in _measured:
            stored = _cache_key(key)
            cached = _read_cache().get(stored)
            if _valid(cached, allowed, dtypes):
                _measured[key] = cached
            else:
                _measured[key] = _measure_network(model, side, dtypes, allowed, check_cancel)
                log.info("backend for %s at %d px on this CPU: %s (measured)", arch.name, side, _measured[key])
                _write_cache(stored, _measured[key])
        return _measured[key]


def _valid(cached, allowed: set[str], dtypes: list[torch.dtype]) -> bool:
    if not isinstance(cached, str) or cached.count("/") != 1:
        return False
    name, precision = cached.split("/")
    return name in allowed and precision in {DTYPE_NAMES[d] for d in dtypes}


def _measure_network(model, side: int, dtypes: list[torch.dtype], allowed: set[str],
                     check_cancel: Callable[[], None] | None = None) -> str:
    net, name = model.network, model.our_architecture.name
    found = probes.candidates(name, net, side, dtypes, lambda run, dtype: run in allowed)
    ranked = _ranked(found, check_cancel)
    for run, dtype in ranked:
        if dtype == torch.float32:
            return f"{run}/fp32"
        if check_cancel is not None:
            check_cancel()
        fidelity = probes.bf16_fidelity(net, plan_for(model.our_architecture, torch.device("cpu"), run))
        if fidelity >= probes.FIDELITY_DB:
            return f"{run}/bf16"
        log.info("%s in bf16 on %s: %.1f dB against fp32, under %.0f dB: fp32 it is", name, run, fidelity,
                 probes.FIDELITY_DB)
    return "torch/fp32"


def _ranked(found: dict, check_cancel: Callable[[], None] | None = None) -> list[tuple[str, torch.dtype]]:
    """The candidates, fastest first (``_seconds``)."""
    seconds = _seconds(found, check_cancel)
    return sorted(seconds, key=seconds.get)


def _seconds(found: dict, check_cancel: Callable[[], None] | None = None) -> dict:
    """Each candidate's estimated forward: per probe, its weight times (its compile, plus its
    compute grown to the shape class), each probe timed once, a compiling one twice
    (``probes.py``). A candidate already slower than the best one so far is not timed further
    (it is given its partial sum: the ranking holds)."""
    seconds, done, best = {}, {}, float("inf")
    with torch.inference_mode():
        for key, parts in found.items():
            total = 0.0
            for probe in parts:
                if total > best:
                    break
                if id(probe) not in done:  # one run under two names (torch's plan runs this size whole) is timed once
                    if check_cancel is not None:
                        check_cancel()  # a cancelled measurement is not kept: the next run measures again
                    done[id(probe)] = _compile_and_compute(probe)
                compile_s, compute_s = done[id(probe)]
                total += probe.weight * (compile_s + compute_s * probe.scale)
            seconds[key] = total
            best = min(best, total)
    log.debug("auto's probes: %s", {f"{k[0]}/{DTYPE_NAMES[k[1]]}": round(v, 3) for k, v in seconds.items()})
    return seconds


def _compile_and_compute(probe) -> tuple[float, float]:
    """(compile, compute) seconds of a probe's first call: a compiling probe's second call is its
    compute alone; any other's first call is all compute."""
    start = time.perf_counter()
    probe.run()
    first = time.perf_counter() - start
    if not probe.compiles:
        return 0.0, first
    start = time.perf_counter()
    probe.run()
    again = time.perf_counter() - start
    return max(0.0, first - again), min(first, again)


def _measure(probes_by_name: dict[str, Callable[[], None]]) -> str:
    """The name whose probe ran fastest."""
    found = {(name, torch.float32): [probes.Probe(fn)] for name, fn in probes_by_name.items()}
    return _ranked(found)[0][0]


def cache_file() -> Path:
    base = os.environ.get(CACHE_DIR_VARIABLE)
    if not base:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "realesrgan_tiled"
    return Path(base) / "cpu_backends.json"


def _cache_key(key: tuple) -> str:
    """What the measurement depends on: the network's shape, threads, shape class, the
    precisions and backends measured, this CPU, the libraries."""
    arch, shape, threads, side, precisions, allowed = key
    return (f"{arch} {'/'.join(map(str, shape))} | {side} px | {precisions} | {allowed} | {threads} threads "
            f"| {cpu_name()} | {_versions()}")


def _versions() -> str:
    found = [f"torch {torch.__version__}"]
    for dist in ("ncnn", "openvino"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return " | ".join(found)


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


def measured() -> dict[tuple, str]:
    """The auto choices made so far in this process (for health reports and tests)."""
    return dict(_measured)


def found() -> dict[str, bool]:
    """Which CPU backends this install has (health report)."""
    return {"torch": True, "ncnn": ncnn.available(), "openvino": openvino.available()}
