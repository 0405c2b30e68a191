"""The ``.bin`` file: the weights, read in layer order with no index of their own.

Per Convolution: a 4-byte tag then ``weight_data_size`` values (tag 0x01306B47: fp16, padded
to 4 bytes; 0: fp32; 0x0002C056: fp32; other non-zero: a 256-entry fp32 table followed by
uint8 indices, padded to 4 bytes; 0x000D4B38: int8, refused), then ``num_output`` raw fp32
biases if ``5=1``. PReLU: ``0=num_slope`` raw fp32 slopes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ModelLoadError
from .param_file import Layer

TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056


class _BinReader:
    def __init__(self, data: bytes, name: str):
        self.data = data
        self.name = name
        self.pos = 0
        self.pending_reads = 0  # weighted reads after the current one (for the error message)

    def _take(self, n: int, layer: Layer, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            short = end - len(self.data)
            more = " (at least; later layers' weights are not counted)" if self.pending_reads else ""
            raise ModelLoadError(
                f"{self.name}: the weights file is {short} byte(s) too short{more}: {layer.label()} needs "
                f"{n} bytes of {what} at offset {self.pos}, but the file ends at {len(self.data)}"
            )
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def raw(self, count: int, layer: Layer, what: str) -> np.ndarray:
        return np.frombuffer(self._take(4 * count, layer, what), dtype="<f4").astype(np.float32)

    def tagged(self, count: int, layer: Layer, what: str) -> np.ndarray:
        head = self._take(4, layer, f"{what} (storage tag)")
        tag = int.from_bytes(head, "little")
        if tag == TAG_FP16:
            buf = self._take(_align4(2 * count), layer, f"{what} (fp16)")
            return np.frombuffer(buf[:2 * count], dtype="<f2").astype(np.float32)
        if tag == TAG_INT8:
            raise ModelLoadError(f"{self.name}: {layer.label()}: int8-quantised weights are not supported; use an fp16/fp32 export")
        if tag == TAG_FP32_SCALED or tag == 0:
            return self.raw(count, layer, what)
        if sum(head) != 0:  # 256-entry lookup table + uint8 indices
            table = self.raw(256, layer, f"{what} (quantisation table)")
            idx = np.frombuffer(self._take(_align4(count), layer, f"{what} (table indices)")[:count], dtype=np.uint8)
            return table[idx]
        raise ModelLoadError(f"{self.name}: {layer.label()}: unknown weight storage tag 0x{tag:08X}")  # pragma: no cover


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def read_weights(layers: list[Layer], bin_path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Consume the ``.bin`` exactly, in layer order: layer name -> {"weight", "bias"} arrays."""
    data = bin_path.read_bytes()
    reader = _BinReader(data, bin_path.name)
    reads = []  # (layer, what) in file order
    for layer in layers:
        if layer.type == "Convolution":
            reads.append((layer, "weight"))
            if layer.p(5, 0):
                reads.append((layer, "bias"))
        elif layer.type == "PReLU":
            reads.append((layer, "slopes"))
    out: dict[str, dict[str, np.ndarray]] = {}
    for i, (layer, what) in enumerate(reads):
        reader.pending_reads = len(reads) - 1 - i
        entry = out.setdefault(layer.name, {})
        if what == "weight":
            entry["weight"] = reader.tagged(int(layer.p(6, 0)), layer, "convolution weights")
        elif what == "bias":
            entry["bias"] = reader.raw(int(layer.p(0, 0)), layer, "biases")
        else:
            n = layer.p(0, 0)
            if not isinstance(n, int) or n < 1:
                raise ModelLoadError(f"{bin_path.name}: {layer.label()}: PReLU needs num_slope (0=) >= 1")
            entry["weight"] = reader.raw(n, layer, "PReLU slopes")
    extra = len(data) - reader.pos
    if extra:
        raise ModelLoadError(
            f"{bin_path.name}: the weights file is {extra} byte(s) too long: the graph's layers use {reader.pos} "
            f"of its {len(data)} bytes; the .bin does not belong to this .param, or is corrupt"
        )
    return out
