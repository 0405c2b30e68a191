"""The text ``.param`` file: the graph, one layer a line.

Format: magic ``7767517``; ``<layer count> <blob count>``; then per layer
``type name n_in n_out in... out... k=v...``; ``k<=-23300`` marks an array param
``-(23300+id)=n,v1,...,vn``. The binary ``.param.bin`` form is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelLoadError

NCNN_MAGIC = 7767517


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, object]
    line: int

    def p(self, key: int, default=0):
        return self.params.get(key, default)

    def label(self) -> str:
        return f"layer {self.name!r} ({self.type}, line {self.line})"


def parse_param(path: Path) -> list[Layer]:
    name = path.name
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if raw[:4] == NCNN_MAGIC.to_bytes(4, "little"):
            raise ModelLoadError(f"{name}: a binary ncnn .param (.param.bin) is not supported; use the text .param") from None
        raise ModelLoadError(f"{name}: not a text ncnn .param file (not UTF-8 text)") from None
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines or lines[0][1] != str(NCNN_MAGIC):
        first = lines[0][1][:40] if lines else "(empty file)"
        raise ModelLoadError(f"{name}: not an ncnn .param file: the first line must be the magic {NCNN_MAGIC}, found {first!r}")
    if len(lines) < 2:
        raise ModelLoadError(f"{name}: ends after the magic line; expected '<layer count> <blob count>'")
    counts = lines[1][1].split()
    if len(counts) != 2 or not all(c.isdigit() for c in counts):
        raise ModelLoadError(f"{name}: line {lines[1][0]}: expected '<layer count> <blob count>', found {lines[1][1]!r}")
    layer_count, blob_count = int(counts[0]), int(counts[1])
    layers = [_parse_layer(ln, i, name) for i, ln in lines[2:]]
    if len(layers) != layer_count:
        raise ModelLoadError(f"{name}: the header declares {layer_count} layers but the file has {len(layers)}")
    blobs = {b for layer in layers for b in (*layer.bottoms, *layer.tops)}
    if len(blobs) != blob_count:
        raise ModelLoadError(f"{name}: the header declares {blob_count} blobs but the layers name {len(blobs)}")
    return layers


def _parse_layer(line: str, lineno: int, name: str) -> Layer:
    tok = line.split()
    where = f"{name}: line {lineno}"
    if len(tok) < 4 or not tok[2].isdigit() or not tok[3].isdigit():
        raise ModelLoadError(f"{where}: expected 'type name n_inputs n_outputs blobs... params...', found {line[:80]!r}")
    n_in, n_out = int(tok[2]), int(tok[3])
    blobs = tok[4:4 + n_in + n_out]
    if len(blobs) != n_in + n_out:
        raise ModelLoadError(f"{where}: layer {tok[1]!r} declares {n_in} input and {n_out} output blobs but names {len(blobs)}")
    params: dict[int, object] = {}
    for item in tok[4 + n_in + n_out:]:
        key, eq, value = item.partition("=")
        try:
            k = int(key)
            if not eq:
                raise ValueError
            if k <= -23300:
                n, *values = value.split(",")
                if int(n) != len(values):
                    raise ValueError
                params[-k - 23300] = [_number(v) for v in values]
            else:
                params[k] = _number(value)
        except ValueError:
            raise ModelLoadError(f"{where}: layer {tok[1]!r}: cannot read the parameter {item!r}") from None
    return Layer(tok[0], tok[1], blobs[:n_in], blobs[n_in:], params, lineno)


def _number(text: str) -> int | float:
    if any(c in text for c in ".eE") or text.lower() in ("nan", "inf", "-inf"):
        return float(text)
    return int(text)
