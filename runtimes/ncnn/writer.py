"""Writes ncnn graphs (.param text and .bin weights) from torch weights, the way onnx2ncnn and
pnnx lay them out. The ncnn backend (``runtimes/ncnn/runtime.py``) builds its networks with it in
memory; the tests write files with it."""
from __future__ import annotations

import struct

import numpy as np
import torch

MAGIC = 7767517
FP32_TAG = 0  # a weight blob's leading tag: raw little-endian fp32 follows


class GraphWriter:
    """Builds an ncnn graph layer by layer; ``build`` inserts the Split layers ncnn needs where
    a blob has several readers and returns the .param text and the .bin bytes (weights in layer
    order). The input blob is named "data" and the output "output" unless ``build`` says otherwise."""

    def __init__(self):
        self.layers: list[dict] = []
        self.count = 0
        self.data = self._add("Input", [], {}, name="input")

    def _add(self, type_, bottoms, params, weights=(), name=None) -> str:
        self.count += 1
        top = f"b{self.count}"
        self.layers.append(dict(type=type_, name=name or f"{type_.lower()}_{self.count}", bottoms=list(bottoms),
                                tops=[top], params=params, weights=list(weights)))
        return top

    def conv(self, x, weight: torch.Tensor, bias: torch.Tensor | None, act=None) -> str:
        """A 3x3 (or any odd kxk) stride-1 conv with "same" zero padding; ``act``: None, "relu"
        or a LeakyReLU slope, fused into the layer."""
        return self._add("Convolution", [x], conv_params(weight, bias, act), [tagged_fp32(weight), *raw_fp32(bias)])

    def relu(self, x, slope: float = 0.0) -> str:
        return self._add("ReLU", [x], {0: float(slope)} if slope else {})

    def prelu(self, x, slopes: torch.Tensor) -> str:
        return self._add("PReLU", [x], {0: slopes.numel()}, raw_fp32(slopes))

    def concat(self, xs) -> str:
        return self._add("Concat", xs, {0: 0})

    def eltwise_sum(self, xs, coeffs) -> str:
        return self._add("Eltwise", xs, {0: 1, -23301: [float(c) for c in coeffs]})

    def add(self, a, b) -> str:
        return self._add("BinaryOp", [a, b], {0: 0})

    def interp(self, x, mode: int, scale: float) -> str:
        """Interp: mode 1 nearest, 2 bilinear, 3 bicubic; by ``scale`` on both axes."""
        return self._add("Interp", [x], {0: mode, 1: float(scale), 2: float(scale)})

    def pixel_shuffle(self, x, r: int, mode: int = 0) -> str:
        return self._add("PixelShuffle", [x], {0: r, 1: mode} if mode else {0: r})

    def build(self, output: str, output_name: str = "output", data_name: str = "data") -> tuple[str, bytes]:
        layers = self._with_splits(self._renamed({output: output_name, self.data: data_name}))
        blobs = {b for layer in layers for b in (*layer["bottoms"], *layer["tops"])}
        lines = [str(MAGIC), f"{len(layers)} {len(blobs)}"]
        for layer in layers:
            fields = [f"{layer['type']:<24}", f"{layer['name']:<24}", str(len(layer["bottoms"])), str(len(layer["tops"])),
                      *layer["bottoms"], *layer["tops"]]
            fields += [_param(k, v) for k, v in layer["params"].items()]
            lines.append(" ".join(fields))
        return "\n".join(lines) + "\n", b"".join(w for layer in layers for w in layer["weights"])

    def _renamed(self, rename: dict[str, str]) -> list[dict]:
        return [dict(layer, bottoms=[rename.get(b, b) for b in layer["bottoms"]],
                     tops=[rename.get(t, t) for t in layer["tops"]]) for layer in self.layers]

    @staticmethod
    def _with_splits(layers: list[dict]) -> list[dict]:
        """ncnn reads each blob once: a blob with several readers goes through a Split layer."""
        readers: dict[str, int] = {}
        for layer in layers:
            for b in layer["bottoms"]:
                readers[b] = readers.get(b, 0) + 1
        final = []
        for at, layer in enumerate(layers):
            final.append(layer)
            for t in layer["tops"]:
                n = readers.get(t, 0)
                if n < 2:
                    continue
                outs = [f"{t}_splitncnn_{i}" for i in range(n)]
                final.append(dict(type="Split", name=f"splitncnn_{t}", bottoms=[t], tops=outs, params={}, weights=[]))
                used = 0
                for later in layers[at + 1:]:
                    for i, b in enumerate(later["bottoms"]):
                        if b == t:
                            later["bottoms"][i] = outs[used]
                            used += 1
        return final


def conv_params(weight: torch.Tensor, bias: torch.Tensor | None, act) -> dict:
    out, _, kh, kw = weight.shape
    params = {0: out, 1: kw, 11: kh, 4: kw // 2, 5: int(bias is not None), 6: weight.numel()}
    if act == "relu":
        params[9] = 1
    elif act is not None:  # a LeakyReLU slope
        params[9] = 2
        params[-23310] = [float(act)]
    return params


def as_fp32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().ravel().astype("<f4")


def tagged_fp32(weight: torch.Tensor) -> bytes:
    return struct.pack("<I", FP32_TAG) + as_fp32(weight).tobytes()


def raw_fp32(t: torch.Tensor | None) -> list[bytes]:
    """Biases and slopes are stored untagged."""
    return [] if t is None else [as_fp32(t).tobytes()]


def _param(key: int, value) -> str:
    if isinstance(value, list):
        return f"{key}={len(value)}," + ",".join(f"{v:e}" for v in value)
    if isinstance(value, float):
        return f"{key}={value:e}"
    return f"{key}={value}"
