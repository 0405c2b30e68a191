"""The engine's interface: what a host provides, what the user chose, what comes back."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .memory import available_memory


@dataclass
class Host:
    """What the engine needs from whoever calls it (ComfyUI, the WebUI, the CLI, a test). Each
    adapter builds one per call; every field has a plain-PyTorch default."""

    device: torch.device | str | None = None  # None or "auto": CUDA when available, else CPU
    progress: Callable[[float, int], None] | None = None  # (tiles done, fractional within a tile; total tiles)
    check_cancel: Callable[[], None] | None = None  # raises to stop; runs before every tile and window
    output_device: torch.device | str = "cpu"  # where the result goes
    output_dtype: torch.dtype = torch.float32  # or float16, bfloat16, uint8 (round(x * 255), made on the device)
    offload_device: torch.device | str = "cpu"  # where the model goes afterwards, even on error or cancel (unless place_model)
    free_memory: Callable[[torch.device], int] = available_memory  # bytes free on a device now
    make_room: Callable[[torch.device, int], None] | None = None  # asked to free this many bytes before the run
    # A model manager that owns the model's placement (ComfyUI's): asked to put the model on the
    # device with room for this many working-set bytes beside it. The engine then never offloads
    # the model: it stays on the device after the run until the manager evicts it.
    place_model: Callable[[torch.device, int], None] | None = None
    is_oom: Callable[[BaseException], bool] | None = None  # the host's own out-of-memory test, besides ours
    progress_interval: float = 0.25  # at least this many seconds between progress reports within a tile


@dataclass(frozen=True)
class Choices:
    """The user's choices. ``None`` everywhere means "the engine decides"; only the engine
    knows what that is."""

    tile_size: int | None = None  # tile side in input px (>= 1)
    overlap: int | None = None  # tile overlap in input px (>= 0)
    precision: str | None = None  # "auto", "fp32", "fp16" or "bf16"
    output_size: tuple[int, int] | None = None  # exact (height, width) of the result
    output_scale: float | None = None  # or a factor of the input size
    resample: str | None = None  # how the model output is brought to that size (resize.RESAMPLE_METHODS)
    passes: int | str | None = None  # model passes: None = 1; "auto" or N = again on its output while the target needs it
    backend: str | None = None  # "auto", "torch", "ncnn" or "openvino" (runtimes/backend.py); None: $REALESRGAN_TILED_BACKEND, else auto
    batch_size: int | None = None  # whole frames per forward (frames.py); None: as many as fit on a GPU, one on the CPU


@dataclass
class RunReport:
    """What actually ran."""

    tiles: int = 0  # tiles run through the model (OOM sub-tiles included)
    fp32_reruns: int = 0  # half-precision tiles whose output was not finite, re-run in fp32
    oom_retries: int = 0  # tiles that ran out of memory and were re-run as smaller tiles
    precision: str = ""
    tile_size: int = 0
    overlap: int = 0
    device: str = ""
    passes: int = 1  # model passes run (each on the previous one's output)
    backend: str = ""  # "torch", "torch-whole" (whole-map torch plan), "ncnn" or "openvino"
    room_asked: int = 0  # bytes asked of the host for a tile's working set (0: no host asked)


@dataclass
class Upscaled:
    images: torch.Tensor  # [B, H', W', C] on the host's output device and dtype
    ran: RunReport = field(default_factory=RunReport)
