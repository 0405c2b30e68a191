"""How much memory a device has free, and how much one tile through a model needs.

Our networks state their own cost (each architecture's profile, from its inference plan). Any
other model (spandrel's networks, SwinIR, …) is measured: two small probe tiles run through
it, and their peak allocations give a fixed part and a per-pixel part, with a margin.
"""
from __future__ import annotations

import math
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..archs import Cost
from ..loading.descriptor import OurModel

GENERIC_OVERLAP = 48  # px, for models whose receptive field we do not know
PROBE_SIDES = (48, 96)  # input px of the two probe tiles of a model we measure
PROBE_MARGIN = 1.25  # extrapolating a straight line from two small probes to a large tile
UNKNOWN_FREE = 4 << 30  # when neither /proc/meminfo nor psutil gives a figure


MEMINFO = "/proc/meminfo"


def available_memory(device: torch.device) -> int:
    """Bytes a new allocation can get on ``device``: CUDA's (and XPU's) free memory plus what
    torch's cache holds unused; MPS: its working-set limit less what it holds, within the RAM
    available (unified memory); elsewhere (CPU, DirectML) the RAM available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    xpu = getattr(torch, "xpu", None)
    if device.type == "xpu" and hasattr(xpu, "mem_get_info"):
        free, _ = xpu.mem_get_info(device)
        return free + xpu.memory_reserved(device) - xpu.memory_allocated(device)
    mps = getattr(torch, "mps", None)
    if device.type == "mps" and hasattr(mps, "recommended_max_memory"):
        return max(0, min(mps.recommended_max_memory() - mps.driver_allocated_memory(), system_available_memory()))
    return system_available_memory()


def system_available_memory(meminfo: str = MEMINFO) -> int:
    """RAM available to a new allocation: Linux's MemAvailable; psutil's figure elsewhere
    (Windows, macOS: no /proc); a guess only when neither answers."""
    try:
        with open(meminfo) as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        import psutil
    except ImportError:
        return UNKNOWN_FREE
    return int(psutil.virtual_memory().available)


def model_overlap(model) -> int:
    return model.overlap() if isinstance(model, OurModel) else GENERIC_OVERLAP


def model_cost(model, device: torch.device, dtype: torch.dtype, call) -> Cost:
    """Peak memory of one tile; ``call(model, x)`` runs a tile as the engine will (for probes)."""
    element_size = torch.tensor([], dtype=dtype).element_size()
    if isinstance(model, OurModel):
        return model.cost(device, element_size)
    return measured_cost(model, device, dtype, call)


_measured: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> {(device, dtype): Cost}


def measured_cost(model, device: torch.device, dtype: torch.dtype, call) -> Cost:
    """A straight line through the peaks of two probe tiles, with a margin; cached per network."""
    costs = _measured.setdefault(model.model, {})
    key = (str(device), dtype)
    if key not in costs:
        sides = _probe_sides(model)
        peaks = [_probe_peak(model, side, device, dtype, call) for side in sides]
        pixels = [side * side for side in sides]
        per_pixel = max(0.0, (peaks[1] - peaks[0]) / (pixels[1] - pixels[0]))
        fixed = max(0.0, peaks[0] - per_pixel * pixels[0])
        costs[key] = Cost(fixed * PROBE_MARGIN, per_pixel * PROBE_MARGIN)
    return costs[key]


def _probe_sides(model) -> tuple[int, int]:
    """PROBE_SIDES fitted to the model's size requirements, still two different sizes."""
    req = model.size_requirements
    multiple = max(1, int(req.multiple_of))
    small, large = (math.ceil(max(side, req.minimum) / multiple) * multiple for side in PROBE_SIDES)
    return small, max(large, small + multiple)


def _probe_peak(model, side: int, device: torch.device, dtype: torch.dtype, call) -> int:
    """Peak bytes of one square tile, run as the engine runs tiles (fp32 in, autocast to ``dtype``)."""
    x = torch.rand((1, model.input_channels, side, side), generator=torch.Generator().manual_seed(0)).to(device)

    def run() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            call(model, x)

    return peak_bytes(run, device)


def peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated while ``fn()`` runs, beyond what was allocated before."""
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            fn()
            return torch.cuda.max_memory_allocated(device) - before
        with AllocationTracker() as tracker:
            fn()
        return tracker.peak


class AllocationTracker(TorchDispatchMode):
    """Counts the storages torch operators allocate in this thread while active, and frees
    them as they die: the peak of what was alive at once. Sees tensors, not an operator's
    internal scratch space."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._count(t.untyped_storage())
        return out

    def _count(self, storage) -> None:
        key = storage.data_ptr()
        if not key or key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)
