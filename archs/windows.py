"""Exact evaluation of conv stacks window by window, for CPU cache locality.

On CPU a 3x3 conv over a whole feature map streams it through main memory, and oneDNN copies it
into its blocked layout and back on every layer; over a window that stays in cache the same
convolutions run faster (figures in README, "What made the CPU path fast"). Tiling the *image*
would buy the same locality at the price of overlap and seams; here the network itself walks
the map in windows:

- a window is a block plus ``halo`` px on every side (one px per 3x3 conv), so its centre is
  computed from exactly the same inputs as in the whole-map run;
- each conv runs without padding and shrinks the window by one px per side, so the halo is paid
  once per stack rather than per layer;
- where the window sticks out of the map, every layer's output there is set to zero: that is
  what the whole-map run's zero padding feeds the next conv.

``for_each_window`` can run independent windows on worker threads, one window per thread with
one intra-op thread each, instead of splitting every small conv across all threads: no barrier
per conv, and each core keeps its own window warm.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    core: tuple[slice, slice]  # the block, in map coordinates: the rows/cols it produces
    source: tuple[slice, slice]  # map rows/cols copied in: core + halo, clipped to the map
    inside: tuple[slice, slice]  # where the source lands in the window
    size: tuple[int, int]  # block + 2 * halo

    def load(self, window: torch.Tensor, feature_map: torch.Tensor) -> None:
        """Copy the map into ``window`` (N, C, *size), zeros where the window leaves the map."""
        if self.size != (self.inside[0].stop - self.inside[0].start, self.inside[1].stop - self.inside[1].start):
            window.zero_()
        window[..., self.inside[0], self.inside[1]] = feature_map[..., self.source[0], self.source[1]]

    def zero_outside_map(self, layer_out: torch.Tensor, shrink: int) -> None:
        """``layer_out`` covers the window less ``shrink`` px per side; zero its part off the map."""
        for dim, inside, length in ((-2, self.inside[0], self.size[0]), (-1, self.inside[1], self.size[1])):
            before, after = inside.start - shrink, (length - shrink) - inside.stop
            if before > 0:
                layer_out.narrow(dim, 0, before).zero_()
            if after > 0:
                layer_out.narrow(dim, layer_out.shape[dim] - after, after).zero_()


def windows(height: int, width: int, block: tuple[int, int], halo: int) -> Iterator[Window]:
    """Blocks of about ``block`` (rows, cols) px, near-equal sizes with no thin last one, covering the map."""
    for rows in even_spans(height, block[0]):
        for cols in even_spans(width, block[1]):
            source = (_clip(rows, halo, height), _clip(cols, halo, width))
            inside = tuple(slice(s.start - (c.start - halo), s.stop - (c.start - halo)) for s, c in zip(source, (rows, cols)))
            size = (rows.stop - rows.start + 2 * halo, cols.stop - cols.start + 2 * halo)
            yield Window((rows, cols), source, inside, size)


def even_spans(length: int, target: int) -> list[slice]:
    count = max(1, math.ceil(length / target))
    edges = [round(i * length / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(edges, edges[1:])]


def _clip(span: slice, halo: int, length: int) -> slice:
    return slice(max(0, span.start - halo), min(length, span.stop + halo))


def for_each_window(work: Callable[[Window], None], wins: Iterable[Window], threads: int | None = None) -> None:
    """``work(win)`` for every window, spread over ``worker_count(threads)`` worker threads.
    ``work`` must only write its own window's output. The workers inherit the caller's inference
    mode and CPU autocast state (both are thread-local in torch). The host's cancel check
    (``checking_cancel``) runs before every window."""
    wins = list(wins)
    pool = _window_pool(worker_count(threads))
    run = _in_callers_modes(work, _check_cancel.get())
    tick = _on_window.get() or (lambda: None)
    if pool is None or len(wins) < 2:
        for win in wins:
            run(win)
            tick()
        return
    failed = threading.Event()

    def run_unless_failed(win: Window) -> None:
        if failed.is_set():  # a window raised (a cancel, out of memory): skip the rest
            return
        try:
            run(win)
        except BaseException:
            failed.set()
            raise

    futures = [pool.submit(run_unless_failed, win) for win in wins]
    for _ in concurrent.futures.as_completed(futures):
        tick()  # in the caller's thread: hosts' progress bars need not be thread-safe
    # all done before any error surfaces: none still writing
    for future in futures:
        future.result()


def worker_count(threads: int | None) -> int:
    """Threads that windows run on: ``threads``, or torch's intra-op thread count. One (the
    caller's thread) where a per-thread setting is impossible: see ``_window_pool``."""
    if not _OPENMP:
        return 1
    return max(1, torch.get_num_threads() if threads is None else int(threads))


_check_cancel: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("check_cancel", default=None)
_on_window: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("on_window", default=None)


@contextlib.contextmanager
def checking_cancel(check_cancel: Callable[[], None] | None, on_window: Callable[[], None] | None = None) -> Iterator[None]:
    """Within this block, windows call ``check_cancel()`` first; whatever it raises stops the
    network. One image tile on CPU can take minutes; a window takes well under a second.
    ``on_window()`` is called after each window (progress within a tile), in the caller's thread."""
    tokens = _check_cancel.set(check_cancel), _on_window.set(on_window)
    try:
        yield
    finally:
        _check_cancel.reset(tokens[0])
        _on_window.reset(tokens[1])


def check_for_cancel() -> None:
    """For a plan's whole-map steps (no windows to check between): the check of the
    ``checking_cancel`` block around this call, if any. The engine sets it around every tile."""
    check = _check_cancel.get()
    if check is not None:
        check()


def _in_callers_modes(work: Callable[[Window], None], check: Callable[[], None] | None) -> Callable[[Window], None]:
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
    autocast, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def run(win: Window) -> None:
        if check is not None:
            check()
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            with torch.autocast("cpu", dtype=dtype, enabled=autocast):
                work(win)

    return run


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_threads = 0
_pool_lock = threading.Lock()


def _window_pool(threads: int) -> concurrent.futures.ThreadPoolExecutor | None:
    """A pool of ``threads`` workers, each set to one intra-op thread. That setting is per
    thread only with OpenMP (torch's usual backend); with another backend it would change the
    host's thread count, so ``worker_count`` keeps windows in the caller's thread there."""
    global _pool, _pool_threads
    if threads < 2:  # (inside a worker torch's count is 1)
        return None
    with _pool_lock:
        if _pool_threads != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = concurrent.futures.ThreadPoolExecutor(threads, "realesrgan-window", initializer=_single_threaded)
            _pool_threads = threads
        return _pool


def _single_threaded() -> None:
    torch.set_num_threads(1)  # OpenMP: this thread's own setting


_OPENMP = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
