"""The ncnn backend's runtime: our networks' weights, as in-memory ncnn graphs, run by the
``ncnn`` PyPI runtime on CPU in fp32, window by window.

Why: ncnn's 3x3 convolutions use Winograd transforms (2.25-4x fewer multiplies than a direct
convolution), which oneDNN does not have for AVX2; on the CPU it is the fastest engine for
these networks (README, "Benchmarks"). The engine, tiles, cancel, progress and the memory
bound stay ours:

- a network is cut into *stages* (an RRDBNet dense block, its upsampling tail; a whole
  SRVGGNetCompact), each one small ncnn graph;
- a stage runs over a feature map in windows (``archs/windows.py``): each window is its block
  plus ``halo`` px of real neighbours, cut out of the map (never past its edge). The convs pad
  with zeros as the whole-map run does, so only the halo sees wrong values at the window's
  cut edges, one px per conv, and the block is exact;
- windows go through ``for_each_window``: the host's cancel check before each, progress
  after each, one window per worker thread, each ncnn call on one thread.

ncnn keeps its own memory pools; every stage shares one pair of pools per worker thread, so
the working set is one window's per thread whatever the number of stages.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import numpy as np
import torch

from ...archs.windows import Window, for_each_window, windows
from .writer import GraphWriter

NCNN_WINDOW_FACTOR = 16  # measured: a window's live ncnn memory (padded copies, Winograd tiles, packing) is ~12x its widest map


def ncnn_weight_bytes(net: torch.nn.Module) -> int:
    """ncnn keeps its own Winograd-transformed copy of the conv weights: F(4,3) tiles hold 36/9
    of them (measured: x4plus's 67 MB of weights took 225 MB in ncnn)."""
    return sum(p.numel() for p in net.parameters()) * 4 * 4


def available() -> bool:
    """The ``ncnn`` package is installed and has what we use (older releases lack some)."""
    try:
        import ncnn
    except ImportError:
        return False
    return hasattr(ncnn, "UnlockedPoolAllocator") and hasattr(ncnn.Net, "load_param_mem") and hasattr(ncnn.Net, "load_model_mem")


class Stage:
    """One ncnn graph, fp32 throughout (``data`` in, ``output`` out), ready to run."""

    def __init__(self, graph: GraphWriter, output: str):
        import ncnn

        param, weights = graph.build(output)
        self._weights = weights  # ncnn may read weights from this buffer in place: it must outlive the net
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_vulkan_compute = False
        opt.num_threads = 1  # one window per worker thread (for_each_window): measured faster than 2 threads per window
        opt.openmp_blocktime = 0  # ncnn's OpenMP threads would spin against torch's
        for name in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed"):
            setattr(opt, name, False)  # fp32, as our reference computes
        opt.use_winograd_convolution = True
        if self.net.load_param_mem(param) != 0:
            raise RuntimeError("ncnn refused a graph we wrote")  # a bug of ours, not a user's file
        self.net.load_model_mem(weights)

    def run(self, x: np.ndarray) -> np.ndarray:
        """``x``: a C-contiguous float32 [C, H, W] array; the output as a new array."""
        import ncnn

        blob_pool, workspace_pool = _pools()
        ex = self.net.create_extractor()
        try:
            ex.set_blob_allocator(blob_pool)
            ex.set_workspace_allocator(workspace_pool)
            ex.input("data", ncnn.Mat(x))  # wraps x without a copy
            ret, out = ex.extract("output")
            if ret != 0:
                raise RuntimeError(f"ncnn failed with code {ret}")
            result = np.array(out, copy=True)
            del out
        finally:
            del ex  # before its pools can go: ncnn aborts if a pool dies with blobs still out
        return result


_local = threading.local()
_all_pools: list = []  # kept for the process's lifetime: a pool must outlive every blob it handed out


def _pools():
    pools = getattr(_local, "pools", None)
    if pools is None:
        import ncnn

        pools = _local.pools = (ncnn.UnlockedPoolAllocator(), ncnn.UnlockedPoolAllocator())
        _all_pools.append(pools)
    return pools


def run_in_windows(stage: Stage, feat: torch.Tensor, block: int, halo: int,
                   place: Callable[[int, Window, torch.Tensor], None], scale: int = 1, threads: int | None = None,
                   release: bool = False) -> None:
    """``stage`` over ``feat`` ([N, C, H, W] fp32 on the CPU) window by window: each window's
    exact block of the result (``scale`` output px per map px) goes to ``place(n, win, result)``,
    in the window's worker thread. ``release``: hand ncnn's pooled memory back after each window
    (a pool keeps every block a window used, about twice the window's live peak)."""
    n, _, h, w = feat.shape

    def one_window(win: Window) -> None:
        (rows, cols), (src_rows, src_cols) = win.core, win.source
        top, left = (rows.start - src_rows.start) * scale, (cols.start - src_cols.start) * scale
        height, width = (rows.stop - rows.start) * scale, (cols.stop - cols.start) * scale
        for i in range(n):
            y = torch.from_numpy(stage.run(np.ascontiguousarray(feat[i, :, src_rows, src_cols].numpy())))
            place(i, win, y[:, top : top + height, left : left + width])
        if release:
            for pool in _pools():
                pool.clear()

    for_each_window(one_window, windows(h, w, (block, block), halo), threads)


def into(out: torch.Tensor, scale: int = 1) -> Callable[[int, Window, torch.Tensor], None]:
    """A ``place`` that copies each window's result into ``out`` [N, C, H * scale, W * scale]."""

    def place(i: int, win: Window, result: torch.Tensor) -> None:
        rows, cols = win.core
        out[i, :, rows.start * scale : rows.stop * scale, cols.start * scale : cols.stop * scale] = result

    return place


class StageCache:
    """Stages built once per network and rebuilt when its weights change (an optimizer step or
    an EMA update writes them in place; ``.to()`` replaces them)."""

    def __init__(self, build: Callable[[torch.nn.Module], object]):
        self._build = build
        self._built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, net: torch.nn.Module):
        key = tuple((p.data_ptr(), _version(p)) for p in net.parameters())
        with self._lock:
            held = self._built.get(net)
            if held is None or held[0] != key:
                held = (key, self._build(net))
                self._built[net] = held
            return held[1]


def _version(p: torch.Tensor):
    """Changes when ``p`` is written in place. Tensors made under ``torch.inference_mode`` (ComfyUI
    loads models that way) have no version counter: a sample of their values stands in."""
    if not p.is_inference():
        return p._version
    flat = p.detach().reshape(-1)
    return tuple(flat[:: max(1, flat.numel() // 64)].tolist())
