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

from ..archs import ModelSpec
from ..archs.architecture import check_finite
from ..errors import ModelLoadError
from .descriptor import OurModel, build_model
from .pickle_scan import is_whole_module, pickle_globals
from .sniff import describe_contents, sniff, unwrap_state_dict
from .spandrel_import import ImageModelDescriptor, ModelLoader
from .torchscript import is_torchscript, read_torchscript

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SUPPORTED_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES, ".param")


def load_model(path: str | Path, act_type: str | None = None) -> ImageModelDescriptor:
    """Load any supported model file. ``act_type`` only matters for SRVGGNetCompact files
    without PReLU weights (see ``archs/srvgg/keys.py``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if path.suffix.lower() in (".param",) or _is_ncnn_bin(path):
        from .ncnn import read_ncnn  # ncnn graphs are their own format

        spec, resize = _wrap_errors(path, read_ncnn, path)
        return _wrap_errors(path, build_descriptor, spec, resize)
    raw = read_state_dict(path)
    state = unwrap_state_dict(raw)
    if not state:
        raise ModelLoadError(f"{path.name}: no model weights found: the file holds {describe_contents(raw)}")
    spec = _wrap_errors(path, sniff, state, act_type)
    if spec is not None:
        return _wrap_errors(path, build_descriptor, spec)  # which checks the weights are finite
    _wrap_errors(path, check_finite, state)
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
    if is_torchscript(path):
        return _read_torchscript(path)
    try:
        # torch warns about odd pickle protocols and legacy storages on its way to failing (or
        # succeeding); the user gets our one clear error instead of that noise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # torch.serialization.load is torch.load itself: AUTOMATIC1111 replaces the name
            # torch.load with a checker that refuses files saved by current torch
            return torch.serialization.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_global(e)
        if unsafe is None:  # torch's restricted unpickler also rejects plain garbage
            raise ModelLoadError(f"{path.name}: not a readable PyTorch checkpoint (corrupt pickle data)") from None
        if is_whole_module(pickle_globals(path)):
            raise ModelLoadError(
                f"{path.name}: holds a whole pickled model ({unsafe}), not only its weights; unpickling it would run "
                f"code from the file, so it is refused. Where the model was made, save its weights instead: "
                f"torch.save(model.state_dict(), 'model.pth'), or safetensors.torch.save_file(model.state_dict(), "
                f"'model.safetensors')"
            ) from None
        raise ModelLoadError(
            f"{path.name}: refused to load — the pickle asks for code beyond plain tensors "
            f"({unsafe}); it may be malicious. Convert trusted files to .safetensors."
        ) from None
    except Exception as e:  # truncated zip, random bytes, wrong format
        raise ModelLoadError(f"{path.name}: not a readable PyTorch checkpoint ({_first_line(e)})") from None


def _read_torchscript(path: Path) -> dict:
    try:
        return read_torchscript(path)
    except pickle.UnpicklingError as e:
        raise ModelLoadError(f"{path.name}: refused to load — this TorchScript archive's data asks for code "
                             f"beyond tensors ({_first_line(e)}); it may be malicious") from None
    except Exception as e:  # a damaged zip, a missing data entry
        raise ModelLoadError(f"{path.name}: not a readable TorchScript archive ({_first_line(e)})") from None


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


def build_descriptor(spec: ModelSpec, resize: tuple[float, str] | None = None) -> OurModel:
    """Our network for ``spec``, weights checked to fit exactly, wrapped for hosts."""
    return build_model(spec, resize)


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
