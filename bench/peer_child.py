"""One CPU peer of bench/peers.py in this process: load its runtime (numpy and the runtime only,
no torch, so the process's peak RSS and threads are the peer's own), then time ``repeats``
inferences on the saved input and write the first output.

    python bench/peer_child.py '["ncnn-winograd", "MODEL.param", "in.npy", "out.npy", 2, 3]'
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def blob_names(param: Path) -> tuple[str, str]:
    """(input blob, output blob) of a .param, as the ncnn runtime itself reads them."""
    import ncnn

    net = ncnn.Net()
    inputs, outputs = (net.input_names(), net.output_names()) if net.load_param(str(param)) == 0 else ([], [])
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{param}: cannot tell the input and output blobs ({inputs}, {outputs})")
    return inputs[0], outputs[0]


def _ncnn_runner(path: str, threads: int, winograd: bool):
    import ncnn

    data, output = blob_names(Path(path))
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.num_threads = threads
    opt.openmp_blocktime = 0
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic",
                 "use_bf16_storage", "use_bf16_packed", "use_bf16_arithmetic"):
        if hasattr(opt, flag):
            setattr(opt, flag, False)
    opt.use_winograd_convolution = winograd
    if net.load_param(path) != 0 or net.load_model(str(Path(path).with_suffix(".bin"))) != 0:
        raise RuntimeError(f"ncnn could not load {path}")

    def infer(x: np.ndarray) -> np.ndarray:
        ex = net.create_extractor()  # a fresh extractor per run: one keeps the blobs it computed
        if ex.input(data, ncnn.Mat(np.ascontiguousarray(x[0]))) != 0:
            raise RuntimeError("ncnn rejected the input")
        ret, out = ex.extract(output)
        if ret != 0:
            raise RuntimeError(f"ncnn extract failed ({ret})")
        return np.array(out, copy=True)[None]

    return infer, f"ncnn {ncnn.__version__}, winograd {'on' if winograd else 'off'}"


def _openvino_runner(path: str, threads: int, default_precision: bool = False):
    """fp32 forced, or (``default_precision``) OpenVINO's own default: bf16 on CPUs with bf16."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    config = {props.inference_num_threads: threads, hints.performance_mode: hints.PerformanceMode.LATENCY,
              props.num_streams: 1}
    if not default_precision:
        config[hints.inference_precision] = ov.Type.f32
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    precision = compiled.get_property(hints.inference_precision())
    precision = precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def infer(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: x})[output], copy=True)

    return infer, f"openvino {ov.__version__.split('-')[0]}, inference precision {precision}"


def _onnxruntime_runner(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def infer(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    return infer, f"onnxruntime {ort.__version__}, CPUExecutionProvider, ORT_ENABLE_ALL"


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """This process's peak RSS: VmHWM, which starts afresh at exec. (ru_maxrss does not: after
    fork + exec it still holds the parent's RSS at the fork, so a child spawned by a big
    parent would report at least the parent's size.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_run(name: str, path: str, input_path: str, output_path: str, threads: int, repeats: int) -> dict:
    """One peer in this process: load, then ``repeats`` timed inferences; writes the first output."""
    x = np.load(input_path)
    if name.startswith("ncnn"):
        infer, detail = _ncnn_runner(path, threads, winograd=name == "ncnn-winograd")
    elif name.startswith("openvino"):
        infer, detail = _openvino_runner(path, threads, default_precision=name == "openvino-default")
    else:
        infer, detail = _onnxruntime_runner(path, threads)
    baseline = _rss_now()
    runs = []
    for i in range(max(1, repeats)):
        t = time.perf_counter()
        out = infer(x)
        runs.append(time.perf_counter() - t)
        if i == 0:
            np.save(output_path, np.ascontiguousarray(out, dtype=np.float32))
        del out
    return {"runs": runs, "peak_rss_bytes": _peak_rss(),
            "baseline_rss_bytes": baseline, "detail": f"{detail}, {threads} threads"}


if __name__ == "__main__":
    print(json.dumps(child_run(*json.loads(sys.argv[1]))))
