"""Resumable training state on disk, and the exported model.

Checkpoints hold only tensors, numbers, strings, lists and dicts, so they load with
``torch.load(weights_only=True)``: resuming never unpickles code. Both files are written
atomically (a temporary file, then a rename): an interrupt never leaves half a file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import RealESRGANTiledError

FORMAT = "realesrgan_tiled.finetune/1"


class CheckpointError(RealESRGANTiledError):
    """A --resume file that is not one of our training checkpoints."""


def checkpoint_path(out: Path) -> Path:
    """OUT.resume beside OUT.safetensors: not a model suffix, so an output written into a
    models folder does not list its checkpoint as a second upscaler (the WebUI did)."""
    return out.with_name(out.stem + ".resume")


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"--resume {path}: not a training checkpoint of this tool ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"--resume {path}: not a training checkpoint of this tool (no '{FORMAT}' marker)")
    return state


def export_model(path: Path, weights: dict[str, torch.Tensor], metadata: dict) -> None:
    """The fine-tuned generator as .safetensors, in the base network's own key layout (which our
    loader, spandrel and so ComfyUI core read); ``metadata`` values are stored as JSON text."""
    tmp = path.with_name(path.name + ".part")
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.items()}
    save_file(tensors, str(tmp), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, path)
