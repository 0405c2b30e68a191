"""ncnn ``.param`` + ``.bin`` pairs -> a ``ModelSpec`` with canonical (basicsr / ``body.N``) keys.

Real-ESRGAN's ncnn exports (realesrgan-ncnn-vulkan, sr-vulkan) are plain graphs of
Convolution / Concat / Eltwise / Interp / PixelShuffle / PReLU layers. We do not run the graph:
we check that it *is* an RRDBNet or an SRVGGNetCompact, layer by layer, and lift the weights
into the state dict our own networks load. Anything that does not fit exactly is refused with
an error naming the file, the layer and what was expected there.

The graph is matched backwards from the output blob, so every comparison is between resolved
blobs (``Split`` outputs stand for their source): "conv2 reads Concat(x, x1)" is checked as
"the Concat's inputs are the very blobs the RDB input and conv1 produced".

File format facts used here (text ``.param``; the ``.bin`` is read in layer order):

* ``.param``: magic ``7767517``; ``<layer count> <blob count>``; then per layer
  ``type name n_in n_out in... out... k=v...``; ``k<=-23300`` marks an array param
  ``-(23300+id)=n,v1,...,vn``.
* ``.bin``, per Convolution: a 4-byte tag then ``weight_data_size`` values (tag 0x01306B47:
  fp16, padded to 4 bytes; 0: fp32; 0x0002C056: fp32; other non-zero: a 256-entry fp32 table
  followed by uint8 indices, padded to 4 bytes; 0x000D4B38: int8, refused), then
  ``num_output`` raw fp32 biases if ``5=1``. PReLU: ``0=num_slope`` raw fp32 slopes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ModelLoadError
from .sniff import ModelSpec, sniff

NCNN_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056

RESIZE_MODES = {1: "nearest", 2: "bilinear", 3: "bicubic"}
RRDB_SLOPE = 0.2  # LeakyReLU slope inside RRDBNet
RESIDUAL_SCALE = 0.2  # RDB / RRDB residual scaling
SRVGG_LEAKY_SLOPE = 0.1
_TOL = 1e-6
# layers that the two architectures can contain; anything else is refused before weights are read
KNOWN_TYPES = {"Input", "Split", "Convolution", "ReLU", "PReLU", "Concat", "Eltwise", "BinaryOp",
               "Interp", "PixelShuffle", "Reorg"}


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


@dataclass
class _Conv:
    layer: Layer
    in_blob: str
    act: str | None  # None, "relu", "leakyrelu:<slope>"
    act_layer: Layer | None = None  # a separate ReLU layer, when not fused


@dataclass
class _Match:
    """What the graph turned out to be: layer name -> canonical key, plus fix-ups."""
    architecture: str
    convs: dict[str, str] = field(default_factory=dict)  # conv layer name -> "conv_first" / "body.0"
    prelus: dict[str, str] = field(default_factory=dict)  # PReLU layer name -> "body.1"
    act_type: str | None = None
    unshuffle: int = 1
    unshuffle_mode: int = 0
    shuffle: int = 1
    shuffle_mode: int = 0
    num_upsample: int = 0
    num_block: int = 0
    resize: tuple[float, str] | None = None


# ---- entry point -------------------------------------------------------------------------

def read_ncnn(path: Path) -> tuple[ModelSpec, tuple[float, str] | None]:
    """Read an ncnn model (``.param`` or ``.bin``; the other file must sit beside it)."""
    path = Path(path)
    param_path, bin_path = _pair(path)
    layers = parse_param(param_path)
    match = _GraphMatcher(layers, param_path.name).match()
    weights = read_weights(layers, bin_path)
    state = _state_dict(match, layers, weights, param_path.name)
    try:
        spec = sniff(state, match.act_type)
    except (ModelLoadError, ValueError, KeyError, IndexError) as e:
        raise ModelLoadError(f"{param_path.name}: the weights do not form a valid {match.architecture}: {e}") from None
    if spec is None or spec.architecture != match.architecture:
        raise ModelLoadError(f"{param_path.name}: the graph is an {match.architecture} but its weights are not")
    _check_hyperparameters(spec, match, param_path.name)
    spec.key_format = "ncnn"
    return spec, match.resize


def _pair(path: Path) -> tuple[Path, Path]:
    suffix = path.suffix.lower()
    if suffix == ".param":
        param_path, bin_path = path, path.with_suffix(".bin")
    elif suffix == ".bin":
        param_path, bin_path = path.with_suffix(".param"), path
    else:
        raise ModelLoadError(f"{path.name}: an ncnn model is a .param file with a .bin beside it")
    for p, role in ((param_path, "graph (.param)"), (bin_path, "weights (.bin)")):
        if not p.is_file():
            raise ModelLoadError(
                f"{path.name}: the ncnn {role} file {p.name} is missing; it must sit beside {path.name} with the same name"
            )
    return param_path, bin_path


# ---- .param ------------------------------------------------------------------------------

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


# ---- graph matching ----------------------------------------------------------------------

class _GraphMatcher:
    def __init__(self, layers: list[Layer], name: str):
        self.name = name
        self.layers = layers
        self.alias: dict[str, str] = {}
        self.producer: dict[str, Layer] = {}
        self.visited: set[int] = set()
        consumed: set[str] = set()
        inputs = [layer for layer in layers if layer.type == "Input"]
        if len(inputs) != 1 or len(inputs[0].tops) != 1:
            raise ModelLoadError(f"{name}: expected exactly one Input layer with one blob, found {len(inputs)}")
        self.input_layer = inputs[0]
        self.data = inputs[0].tops[0]
        for layer in layers:
            if layer.type not in KNOWN_TYPES:
                hint = ""
                if layer.type in ("Reshape", "Permute"):
                    hint = ("; a pixel-unshuffle (Real-ESRGAN x2/x1) is only recognised as one Reorg layer, "
                            "not as Reshape/Permute layers")
                raise ModelLoadError(
                    f"{name}: {layer.label()}: unexpected layer type {layer.type!r}; a Real-ESRGAN graph "
                    f"(RRDBNet or SRVGGNetCompact) only has {', '.join(sorted(KNOWN_TYPES))}{hint}"
                )
            if layer.type != "Input" and (not layer.bottoms or not layer.tops):
                raise ModelLoadError(f"{name}: {layer.label()}: expected at least one input and one output blob")
            for b in layer.bottoms:
                if b not in self.producer and b not in self.alias:
                    raise ModelLoadError(f"{name}: {layer.label()} reads blob {b!r} before any layer produces it")
                consumed.add(b)
            for t in layer.tops:
                if t in self.producer or t in self.alias:
                    raise ModelLoadError(f"{name}: {layer.label()} produces blob {t!r} a second time")
                if layer.type == "Split":
                    if len(layer.bottoms) != 1:
                        raise ModelLoadError(f"{name}: {layer.label()}: a Split must have one input")
                    self.alias[t] = self.src(layer.bottoms[0])
                else:
                    self.producer[t] = layer
            if layer.type == "Split":
                self.visited.add(id(layer))
        self.visited.add(id(self.input_layer))
        sinks = [b for b in (*self.producer, *self.alias) if b not in consumed]
        if len(sinks) != 1:
            raise ModelLoadError(
                f"{name}: expected one output blob (produced, never read), found {len(sinks)}: {', '.join(sinks[:5])}"
            )
        self.output = sinks[0]

    # -- helpers --

    def src(self, blob: str) -> str:
        return self.alias.get(blob, blob)

    def prod(self, blob: str) -> Layer | None:
        return self.producer.get(self.src(blob))

    def fail(self, layer: Layer | None, expected: str, blob: str | None = None) -> ModelLoadError:
        if layer is None:
            where = f"blob {blob!r} (the network input)" if blob is not None else "the graph"
            return ModelLoadError(f"{self.name}: {where}: expected {expected}")
        return ModelLoadError(f"{self.name}: {layer.label()}: expected {expected}")

    def take(self, blob: str, types: tuple[str, ...], expected: str) -> Layer:
        layer = self.prod(blob)
        if layer is None or layer.type not in types:
            raise self.fail(layer, expected, blob)
        if id(layer) in self.visited:
            raise self.fail(layer, f"{expected} (this layer is already part of another branch)")
        self.visited.add(id(layer))
        return layer

    def conv(self, blob: str, act: str | None, what: str) -> _Conv:
        """The 3x3 / stride 1 / pad 1 convolution producing ``blob``, followed by ``act``
        (fused ``9=`` or a separate ReLU layer). ``act`` "any" accepts and reports any
        SRVGG-style activation."""
        layer = self.prod(blob)
        act_layer = None
        if layer is not None and layer.type == "ReLU" and act is not None:
            act_layer = self.take(blob, ("ReLU",), f"the activation after {what}")
            self._one_in(act_layer)
            found = _relu_kind(float(act_layer.p(0, 0.0)))
            layer = self.take(act_layer.bottoms[0], ("Convolution",), f"{what} (Convolution) before {act_layer.name}")
            if layer.p(9, 0) != 0:
                raise self.fail(layer, f"{what} without a fused activation: a separate ReLU layer follows it")
        else:
            layer = self.take(blob, ("Convolution",), f"{what} (Convolution{'' if act is None else ' + ' + _act_text(act)})")
            found = _fused_act(layer)
            if found == "?":
                raise self.fail(layer, f"{what} with {_act_text(act)}, found activation type 9={layer.p(9)}")
        if act == "any":
            if found is None:
                raise self.fail(act_layer or layer, f"{what} followed by an activation")
        elif found != act:
            raise self.fail(act_layer or layer, f"{what} with {_act_text(act)}, found {_act_text(found)}")
        self._one_in(layer)
        self._check_conv_geometry(layer, what)
        return _Conv(layer, layer.bottoms[0], found, act_layer)

    def _one_in(self, layer: Layer) -> None:
        if len(layer.bottoms) != 1 or len(layer.tops) != 1:
            raise self.fail(layer, "one input and one output blob")

    def _check_conv_geometry(self, layer: Layer, what: str) -> None:
        kw = layer.p(1, 0)
        geometry = {
            "kernel": (kw, layer.p(11, kw)),
            "dilation": (layer.p(2, 1), layer.p(12, layer.p(2, 1))),
            "stride": (layer.p(3, 1), layer.p(13, layer.p(3, 1))),
        }
        pl = layer.p(4, 0)
        pt = layer.p(14, pl)
        pads = (pl, pt, layer.p(15, pl), layer.p(16, pt))
        if geometry != {"kernel": (3, 3), "dilation": (1, 1), "stride": (1, 1)} or pads != (1, 1, 1, 1):
            raise self.fail(layer, f"{what} as a 3x3 convolution, stride 1, padding 1; found {geometry}, pads {pads}")
        if layer.p(8, 0) or layer.p(19, 0) or layer.p(18, 0.0):
            raise self.fail(layer, f"{what} as a plain float convolution (no int8 scales 8=, dynamic weights 19=, pad value 18=)")
        out, size = layer.p(0, 0), layer.p(6, 0)
        if not isinstance(out, int) or not isinstance(size, int) or out <= 0 or size <= 0 or size % (out * 9):
            raise self.fail(layer, f"{what} with weight_data_size (6=) a multiple of num_output (0=) x 9; found 0={out} 6={size}")

    def sum_terms(self, blob: str, what: str) -> list[tuple[float, str]]:
        """A weighted sum: Eltwise SUM with optional coefficients, or a BinaryOp add whose
        operands may each be a BinaryOp multiply-by-scalar."""
        layer = self.prod(blob)
        if layer is not None and layer.type == "Eltwise":
            layer = self.take(blob, ("Eltwise",), what)
            if layer.p(0, 0) != 1 or len(layer.bottoms) != 2:
                raise self.fail(layer, f"{what}: an Eltwise sum (0=1) of two blobs")
            coeffs = layer.p(1, [1.0, 1.0])
            if not isinstance(coeffs, list) or len(coeffs) != 2:
                raise self.fail(layer, f"{what}: two Eltwise coefficients (-23301=2,a,b), found {coeffs}")
            return list(zip((float(c) for c in coeffs), layer.bottoms))
        layer = self.take(blob, ("BinaryOp",), f"{what} (Eltwise sum or BinaryOp add)")
        if layer.p(0, 0) != 0 or layer.p(1, 0) != 0 or len(layer.bottoms) != 2:
            raise self.fail(layer, f"{what}: a BinaryOp add (0=0) of two blobs")
        terms = []
        for b in layer.bottoms:
            mul = self.prod(b)
            if mul is not None and mul.type == "BinaryOp" and mul.p(0, 0) == 2 and mul.p(1, 0) == 1:
                self.take(b, ("BinaryOp",), what)
                self._one_in(mul)
                terms.append((float(mul.p(2, 0.0)), mul.bottoms[0]))
            else:
                terms.append((1.0, b))
        return terms

    def scaled_residual(self, blob: str, what: str) -> tuple[str, str]:
        """``blob = 0.2 * y + x``: returns (y, x)."""
        terms = self.sum_terms(blob, what)
        layer = self.prod(blob)
        scaled = [b for c, b in terms if abs(c - RESIDUAL_SCALE) < _TOL]
        plain = [b for c, b in terms if abs(c - 1.0) < _TOL]
        if len(scaled) != 1 or len(plain) != 1:
            raise self.fail(layer, f"{what}: a residual sum 0.2 * branch + input, found coefficients {[c for c, _ in terms]}")
        return scaled[0], plain[0]

    def same(self, a: str, b: str) -> bool:
        return self.src(a) == self.src(b)

    # -- the whole graph --

    def match(self) -> _Match:
        out = self.output
        resize = None
        last = self.prod(out)
        if last is not None and last.type == "Interp" and not self.same(last.bottoms[0], self.data):
            interp = self.take(out, ("Interp",), "a trailing resize")
            resize = self._resize(interp)
            out = interp.bottoms[0]
        last = self.prod(out)
        if last is not None and last.type == "BinaryOp" and any(
            (p := self.prod(b)) is not None and p.type == "PixelShuffle" for b in last.bottoms
        ):
            m = self._srvgg(out)
        elif last is not None and last.type in ("Convolution", "ReLU"):
            m = self._rrdbnet(out)
        else:
            raise self.fail(
                last,
                "the network output to come from a Convolution (RRDBNet's conv_last) or from a BinaryOp adding "
                "a PixelShuffle and an upscaled input (SRVGGNetCompact)",
                out,
            )
        m.resize = resize
        left = [layer for layer in self.layers if id(layer) not in self.visited]
        if left:
            raise self.fail(left[0], "no layers outside the recognised network; this one is not part of it")
        return m

    def _resize(self, layer: Layer) -> tuple[float, str]:
        self._one_in(layer)
        mode = layer.p(0, 0)
        hs, ws = float(layer.p(1, 1.0)), float(layer.p(2, 1.0))
        if mode not in RESIZE_MODES or abs(hs - ws) > _TOL or hs <= 0 or layer.p(3, 0) or layer.p(4, 0) \
                or layer.p(5, 0) or layer.p(6, 0):
            raise self.fail(layer, "a trailing resize: nearest/bilinear/bicubic (0=1/2/3) by one scale factor "
                                   "(1= equal to 2=), no fixed output size (3=, 4=), no dynamic size (5=), no align_corner (6=)")
        return hs, RESIZE_MODES[mode]

    def _nearest_up(self, layer: Layer, factor: int, what: str) -> None:
        self._one_in(layer)
        if (layer.p(0, 0) != 1 or abs(float(layer.p(1, 1.0)) - factor) > _TOL or abs(float(layer.p(2, 1.0)) - factor) > _TOL
                or layer.p(3, 0) or layer.p(4, 0) or layer.p(5, 0) or layer.p(6, 0)):
            raise self.fail(layer, f"{what}: a nearest (0=1) x{factor} Interp (1={factor} 2={factor})")

    # -- RRDBNet --

    def _rrdbnet(self, out: str) -> _Match:
        m = _Match("RRDBNet")
        lrelu = f"leakyrelu:{RRDB_SLOPE}"
        last = self.conv(out, None, "conv_last")
        m.convs[last.layer.name] = "conv_last"
        hr = self.conv(last.in_blob, lrelu, "conv_hr")
        m.convs[hr.layer.name] = "conv_hr"
        blob = hr.in_blob
        ups = []
        while (p := self.prod(blob)) is not None and p.type in ("Convolution", "ReLU"):
            up = self.conv(blob, lrelu, "an upsampling conv (conv_upN)")
            interp = self.take(up.in_blob, ("Interp",), "a nearest x2 Interp before the upsampling conv")
            self._nearest_up(interp, 2, "before conv_upN")
            ups.append(up)
            blob = interp.bottoms[0]
        for i, up in enumerate(reversed(ups), 1):
            m.convs[up.layer.name] = f"conv_up{i}"
        m.num_upsample = len(ups)
        # trunk: feat + conv_body(body(feat))
        terms = self.sum_terms(blob, "the trunk sum conv_first + conv_body")
        if [abs(c - 1.0) < _TOL for c, _ in terms] != [True, True]:
            raise self.fail(self.prod(blob), f"the trunk sum with coefficients 1, 1, found {[c for c, _ in terms]}")
        feat_blob, body_blob = self._split_trunk(terms, blob)
        first = self.conv(feat_blob, None, "conv_first")
        m.convs[first.layer.name] = "conv_first"
        if not self.same(first.in_blob, self.data):
            reorg = self.take(first.in_blob, ("Reorg",),
                              "the network input, or a pixel-unshuffle (Reorg) of it, feeding conv_first")
            self._one_in(reorg)
            if not self.same(reorg.bottoms[0], self.data) or reorg.p(0, 1) not in (2, 4) or reorg.p(1, 0) not in (0, 1):
                raise self.fail(reorg, "a pixel-unshuffle of the network input: Reorg with stride 2 or 4 (0=), mode 0 or 1 (1=)")
            m.unshuffle, m.unshuffle_mode = reorg.p(0, 1), reorg.p(1, 0)
        body_conv = self.conv(body_blob, None, "conv_body")
        m.convs[body_conv.layer.name] = "conv_body"
        blocks = []
        blob = body_conv.in_blob
        while not self.same(blob, feat_blob):
            if len(blocks) > len(self.layers):
                raise self.fail(self.prod(blob), "the RRDB chain to end at conv_first's output")
            block_in, rdbs = self._rrdb(blob)
            blocks.append(rdbs)
            blob = block_in
        for n, rdbs in enumerate(reversed(blocks)):
            for r, convs in enumerate(rdbs, 1):
                for j, conv in enumerate(convs, 1):
                    m.convs[conv.layer.name] = f"body.{n}.rdb{r}.conv{j}"
        m.num_block = len(blocks)
        return m

    def _split_trunk(self, terms, blob) -> tuple[str, str]:
        """Which operand of the trunk sum is conv_first's output (feat) and which conv_body's."""
        found = []
        for i, (_, b) in enumerate(terms):
            p = self.prod(b)
            if p is not None and p.type == "Convolution" and len(p.bottoms) == 1:
                src = self.prod(p.bottoms[0])
                if self.same(p.bottoms[0], self.data) or (src is not None and src.type == "Reorg"):
                    found.append(i)
        if len(found) != 1:
            raise self.fail(self.prod(blob), "the trunk sum of conv_first's output (read from the network input) and conv_body's output")
        feat = terms[found[0]][1]
        return feat, terms[1 - found[0]][1]

    def _rrdb(self, out: str) -> tuple[str, list[list[_Conv]]]:
        """``out = 0.2 * rdb3(rdb2(rdb1(x))) + x``: returns x and the RDBs' convs in order."""
        y, x = self.scaled_residual(out, "the end of an RRDB (0.2 * rdb3 + input)")
        rdbs = []
        for _ in range(3):
            y, convs = self._rdb(y)
            rdbs.append(convs)
        if not self.same(y, x):
            raise self.fail(self.prod(out), "the RRDB's residual input to be the input of its first RDB")
        return x, rdbs[::-1]

    def _rdb(self, out: str) -> tuple[str, list[_Conv]]:
        """``out = 0.2 * conv5(cat(x, x1..x4)) + x``, ``xk = lrelu(convk(cat(x, x1..x_{k-1})))``."""
        y, x = self.scaled_residual(out, "the end of a residual dense block (0.2 * conv5 + input)")
        conv5 = self.conv(y, None, "RDB conv5")
        lrelu = f"leakyrelu:{RRDB_SLOPE}"
        convs = [conv5]
        cat = self.take(conv5.in_blob, ("Concat",), "the Concat(x, x1, x2, x3, x4) feeding RDB conv5")
        if len(cat.bottoms) != 5 or cat.p(0, 0) != 0 or not self.same(cat.bottoms[0], x):
            raise self.fail(cat, "a channel Concat (0=0) of the RDB input and conv1..conv4 outputs, in that order")
        expected_inputs = cat.bottoms
        for k in range(4, 0, -1):
            conv = self.conv(expected_inputs[k], lrelu, f"RDB conv{k}")
            convs.insert(0, conv)
            if k == 1:
                if not self.same(conv.in_blob, x):
                    raise self.fail(conv.layer, "RDB conv1 to read the block input")
            else:
                sub = self.take(conv.in_blob, ("Concat",), f"a Concat feeding RDB conv{k}")
                if sub.p(0, 0) != 0 or len(sub.bottoms) != k or not all(
                    self.same(a, b) for a, b in zip(sub.bottoms, expected_inputs[:k])
                ):
                    raise self.fail(sub, f"a channel Concat of the RDB input and conv1..conv{k - 1} outputs, in that order")
        return x, convs

    # -- SRVGGNetCompact --

    def _srvgg(self, out: str) -> _Match:
        m = _Match("SRVGGNetCompact")
        add = self.take(out, ("BinaryOp",), "the final add (BinaryOp 0=0)")
        if add.p(0, 0) != 0 or add.p(1, 0) != 0 or len(add.bottoms) != 2:
            raise self.fail(add, "the final residual add: BinaryOp add (0=0) of two blobs")
        first = self.prod(add.bottoms[0])
        order = [0, 1] if first is not None and first.type == "PixelShuffle" else [1, 0]
        ps = self.take(add.bottoms[order[0]], ("PixelShuffle",), "the PixelShuffle of the last conv")
        up = self.take(add.bottoms[order[1]], ("Interp",), "a nearest upscale (Interp) of the network input")
        self._one_in(ps)
        r = ps.p(0, 1)
        if not isinstance(r, int) or r < 1 or ps.p(1, 0) not in (0, 1):
            raise self.fail(ps, "a PixelShuffle with an integer factor (0=) and mode 0 or 1 (1=)")
        m.shuffle, m.shuffle_mode = r, ps.p(1, 0)
        self._nearest_up(up, r, "the upscaled input added to the PixelShuffle output")
        if not self.same(up.bottoms[0], self.data):
            raise self.fail(up, "the Interp to upscale the network input")
        convs = [self.conv(ps.bottoms[0], None, "the last conv")]
        acts: list[_Conv] = []
        blob = convs[0].in_blob
        while not self.same(blob, self.data):
            if len(convs) > len(self.layers):
                raise self.fail(self.prod(blob), "the conv chain to start at the network input")
            p = self.prod(blob)
            if p is not None and p.type == "PReLU":
                prelu = self.take(blob, ("PReLU",), "a PReLU")
                self._one_in(prelu)
                conv = self.conv(prelu.bottoms[0], None, "a body conv before the PReLU")
                conv.act, conv.act_layer = "prelu", prelu
            else:
                conv = self.conv(blob, "any", "a body conv with its activation")
            acts.insert(0, conv)
            convs.insert(0, conv)
            blob = conv.in_blob
        kinds = {c.act for c in acts}
        if len(acts) < 1 or len(kinds) != 1:
            raise self.fail(convs[0].layer, f"SRVGGNetCompact convs all with the same activation, found {sorted(map(str, kinds))}")
        kind = kinds.pop()
        if kind not in ("prelu", "relu", f"leakyrelu:{SRVGG_LEAKY_SLOPE}"):
            raise self.fail(acts[0].act_layer or acts[0].layer,
                            f"a PReLU, ReLU or LeakyReLU({SRVGG_LEAKY_SLOPE}) activation, found {_act_text(kind)}")
        m.act_type = kind.split(":")[0]
        for i, conv in enumerate(convs):
            m.convs[conv.layer.name] = f"body.{2 * i}"
            if conv.act == "prelu":
                m.prelus[conv.act_layer.name] = f"body.{2 * i + 1}"
        return m


def _relu_kind(slope: float) -> str:
    slope = round(slope, 6)  # params are printed with 7 significant digits
    return "relu" if slope == 0 else f"leakyrelu:{slope:g}"


def _fused_act(layer: Layer) -> str | None:
    kind = layer.p(9, 0)
    if kind == 0:
        return None
    if kind == 1:
        return "relu"
    if kind == 2:
        params = layer.p(10, [0.0])
        slope = float(params[0]) if isinstance(params, list) and params else 0.0
        return _relu_kind(slope)
    return "?"


def _act_text(act: str | None) -> str:
    if act is None:
        return "no activation"
    if act == "any":
        return "an activation"
    if act.startswith("leakyrelu:"):
        return f"LeakyReLU({act.split(':')[1]})"
    return {"relu": "ReLU", "prelu": "PReLU"}.get(act, act)


# ---- .bin --------------------------------------------------------------------------------

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


# ---- state dict --------------------------------------------------------------------------

def _state_dict(m: _Match, layers: list[Layer], weights, name: str) -> dict[str, torch.Tensor]:
    by_name = {layer.name: layer for layer in layers}
    state: dict[str, torch.Tensor] = {}
    for lname, key in m.convs.items():
        layer = by_name[lname]
        out = int(layer.p(0))
        w = weights[lname]["weight"].reshape(out, -1, 3, 3)
        b = weights[lname].get("bias")
        if b is None:
            b = np.zeros(out, dtype=np.float32)
        if key == "conv_first" and m.unshuffle > 1 and m.unshuffle_mode == 1:
            w = w[:, _unshuffle_mode1_order(w.shape[1], m.unshuffle)]
        if m.architecture == "SRVGGNetCompact" and m.shuffle_mode == 1 and key == _last_body_key(m):
            order = _shuffle_mode1_order(out, m.shuffle, name, layer)
            w, b = w[order], b[order]
        state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        state[f"{key}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    num_feat = None
    for lname, key in m.prelus.items():
        slopes = weights[lname]["weight"]
        conv_key = f"body.{int(key.split('.')[1]) - 1}.weight"
        num_feat = state[conv_key].shape[0]
        if slopes.size == 1:
            slopes = np.repeat(slopes, num_feat)
        if slopes.size != num_feat:
            raise ModelLoadError(f"{name}: {by_name[lname].label()}: expected 1 or {num_feat} slopes, found {slopes.size}")
        state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(slopes, dtype=np.float32))
    return state


def _last_body_key(m: _Match) -> str:
    return f"body.{2 * (len(m.convs) - 1)}"


def _unshuffle_mode1_order(in_ch: int, s: int) -> list[int]:
    """Reorg mode 1 puts offset k of channel c at ``k*C + c``; torch's pixel_unshuffle at ``c*s*s + k``."""
    c_count = in_ch // (s * s)
    order = [0] * in_ch
    for c in range(c_count):
        for k in range(s * s):
            order[c * s * s + k] = k * c_count + c
    return order


def _shuffle_mode1_order(out: int, r: int, name: str, layer: Layer) -> list[int]:
    """PixelShuffle mode 1 reads offset k of channel c from ``k*C + c``: the same channel
    permutation as Reorg mode 1, seen from the other side."""
    if out % (r * r):
        raise ModelLoadError(f"{name}: {layer.label()}: {out} outputs cannot be pixel-shuffled by {r}")
    return _unshuffle_mode1_order(out, r)


def _check_hyperparameters(spec: ModelSpec, m: _Match, name: str) -> None:
    hp = spec.hyperparameters
    if m.architecture == "RRDBNet":
        graph = {"num_block": m.num_block, "num_upsample": m.num_upsample, "unshuffle": m.unshuffle}
    else:
        graph = {"upscale": m.shuffle, "act_type": m.act_type}
    bad = {k: (hp.get(k), v) for k, v in graph.items() if hp.get(k) != v}
    if bad:
        detail = ", ".join(f"{k}: weights say {a}, graph says {b}" for k, (a, b) in bad.items())
        raise ModelLoadError(f"{name}: the weights' shapes disagree with the graph ({detail})")
