"""Model files -> a spandrel ``ImageModelDescriptor`` (ComfyUI's UPSCALE_MODEL type).

Pickled checkpoints are only ever opened with ``torch.load(weights_only=True)``: a file that
needs any global beyond tensors and plain containers is refused and its payload never runs.
Our own architectures are tried first; anything else goes to spandrel.
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
from spandrel import Architecture, ImageModelDescriptor, ModelLoader, SizeRequirements

from .archs import RRDBNet, SRVGGNetCompact
from .archs.output_resize import OutputResize
from .errors import ModelLoadError
from .sniff import ModelSpec, sniff, unwrap_state_dict

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SUPPORTED_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES, ".param")


class _OwnArchitecture(Architecture):
    """Lets our networks sit in spandrel's descriptor like any spandrel architecture."""

    def __init__(self, name: str):
        super().__init__(id=name, name=name, detect=lambda sd: _sniff_is(sd, name))

    def load(self, state_dict):
        spec = sniff(unwrap_state_dict(state_dict))
        if spec is None:
            raise ModelLoadError(f"the state dict is not a {self.name}")
        return build_descriptor(spec)


def _sniff_is(state_dict, name: str) -> bool:
    try:
        spec = sniff(unwrap_state_dict(state_dict))
    except ModelLoadError:
        return False
    return spec is not None and spec.architecture == name


ARCHITECTURES = {name: _OwnArchitecture(name) for name in ("RRDBNet", "SRVGGNetCompact")}


def load_model(path: str | Path, act_type: str | None = None) -> ImageModelDescriptor:
    """Load any supported model file. ``act_type`` only matters for SRVGGNetCompact files
    without PReLU weights (see ``sniff.DEFAULT_SRVGG_ACT``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if path.suffix.lower() in (".param",) or _is_ncnn_bin(path):
        from .ncnn_import import read_ncnn  # ncnn graphs are their own format

        spec, resize = _wrap_errors(path, read_ncnn, path)
        return _wrap_errors(path, build_descriptor, spec, resize)
    state = unwrap_state_dict(read_state_dict(path))
    if not state:
        raise ModelLoadError(f"{path.name}: holds no tensors, so it is not a model's weights")
    _check_finite(path, state)
    spec = _wrap_errors(path, sniff, state, act_type)
    if spec is not None:
        return _wrap_errors(path, build_descriptor, spec)
    return _load_with_spandrel(path, state)


def _is_ncnn_bin(path: Path) -> bool:
    return path.suffix.lower() == ".bin" and path.with_suffix(".param").is_file()


def _wrap_errors(path: Path, fn, *args):
    """Run one loading step so that whatever a hostile or damaged file makes it raise
    reaches the user as a ModelLoadError naming the file."""
    try:
        return fn(*args)
    except ModelLoadError as e:
        msg = str(e)
        raise ModelLoadError(msg if path.name in msg else f"{path.name}: {msg}") from None
    except Exception as e:  # shapes no network can take make torch raise almost anything
        raise ModelLoadError(f"{path.name}: cannot build a model from these weights ({_first_line(e)})") from None


def _check_finite(path: Path, state: dict) -> None:
    """NaN / Inf weights only ever produce black or garbage images: refuse them up front."""
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelLoadError(f"{path.name}: weight {key} contains NaN or Inf values; the file is corrupt")


def read_state_dict(path: Path) -> object:
    """Read the raw object in a weights file, safely."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path.name}: the file is empty (0 bytes)")
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise ModelLoadError(
        f"{path.name}: unsupported file type {suffix or '(no extension)'}; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
    )


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError / OSError / ValueError
        raise ModelLoadError(f"{path.name}: not a valid .safetensors file ({_first_line(e)})") from None


def _read_pickle(path: Path) -> object:
    try:
        # torch warns about odd pickle protocols and legacy storages on its way to failing (or
        # succeeding); the user gets our one clear error instead of that noise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_global(e)
        if unsafe is None:  # torch's restricted unpickler also rejects plain garbage
            raise ModelLoadError(f"{path.name}: not a readable PyTorch checkpoint (corrupt pickle data)") from None
        raise ModelLoadError(
            f"{path.name}: refused to load — the pickle asks for code beyond plain tensors "
            f"({unsafe}); it may be malicious. Convert trusted files to .safetensors."
        ) from None
    except Exception as e:  # truncated zip, random bytes, wrong format
        raise ModelLoadError(f"{path.name}: not a readable PyTorch checkpoint ({_first_line(e)})") from None


# torch's weights-only unpickler names the global it refused in one of these phrasings
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+?)[.,]?(?: |$)|allowlisted via `add_safe_globals`,? but got (.+?)$", re.M)


def _unsafe_global(e: Exception) -> str | None:
    """The refused global (e.g. ``posix.system``), or None if the pickle was merely corrupt."""
    m = _UNSAFE_GLOBAL.search(str(e))
    if m is None:
        return None
    return (m.group(1) or m.group(2)).strip()


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def build_descriptor(spec: ModelSpec, resize: tuple[float, str] | None = None) -> ImageModelDescriptor:
    """Build our network for ``spec``, check the weights fit it exactly, wrap it for hosts."""
    hp = spec.hyperparameters
    if spec.architecture == "RRDBNet":
        net = RRDBNet(**{k: hp[k] for k in ("num_in_ch", "num_out_ch", "num_feat", "num_block", "num_grow_ch", "num_upsample", "unshuffle")})
        multiple_of = hp["unshuffle"]
        tags = [f"{hp['num_feat']}nf", f"{hp['num_block']}nb", f"{hp['num_grow_ch']}gc"]
    else:
        net = SRVGGNetCompact(**{k: hp[k] for k in ("num_in_ch", "num_out_ch", "num_feat", "num_conv", "upscale", "act_type")})
        multiple_of = 1
        tags = [f"{hp['num_feat']}nf", f"{hp['num_conv']}nc", hp["act_type"]]
    _check_weights_fit(net, spec.state_dict)
    net.load_state_dict(spec.state_dict, strict=True)
    scale = hp["scale"]
    model: torch.nn.Module = net
    if resize is not None:
        factor, mode = resize
        model = OutputResize(net, factor, mode)
        scale = hp["scale"] * factor
        if abs(scale - round(scale)) > 1e-6 or round(scale) < 1:
            raise ModelLoadError(f"a {hp['scale']}x network followed by a x{factor} resize is not an integer scale")
        scale = int(round(scale))
        tags.append(f"resize{factor:g}-{mode}")
    model.key_format = spec.key_format  # type: ignore[attr-defined]  # reported by `info`
    model.hyperparameters = dict(hp, scale=scale)  # type: ignore[attr-defined]
    model.eval().requires_grad_(False)
    return ImageModelDescriptor(
        model,
        model.state_dict(),
        architecture=ARCHITECTURES[spec.architecture],
        purpose="SR" if scale > 1 else "Restoration",
        tags=tags,
        supports_half=True,  # fp16 can overflow on some RRDBNet weights: the engine's NaN guard re-runs those tiles in fp32
        supports_bfloat16=True,
        scale=scale,
        input_channels=hp["num_in_ch"],
        output_channels=hp["num_out_ch"],
        size_requirements=SizeRequirements(minimum=1, multiple_of=multiple_of),
    )


def _check_weights_fit(net: torch.nn.Module, state: dict) -> None:
    """Name the offending keys instead of torch's wall of text."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weight(s): {_few(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected weight(s): {_few(extra)}")
    if wrong:
        problems.append(f"wrong shape: {_few(wrong)}")
    if problems:
        raise ModelLoadError(f"weights do not fit {type(net).__name__}: " + "; ".join(problems))
    for k, v in state.items():
        if not v.is_floating_point():
            raise ModelLoadError(f"weight {k} has dtype {v.dtype}, expected floating point")
        if not torch.isfinite(v).all():
            raise ModelLoadError(f"weight {k} contains NaN or Inf values; the file is corrupt")


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" … (+{len(items) - n} more)" if len(items) > n else "")


def _load_with_spandrel(path: Path, state: dict) -> ImageModelDescriptor:
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except Exception as e:  # spandrel raises UnsupportedModelError, KeyError, RuntimeError …
        keys = ", ".join(list(state)[:5])
        raise ModelLoadError(
            f"{path.name}: not a supported upscale model ({_first_line(e)}); first keys: {keys}"
        ) from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ModelLoadError(
            f"{path.name}: is a {descriptor.architecture.name} {descriptor.purpose.lower()} model, not an image-to-image upscaler"
        )
    descriptor.model.key_format = "spandrel"
    return descriptor


def model_info(descriptor: ImageModelDescriptor) -> dict:
    """What ``info --json`` prints: architecture, scale, channels, key format, hyperparameters."""
    model = descriptor.model
    hp = dict(getattr(model, "hyperparameters", {}) or {})
    hp = {k: v for k, v in hp.items() if isinstance(v, (int, float, str, bool))}
    return {
        "architecture": descriptor.architecture.name,
        "in_channels": descriptor.input_channels,
        "out_channels": descriptor.output_channels,
        "key_format": getattr(model, "key_format", "spandrel"),
        "tags": list(descriptor.tags),
        "supports_half": descriptor.supports_half,
        "supports_bfloat16": descriptor.supports_bfloat16,
        **hp,
        "scale": descriptor.scale,  # after **hp: the descriptor's scale includes any fixed resize
    }
