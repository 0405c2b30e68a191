"""Generic matching primitives over a parsed ncnn graph; the architectures' patterns
(``rrdbnet.py``, ``srvgg.py``) are written with them.

A ``Graph`` is walked backwards from its output blob. Every comparison is between resolved
blobs (``Split`` outputs stand for their source), and every layer a pattern takes is marked
visited, so a layer cannot belong to two branches and none may be left over at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ModelLoadError
from .param_file import Layer

RESIZE_MODES = {1: "nearest", 2: "bilinear", 3: "bicubic"}
TOL = 1e-6
# layers that the two architectures can contain; anything else is refused before weights are read
KNOWN_TYPES = {"Input", "Split", "Convolution", "ReLU", "PReLU", "Concat", "Eltwise", "BinaryOp",
               "Interp", "PixelShuffle", "Reorg"}


@dataclass
class Conv:
    layer: Layer
    in_blob: str
    act: str | None  # None, "relu", "leakyrelu:<slope>"
    act_layer: Layer | None = None  # a separate ReLU layer, when not fused


@dataclass
class Match:
    """What the graph turned out to be: layer name -> canonical key. Each pattern subclasses
    it with the facts its weights' fix-ups and hyperparameter cross-check need."""
    architecture: str
    convs: dict[str, str] = field(default_factory=dict)  # conv layer name -> "conv_first" / "body.0"
    prelus: dict[str, str] = field(default_factory=dict)  # PReLU layer name -> "body.1"
    act_type: str | None = None
    resize: tuple[float, str] | None = None


class Graph:
    def __init__(self, layers: list[Layer], name: str):
        self.name = name
        self.layers = layers
        self.alias: dict[str, str] = {}
        self.producer: dict[str, Layer] = {}
        self.visited: set[int] = set()
        inputs = [layer for layer in layers if layer.type == "Input"]
        if len(inputs) != 1 or len(inputs[0].tops) != 1:
            raise ModelLoadError(f"{name}: expected exactly one Input layer with one blob, found {len(inputs)}")
        self.input_layer = inputs[0]
        self.data = inputs[0].tops[0]
        consumed: set[str] = set()
        for layer in layers:
            self._check_layer_type(layer)
            self._link(layer, consumed)
        self.visited.add(id(self.input_layer))
        sinks = [b for b in (*self.producer, *self.alias) if b not in consumed]
        if len(sinks) != 1:
            raise ModelLoadError(
                f"{name}: expected one output blob (produced, never read), found {len(sinks)}: {', '.join(sinks[:5])}"
            )
        self.output = sinks[0]

    def _check_layer_type(self, layer: Layer) -> None:
        if layer.type not in KNOWN_TYPES:
            hint = ""
            if layer.type in ("Reshape", "Permute"):
                hint = ("; a pixel-unshuffle (Real-ESRGAN x2/x1) is only recognised as one Reorg layer, "
                        "not as Reshape/Permute layers")
            raise ModelLoadError(
                f"{self.name}: {layer.label()}: unexpected layer type {layer.type!r}; a Real-ESRGAN graph "
                f"(RRDBNet or SRVGGNetCompact) only has {', '.join(sorted(KNOWN_TYPES))}{hint}"
            )
        if layer.type != "Input" and (not layer.bottoms or not layer.tops):
            raise ModelLoadError(f"{self.name}: {layer.label()}: expected at least one input and one output blob")

    def _link(self, layer: Layer, consumed: set[str]) -> None:
        """Record who produces each blob; a Split's outputs become aliases of its input, and the
        Split itself counts as visited (it is wiring, not part of any pattern)."""
        for b in layer.bottoms:
            if b not in self.producer and b not in self.alias:
                raise ModelLoadError(f"{self.name}: {layer.label()} reads blob {b!r} before any layer produces it")
            consumed.add(b)
        for t in layer.tops:
            if t in self.producer or t in self.alias:
                raise ModelLoadError(f"{self.name}: {layer.label()} produces blob {t!r} a second time")
            if layer.type == "Split":
                if len(layer.bottoms) != 1:
                    raise ModelLoadError(f"{self.name}: {layer.label()}: a Split must have one input")
                self.alias[t] = self.src(layer.bottoms[0])
            else:
                self.producer[t] = layer
        if layer.type == "Split":
            self.visited.add(id(layer))

    # -- looking up and taking layers --

    def src(self, blob: str) -> str:
        return self.alias.get(blob, blob)

    def prod(self, blob: str) -> Layer | None:
        return self.producer.get(self.src(blob))

    def same(self, a: str, b: str) -> bool:
        return self.src(a) == self.src(b)

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

    def one_in(self, layer: Layer) -> None:
        if len(layer.bottoms) != 1 or len(layer.tops) != 1:
            raise self.fail(layer, "one input and one output blob")

    # -- convolutions --

    def conv(self, blob: str, act: str | None, what: str) -> Conv:
        """The 3x3 / stride 1 / pad 1 convolution producing ``blob``, followed by ``act``
        (fused ``9=`` or a separate ReLU layer). ``act`` "any" accepts and reports any
        SRVGG-style activation."""
        layer = self.prod(blob)
        act_layer = None
        if layer is not None and layer.type == "ReLU" and act is not None:
            act_layer = self.take(blob, ("ReLU",), f"the activation after {what}")
            self.one_in(act_layer)
            found = relu_kind(float(act_layer.p(0, 0.0)))
            layer = self.take(act_layer.bottoms[0], ("Convolution",), f"{what} (Convolution) before {act_layer.name}")
            if layer.p(9, 0) != 0:
                raise self.fail(layer, f"{what} without a fused activation: a separate ReLU layer follows it")
        else:
            layer = self.take(blob, ("Convolution",), f"{what} (Convolution{'' if act is None else ' + ' + act_text(act)})")
            found = fused_act(layer)
            if found == "?":
                raise self.fail(layer, f"{what} with {act_text(act)}, found activation type 9={layer.p(9)}")
        if act == "any":
            if found is None:
                raise self.fail(act_layer or layer, f"{what} followed by an activation")
        elif found != act:
            raise self.fail(act_layer or layer, f"{what} with {act_text(act)}, found {act_text(found)}")
        self.one_in(layer)
        self._check_conv_geometry(layer, what)
        return Conv(layer, layer.bottoms[0], found, act_layer)

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

    # -- sums --

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
                self.one_in(mul)
                terms.append((float(mul.p(2, 0.0)), mul.bottoms[0]))
            else:
                terms.append((1.0, b))
        return terms

    def scaled_residual(self, blob: str, scale: float, what: str) -> tuple[str, str]:
        """``blob = scale * y + x``: returns (y, x)."""
        terms = self.sum_terms(blob, what)
        layer = self.prod(blob)
        scaled = [b for c, b in terms if abs(c - scale) < TOL]
        plain = [b for c, b in terms if abs(c - 1.0) < TOL]
        if len(scaled) != 1 or len(plain) != 1:
            raise self.fail(layer, f"{what}: a residual sum {scale:g} * branch + input, found coefficients {[c for c, _ in terms]}")
        return scaled[0], plain[0]

    # -- resizes --

    def nearest_up(self, layer: Layer, factor: int, what: str) -> None:
        self.one_in(layer)
        if (layer.p(0, 0) != 1 or abs(float(layer.p(1, 1.0)) - factor) > TOL or abs(float(layer.p(2, 1.0)) - factor) > TOL
                or layer.p(3, 0) or layer.p(4, 0) or layer.p(5, 0) or layer.p(6, 0)):
            raise self.fail(layer, f"{what}: a nearest (0=1) x{factor} Interp (1={factor} 2={factor})")

    def network_output(self) -> tuple[str, tuple[float, str] | None]:
        """The blob the network itself produces, and the resize (factor, mode) after it, if any.
        An Interp reading the network input is not a trailing resize: no network precedes it."""
        last = self.prod(self.output)
        if last is None or last.type != "Interp" or self.same(last.bottoms[0], self.data):
            return self.output, None
        interp = self.take(self.output, ("Interp",), "a trailing resize")
        return interp.bottoms[0], self._resize(interp)

    def _resize(self, layer: Layer) -> tuple[float, str]:
        self.one_in(layer)
        mode = layer.p(0, 0)
        hs, ws = float(layer.p(1, 1.0)), float(layer.p(2, 1.0))
        if mode not in RESIZE_MODES or abs(hs - ws) > TOL or hs <= 0 or layer.p(3, 0) or layer.p(4, 0) \
                or layer.p(5, 0) or layer.p(6, 0):
            raise self.fail(layer, "a trailing resize: nearest/bilinear/bicubic (0=1/2/3) by one scale factor "
                                   "(1= equal to 2=), no fixed output size (3=, 4=), no dynamic size (5=), no align_corner (6=)")
        return hs, RESIZE_MODES[mode]

    # -- the end --

    def check_nothing_left(self) -> None:
        left = [layer for layer in self.layers if id(layer) not in self.visited]
        if left:
            raise self.fail(left[0], "no layers outside the recognised network; this one is not part of it")


def relu_kind(slope: float) -> str:
    slope = round(slope, 6)  # params are printed with 7 significant digits
    return "relu" if slope == 0 else f"leakyrelu:{slope:g}"


def fused_act(layer: Layer) -> str | None:
    kind = layer.p(9, 0)
    if kind == 0:
        return None
    if kind == 1:
        return "relu"
    if kind == 2:
        params = layer.p(10, [0.0])
        slope = float(params[0]) if isinstance(params, list) and params else 0.0
        return relu_kind(slope)
    return "?"


def act_text(act: str | None) -> str:
    if act is None:
        return "no activation"
    if act == "any":
        return "an activation"
    if act.startswith("leakyrelu:"):
        return f"LeakyReLU({act.split(':')[1]})"
    return {"relu": "ReLU", "prelu": "PReLU"}.get(act, act)


def mode1_channel_order(channels: int, s: int) -> list[int]:
    """Reorg mode 1 puts offset k of channel c at ``k*C + c``, torch's pixel_unshuffle at
    ``c*s*s + k``; PixelShuffle mode 1 reads from the same places. Index ``i`` of the result
    is the mode-1 channel holding torch's channel ``i``."""
    c_count = channels // (s * s)
    order = [0] * channels
    for c in range(c_count):
        for k in range(s * s):
            order[c * s * s + k] = k * c_count + c
    return order
