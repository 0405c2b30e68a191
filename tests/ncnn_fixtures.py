"""Test helpers for ncnn models: run a .param/.bin pair in the real ncnn runtime, and write
small .param/.bin pairs from torch weights (the way onnx2ncnn/pnnx lay them out)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from realesrgan_tiled.runtimes.ncnn.writer import GraphWriter as ProductionGraphWriter
from realesrgan_tiled.runtimes.ncnn.writer import conv_params, raw_fp32

FP16_TAG = 0x01306B47


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run torch single-threaded for the test (autouse where imported). On a busy 2-core
    machine torch's spinning OpenMP threads make a 2-thread RRDBNet run 5-10x slower than
    one thread; the results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blob_names(param: Path) -> tuple[str, str]:
    """(input blob, output blob) of a .param, as the ncnn runtime itself reads them."""
    import ncnn

    net = ncnn.Net()
    assert net.load_param(str(param)) == 0, param
    inputs, outputs = net.input_names(), net.output_names()
    assert len(inputs) == 1 and len(outputs) == 1, (inputs, outputs)
    return inputs[0], outputs[0]


def run_ncnn(param: Path, x: torch.Tensor, threads: int = 1) -> torch.Tensor:
    """Run the ncnn graph on CPU in full fp32. ``x``: [1, C, H, W] float (ncnn's Mat is C, H, W).
    One thread by default: ncnn's OpenMP threads spin-wait, which on a busy 2-core machine
    (torch in the same process, other test runs beside it) is several times slower than one."""
    import ncnn

    param = Path(param)
    data, output = blob_names(param)
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.num_threads = threads
    opt.openmp_blocktime = 0
    for name in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(opt, name, False)  # fp32 throughout, or the comparison measures ncnn's fp16, not our import
    opt.use_winograd_convolution = False  # same results within 1e-6; its weight transform costs more than it saves here
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(param.with_suffix(".bin"))) == 0
    ex = net.create_extractor()
    arr = np.ascontiguousarray(x[0].detach().cpu().numpy(), dtype=np.float32)
    assert ex.input(data, ncnn.Mat(arr)) == 0
    ret, out = ex.extract(output)
    assert ret == 0
    result = torch.from_numpy(np.array(out, copy=True)).unsqueeze(0)
    del ex, net
    return result


class GraphWriter(ProductionGraphWriter):
    """The production writer plus what only tests need: fp16 / lookup-table weights, Reorg,
    scalar BinaryOps, any layer, and ``save`` to files."""

    def conv(self, x, weight: torch.Tensor, bias: torch.Tensor | None, act=None, fp16=False) -> str:
        if not fp16:
            return super().conv(x, weight, bias, act)
        w = weight.detach().float().numpy().ravel()
        return self._add("Convolution", [x], conv_params(weight, bias, act), [_tagged(w, fp16), *raw_fp32(bias)])

    def mul_scalar(self, a, value: float) -> str:
        return self._add("BinaryOp", [a], {0: 2, 1: 1, 2: float(value)})

    def reorg(self, x, stride: int, mode: int = 0) -> str:
        return self._add("Reorg", [x], {0: stride, 1: mode} if mode else {0: stride})

    def layer(self, type_, xs, params=None) -> str:
        return self._add(type_, xs, params or {})

    def save(self, stem: Path, output: str, output_name: str = "output", data_name: str = "data") -> Path:
        text, weights = self.build(output, output_name, data_name)
        stem = Path(stem)
        param = stem.with_suffix(".param")
        param.write_text(text)
        stem.with_suffix(".bin").write_bytes(weights)
        return param


def _tagged(values: np.ndarray, fp16) -> bytes:
    """``fp16``: True (fp16 tag, padded to 4 bytes) or "table" (a 256-entry fp32 lookup table +
    uint8 indices, padded to 4 bytes, behind any other non-zero tag)."""
    if fp16 == "table":
        table = np.linspace(values.min(), values.max(), 256).astype("<f4")
        idx = np.abs(values[:, None] - table[None, :]).argmin(1).astype(np.uint8)
        raw = idx.tobytes() + b"\0" * (-len(idx) % 4)
        return struct.pack("<I", 1) + table.tobytes() + raw
    raw = values.astype("<f2").tobytes()
    raw += b"\0" * (-len(raw) % 4)
    return struct.pack("<I", FP16_TAG) + raw


# ---- the two architectures, written the way the real exports are ---------------------------

def write_rrdbnet(stem: Path, state: dict, num_block: int, num_upsample: int, fp16=False,
                  unshuffle: int = 1, unshuffle_mode: int = 0, sum_style: str = "eltwise",
                  resize: tuple[int, float] | None = None) -> Path:
    """An RRDBNet graph from basicsr-keyed weights (``sum_style``: "eltwise" as onnx2ncnn writes
    the 0.2-scaled residuals, or "binaryop" for a multiply-by-scalar plus add)."""
    g = GraphWriter()

    def conv(x, key, act=None):
        return g.conv(x, state[f"{key}.weight"], state[f"{key}.bias"], act, fp16)

    def residual(y, x):  # 0.2 * y + x
        if sum_style == "eltwise":
            return g.eltwise_sum([y, x], [0.2, 1.0])
        return g.add(x, g.mul_scalar(y, 0.2))

    x = g.data
    if unshuffle > 1:
        x = g.reorg(x, unshuffle, unshuffle_mode)
        if unshuffle_mode == 1:  # Reorg mode 1 orders channels offset-major: reorder conv_first to match
            w = state["conv_first.weight"]
            c = w.shape[1] // unshuffle**2
            order = [k * c + ch for ch in range(c) for k in range(unshuffle**2)]
            inverse = [order.index(i) for i in range(len(order))]
            state = dict(state, **{"conv_first.weight": w[:, inverse]})
    feat = conv(x, "conv_first")
    h = feat
    for n in range(num_block):
        block_in = h
        for r in range(1, 4):
            key = f"body.{n}.rdb{r}"
            feeds = [h]
            for j in range(1, 5):
                inp = feeds[0] if j == 1 else g.concat(feeds)
                feeds.append(conv(inp, f"{key}.conv{j}", 0.2))
            h = residual(conv(g.concat(feeds), f"{key}.conv5"), h)
        h = residual(h, block_in)
    h = g.add(feat, conv(h, "conv_body")) if sum_style == "eltwise" else g.add(conv(h, "conv_body"), feat)
    for i in range(1, num_upsample + 1):
        h = conv(g.interp(h, 1, 2.0), f"conv_up{i}", 0.2)
    out = conv(conv(h, "conv_hr", 0.2), "conv_last")
    if resize is not None:
        out = g.interp(out, *resize)
    return g.save(stem, out)


def write_srvgg(stem: Path, state: dict, upscale: int, act: str, fp16=False, fused=True,
                resize: tuple[int, float] | None = None, shuffle_mode: int = 0) -> Path:
    """An SRVGGNetCompact graph from ``body.N`` weights; ``act``: "prelu", "relu" or "leakyrelu"
    (fused into the convs or as separate ReLU layers)."""
    g = GraphWriter()
    convs = sorted(int(k.split(".")[1]) for k in state if k.endswith(".weight") and state[k].ndim == 4)
    h = g.data
    for i in convs:
        w, b = state[f"body.{i}.weight"], state[f"body.{i}.bias"]
        last = i == convs[-1]
        if last and shuffle_mode == 1:  # PixelShuffle mode 1 reads channels offset-major
            c = w.shape[0] // upscale**2
            order = [k * c + ch for ch in range(c) for k in range(upscale**2)]
            inverse = [order.index(j) for j in range(len(order))]
            w, b = w[inverse], b[inverse]
        slope = {"relu": "relu", "leakyrelu": 0.1}.get(act)
        if last or act == "prelu" or not fused:
            h = g.conv(h, w, b, None, fp16)
            if not last:
                h = g.prelu(h, state[f"body.{i + 1}.weight"]) if act == "prelu" else g.relu(h, 0.1 if act == "leakyrelu" else 0.0)
        else:
            h = g.conv(h, w, b, slope, fp16)
    h = g.add(g.pixel_shuffle(h, upscale, shuffle_mode), g.interp(g.data, 1, float(upscale)))
    if resize is not None:
        h = g.interp(h, *resize)
    return g.save(stem, h)
