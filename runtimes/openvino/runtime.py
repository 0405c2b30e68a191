"""The OpenVINO backend's runtime: our networks' weights as in-memory OpenVINO graphs
(``graph.py``), compiled for the CPU once per input shape and precision and kept for the
process, run by the ``openvino`` PyPI runtime.

Why: on the CPU OpenVINO's convolutions are the fastest measured for these networks in bf16
where the CPU has bf16 dot products (AVX512-BF16, AMX), and close to ncnn in fp32 (README,
"Benchmarks"). The engine, tiles, cancel, progress and the memory bound stay ours: a network is
cut into stages (an RRDBNet RRDB, its upsampling tail; a whole SRVGGNetCompact body), each one
OpenVINO model run over a whole map or window by window through ``runtimes/ncnn/runtime.py``'s
``run_in_windows`` (the same window walk, cancel check and progress as ncnn).

Precision is always set explicitly (INFERENCE_PRECISION_HINT): OpenVINO's own default is bf16
on CPUs that have it, and fp32 must mean fp32. The stage runs in bf16 only inside the engine's
bf16 autocast, i.e. where the user (or ``auto``) asked for bf16.
"""
from __future__ import annotations

import collections
import threading

import numpy as np
import torch

COMPILED_PER_STAGE = 4  # shapes kept compiled per stage (tiles are equal-sized: 1-2 shapes; windows up to 4 more)


def available() -> bool:
    """The ``openvino`` package is installed and its CPU plugin loads."""
    try:
        return "CPU" in _core().available_devices
    except Exception:  # not installed, or a broken install: torch runs
        return False


_core_instance = None
_core_lock = threading.Lock()


def _core():
    global _core_instance
    with _core_lock:
        if _core_instance is None:
            import openvino

            _core_instance = openvino.Core()
        return _core_instance


def precision_now() -> str:
    """"bf16" inside a CPU bf16 autocast (the engine's bf16 runs), else "f32"."""
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return "bf16"
    return "f32"


class Stage:
    """One OpenVINO model with a dynamic [1, C, H, W] input, compiled per (H, W, precision) on
    first use; the last COMPILED_PER_STAGE compilations are kept."""

    def __init__(self, model):
        self.model = model
        self._compiled: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def compiled(self, height: int, width: int, precision: str):
        """(compiled model, its lock) for this shape and precision."""
        key = (height, width, precision)
        with self._lock:
            entry = self._compiled.get(key)
            if entry is None:
                entry = self._compile(height, width, precision)
                self._compiled[key] = entry
                while len(self._compiled) > COMPILED_PER_STAGE:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(key)
            return entry

    def _compile(self, height: int, width: int, precision: str):
        import openvino
        import openvino.properties as props
        import openvino.properties.hint as hints

        model = self.model.clone()
        channels = model.inputs[0].get_partial_shape()[1].get_length()
        model.reshape([1, channels, height, width])
        compiled = _core().compile_model(model, "CPU", {
            hints.inference_precision: openvino.Type.bf16 if precision == "bf16" else openvino.Type.f32,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            props.num_streams: 1,
            props.inference_num_threads: torch.get_num_threads(),  # the host's thread count, as torch's
        })
        return compiled, threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        """``x``: a C-contiguous float32 [C, H, W] array; the output as a new array."""
        compiled, lock = self.compiled(x.shape[1], x.shape[2], precision_now())
        with lock:
            request = compiled.create_infer_request()
            out = np.array(request.infer({0: x[None]})[0][0], copy=True)
            del request
            # a compiled model keeps its intermediate maps (84 MB for six RRDBs at 200x200): with
            # one per stage and window shape that is all their working sets at once, unless handed back
            compiled.release_memory()
        return out


_warm = False


def warm_up() -> None:
    """Compile and run a one-conv stage once per process: the process's first compile also
    loads OpenVINO's CPU plugin, which auto's probes must not weigh as a stage's compile."""
    global _warm
    if _warm:
        return
    from . import graph

    x = graph.data(3)
    stage = Stage(graph.model(graph.conv(x, torch.zeros(3, 3, 3, 3), torch.zeros(3)), x))
    stage.run(np.zeros((3, 8, 8), np.float32))
    _warm = True
