"""CPU peer engines on the same weights and the same photo as our engine, for a side-by-side table.

    .venv/bin/python bench/peers.py --model RealESRGAN_x4plus --size 256x192 --threads 2
    .venv/bin/python bench/peers.py --model realesr-animevideov3-x4 --size 768x512 --threads 2

Peers (whole image, no tiling, fp32 throughout, ``threads`` threads):

* ``ncnn-winograd``: the ncnn runtime (PyPI ``ncnn``) on the bundled .param/.bin, Vulkan off,
  fp16/bf16 storage, packing and arithmetic off, Winograd convolution on, openmp_blocktime 0;
* ``ncnn-direct``: the same with Winograd off (sgemm convolution left at ncnn's default);
* ``openvino``: ``openvino.convert_model`` of our torch network (saved as IR with fp32 weights),
  compiled for CPU with INFERENCE_NUM_THREADS and INFERENCE_PRECISION_HINT f32, one stream;
* ``openvino-default``: the same at OpenVINO's default precision (bf16 on CPUs with bf16
  instructions: AVX512-BF16, AMX), judged by PSNR against the fp32 reference (>= 50 dB), not 1e-4;
* ``onnxruntime``: ``torch.onnx.export`` of our torch network, CPUExecutionProvider,
  intra_op_num_threads, every graph optimization.

Every peer runs in its own subprocess (``peer_child.py``) that imports only its runtime and numpy (no torch), so
its peak RSS and its threads are its own; peers run one after another, never in parallel.
Conversion and export are done beforehand by the parent and are not timed, as our engine's
row does not time loading the model. Each peer process times ``repeats`` inferences: the first
(``first_seconds``, comparable with our engine's row, which has no warm-up) and the best
(``best_seconds``). Its output is compared with our fp32 reference (``m.model`` under
torch.inference_mode on the same input); a row counts only if the max abs difference is at
most 1e-4. A peer whose package is not installed is skipped with a note naming it.

``peer_rows`` is what bench.py calls; ``photo`` is bench.py's photo as [1, 3, H, W].
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4

# name -> (import name, pip package) needed in the parent (conversion) and the child (runtime)
PEERS: dict[str, dict] = {
    "ncnn-winograd": {"packages": [("ncnn", "ncnn")], "winograd": True},
    "ncnn-direct": {"packages": [("ncnn", "ncnn")], "winograd": False},
    "openvino": {"packages": [("openvino", "openvino")]},
    "openvino-default": {"packages": [("openvino", "openvino")], "min_psnr": 50.0},
    # the torch 2.x exporter (dynamo=True) writes through onnxscript, which needs onnx
    "onnxruntime": {"packages": [("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("onnxscript", "onnxscript")]},
}


def missing_packages(name: str) -> list[str]:
    """The pip packages that ``name`` needs and this environment lacks."""
    return [pip for module, pip in PEERS[name]["packages"] if importlib.util.find_spec(module) is None]


# ---- inputs ---------------------------------------------------------------------------------

def _bench_module():
    """bench/bench.py, loaded by path (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("realesrgan_tiled_bench", ROOT / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photo(width: int, height: int) -> np.ndarray:
    """The photo bench.py uses at this size (its ``real_photo``), as float32 [1, 3, H, W] in 0..1."""
    images = _bench_module().real_photo(height, width)  # [1, H, W, 3]
    return np.ascontiguousarray(images.numpy().transpose(0, 3, 1, 2), dtype=np.float32)


def as_nchw(image) -> np.ndarray:
    """float32 [1, 3, H, W] in 0..1 from an image file path, an H x W x 3 array (uint8, or float in
    0..1), or a [1, H, W, 3] (ComfyUI IMAGE) / [1, 3, H, W] array or tensor."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as im:
            image = np.asarray(im.convert("RGB"))
    if hasattr(image, "detach"):  # a torch tensor
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or (arr.shape[1] != 3 and arr.shape[3] != 3) or arr.shape[0] != 1:
        raise ValueError(f"expected one RGB image, got an array of shape {arr.shape}")
    if arr.shape[1] != 3:
        arr = arr.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(arr, dtype=np.float32)


# ---- the parent's side: reference and conversions (not timed) --------------------------------

def reference_output(model, x: np.ndarray, threads: int) -> np.ndarray:
    """Our fp32 reference: the torch network on the whole image."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return model.float().eval()(torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(before)


def _export_onnx(model, x: np.ndarray, path: Path) -> None:
    import contextlib
    import io

    import torch

    # the exporter prints its progress; keep stdout for the table
    with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model.float().eval(), (torch.from_numpy(x),), str(path), input_names=["input"],
                          output_names=["output"], dynamo=True, external_data=False, verbose=False)


def _convert_openvino(model, x: np.ndarray, path: Path) -> None:
    import warnings

    import openvino as ov
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model.float().eval(), example_input=torch.from_numpy(x))
    converted.reshape({converted.inputs[0]: list(x.shape)})  # static shape, as the ONNX export is
    ov.save_model(converted, str(path), compress_to_fp16=False)  # the default would store fp16 weights


def _prepare(name: str, model_name: str, network, x: np.ndarray, workdir: Path) -> str:
    """The file the peer's process loads."""
    if name.startswith("ncnn"):
        from realesrgan_tiled.loading.bundled import bundled_model_path

        return str(bundled_model_path(model_name))
    if name.startswith("openvino"):
        path = workdir / "model.xml"
        if not path.exists():
            _convert_openvino(network, x, path)
        return str(path)
    if name == "onnxruntime":
        path = workdir / "model.onnx"
        if not path.exists():
            _export_onnx(network, x, path)
        return str(path)
    raise ValueError(f"no peer named {name!r}; choose from {', '.join(PEERS)}")


# ---- rows -----------------------------------------------------------------------------------

def _row(name, **fields) -> dict:
    row = {"name": name, "seconds": None, "first_seconds": None, "best_seconds": None, "runs": [],
           "peak_rss_bytes": None, "baseline_rss_bytes": None, "max_abs_diff": None, "skipped_reason": None,
           "detail": ""}
    row.update(fields)
    return row


def judge(row: dict, max_abs_diff: float, tolerance: float = TOLERANCE) -> dict:
    """Record the difference against the reference; a row over the tolerance does not count."""
    row["max_abs_diff"] = max_abs_diff
    if not max_abs_diff <= tolerance:  # NaN fails too
        row["skipped_reason"] = f"output differs from our fp32 reference by {max_abs_diff:.2e} > {tolerance:g}"
    return row


def _run_child(name, path, workdir: Path, threads, repeats, timeout) -> dict:
    out_path = workdir / f"{name}-out.npy"
    args = [name, path, str(workdir / "input.npy"), str(out_path), threads, repeats]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "peer_child.py"), json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"its process failed: {tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["output"] = np.load(out_path)
    out_path.unlink()
    return result


class Peers:
    """The peers of one model and photo, prepared once (the torch reference, each converter's
    file); ``row(name)`` then runs one peer in its own process. A context manager: the files go
    with it."""

    def __init__(self, model_name: str, image, threads: int = 2, repeats: int = 3, peers=None, timeout: float = 3600):
        self.names = list(PEERS) if peers is None else list(peers)
        for name in self.names:
            if name not in PEERS:
                raise ValueError(f"no peer named {name!r}; choose from {', '.join(PEERS)}")
        self.threads, self.repeats, self.timeout = threads, repeats, timeout
        self.skipped: dict[str, str] = {}
        for name in self.names:
            lacking = missing_packages(name)
            if lacking:
                self.skipped[name] = f"not installed: pip install {' '.join(lacking)}"
        self._tmp = tempfile.TemporaryDirectory(prefix="peers-")
        self.workdir = Path(self._tmp.name)
        self.paths: dict[str, str] = {}
        runnable = [n for n in self.names if n not in self.skipped]
        if not runnable:
            return
        from realesrgan_tiled.loading import load_model
        from realesrgan_tiled.loading.bundled import bundled_model_path

        network = load_model(bundled_model_path(model_name)).model
        x = as_nchw(image)
        self.reference = reference_output(network, x, threads)
        np.save(self.workdir / "input.npy", x)
        for name in runnable:
            try:
                self.paths[name] = _prepare(name, model_name, network, x, self.workdir)
            except Exception as e:  # a converter that cannot take the network: say so, go on
                self.skipped[name] = f"conversion failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._tmp.cleanup()

    def row(self, name: str) -> dict:
        """One fresh process of peer ``name``: see ``peer_rows`` for the fields."""
        if name in self.skipped:
            return _row(name, skipped_reason=self.skipped[name])
        try:
            result = _run_child(name, self.paths[name], self.workdir, self.threads, self.repeats, self.timeout)
        except Exception as e:
            self.skipped[name] = f"run failed: {e}"[:300]
            return _row(name, skipped_reason=self.skipped[name])
        out = result.pop("output")
        same_shape = out.shape == self.reference.shape
        diff = float(np.abs(out.astype(np.float64) - self.reference).max()) if same_shape else float("nan")
        runs = result["runs"]
        row = _row(name, seconds=runs[0], first_seconds=runs[0], best_seconds=min(runs), **result)
        if "min_psnr" in PEERS[name] and same_shape:  # a half-precision peer: judged by fidelity
            row["psnr_db"] = psnr(out, self.reference)
            row = judge(row, diff, tolerance=float("inf"))
            if row["psnr_db"] < PEERS[name]["min_psnr"]:
                row["skipped_reason"] = f"{row['psnr_db']:.1f} dB against our fp32 reference < {PEERS[name]['min_psnr']:g}"
        else:
            row = judge(row, diff)
        if not same_shape:
            row["skipped_reason"] = f"output shape {out.shape} != reference {self.reference.shape}"
        return row


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """dB between two outputs clamped to 0..1, as images are."""
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def keep_best(kept: dict | None, row: dict) -> dict:
    """Of two rounds of one peer, the one with the faster first run; best_seconds over both."""
    if row.get("first_seconds") is None:
        return kept or row
    if kept is None or kept.get("first_seconds") is None:
        return row
    best = min(row["best_seconds"], kept["best_seconds"])
    chosen = row if row["first_seconds"] < kept["first_seconds"] else kept
    return dict(chosen, best_seconds=best)


def peer_rows(model_name: str, image, threads: int = 2, repeats: int = 3, peers=None, rounds: int = 1,
              timeout: float = 3600) -> list[dict]:
    """Time each peer on the bundled model ``model_name`` and ``image`` (see ``as_nchw``).

    Each row: name, seconds (= first_seconds: the first inference in a fresh process, as our
    engine's row), first_seconds, best_seconds (best of ``repeats`` in that process), runs,
    peak_rss_bytes (the peer's whole process), baseline_rss_bytes (after loading, before the
    first inference), max_abs_diff (against our fp32 torch output), skipped_reason (None when
    the row counts), detail. With ``rounds`` > 1 the peers alternate and each keeps its round
    with the fastest first run (best_seconds is the best over all rounds)."""
    with Peers(model_name, image, threads, repeats, peers, timeout) as prepared:
        best: dict[str, dict] = {}
        for _ in range(max(1, rounds)):
            for name in prepared.names:  # one at a time: the machine's cores are the peer's alone
                best[name] = keep_best(best.get(name), prepared.row(name))
        return [best[n] for n in prepared.names]


# ---- the table ------------------------------------------------------------------------------

def _ours_row(model_name, width, height) -> dict:
    """Our engine's row from bench.py, in its own process (bench.py's --row)."""
    cmd = [sys.executable, str(ROOT / "bench" / "bench.py"), "--row", json.dumps([model_name, "ours", height, width, 1])]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(model_name: str, width: int, height: int, rows: list[dict], ours: dict | None = None) -> str:
    mib = 2**20
    lines = [f"| {model_name} ({width}x{height} photo) | first run s | best run s | peak RSS | max abs diff | note |",
             "|---|---|---|---|---|---|"]
    if ours is not None:
        lines.append(f"| ours (engine) | {ours['seconds']:.2f} | - | {ours['peak_rss'] / mib:.0f} MiB | reference | "
                     f"{ours.get('detail', '')} |")
    for r in rows:
        if r["first_seconds"] is None:
            lines.append(f"| {r['name']} | - | - | - | - | skipped: {r['skipped_reason']} |")
            continue
        note = r["detail"] + (f"; DOES NOT COUNT: {r['skipped_reason']}" if r["skipped_reason"] else "")
        lines.append(f"| {r['name']} | {r['first_seconds']:.2f} | {r['best_seconds']:.2f} | "
                     f"{r['peak_rss_bytes'] / mib:.0f} MiB | {r['max_abs_diff']:.1e} | {note} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="RealESRGAN_x4plus")
    parser.add_argument("--size", default="256x192", help="WxH crop of bench.py's photo (default 256x192)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="inferences per peer process (first and best reported)")
    parser.add_argument("--rounds", type=int, default=1, help="processes per peer, alternating; the fastest kept")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ", ".join(PEERS))
    parser.add_argument("--with-ours", action="store_true", help="add our engine's row (bench.py --row, default threads)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    rows = peer_rows(args.model, photo(width, height), args.threads, args.repeats,
                     [p for p in args.peers.split(",") if p], args.rounds)
    ours = _ours_row(args.model, width, height) if args.with_ours else None
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, {args.threads} threads, "
          f"{args.repeats} inferences per process (first run: fresh process, no warm-up), {args.rounds} round(s)")
    print(format_table(args.model, width, height, rows, ours))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "size": args.size, "threads": args.threads,
                                               "rows": rows, "ours": ours}, indent=1))


if __name__ == "__main__":
    main()
