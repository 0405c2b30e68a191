"""The device side of a tile: calling a model without its clamp, the trip home from the device,
and telling an out-of-memory error from the others."""
from __future__ import annotations

import torch

from ..archs.padding import pad_bottom_right

PINNED_CHUNK_BYTES = 32 << 20  # the page-locked buffer tile outputs come home through (CUDA)
# CUDA/CPU allocators ("out of memory", "can't allocate memory"), MPS ("MPS backend out of
# memory"), XPU, and DirectML ("not enough GPU video memory")
OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough gpu video memory")


def home(out: torch.Tensor) -> torch.Tensor:
    """A tile's [C, H, W] output, on the host. Off the CPU the device first permutes it to the
    host's HWC order, so the add into the result reads contiguous rows."""
    if out.device.type == "cpu":
        return out
    hwc = out.permute(1, 2, 0).contiguous()
    return (_copy_home_pinned(hwc) if out.device.type == "cuda" else hwc.cpu()).permute(2, 0, 1)


def home_hwc(image: torch.Tensor) -> torch.Tensor:
    """An [H, W, C] result on the host: off the CPU made contiguous there and, from CUDA,
    copied home through the pinned buffer."""
    if image.device.type == "cpu":
        return image
    image = image.contiguous()
    return _copy_home_pinned(image) if image.device.type == "cuda" else image.cpu()


def _copy_home_pinned(src: torch.Tensor) -> torch.Tensor:
    """``src.cpu()`` through one small page-locked buffer: a copy straight into pageable memory,
    or pinning a whole tile's worth each time, was several times slower (README: GPU check).
    torch's host allocator keeps the buffer for the next tile and the next run."""
    try:
        staging = torch.empty(PINNED_CHUNK_BYTES // src.element_size(), dtype=src.dtype, pin_memory=True)
    except RuntimeError:  # no page-locked memory to be had
        return src.cpu()
    return copy_through(src, staging, torch.cuda.current_stream(src.device).synchronize)


def copy_through(src: torch.Tensor, staging: torch.Tensor, wait) -> torch.Tensor:
    """A host copy of the contiguous ``src``, made chunk by chunk through ``staging`` (1-D, same
    dtype); ``wait()`` returns once a non-blocking copy into ``staging`` has landed."""
    home = torch.empty(src.shape, dtype=src.dtype)
    flat_src, flat_home = src.view(-1), home.view(-1)
    for start in range(0, flat_src.numel(), staging.numel()):
        part = flat_src[start : start + staging.numel()]
        staging[: part.numel()].copy_(part, non_blocking=True)
        wait()
        flat_home[start : start + part.numel()].copy_(staging[: part.numel()])
    return home


def call_model(descriptor, x: torch.Tensor) -> torch.Tensor:
    """Like the descriptor's own call (pad to its size requirements, crop back) but without
    its clamp, which would turn an fp16 overflow (inf) into plausible white pixels."""
    h, w = x.shape[-2:]
    pad_w, pad_h = descriptor.size_requirements.get_padding(w, h)
    x = pad_bottom_right(x, pad_h, pad_w)
    call = getattr(descriptor, "_call_fn", None) or (lambda model, image: model(image))
    y = call(descriptor.model, x)
    s = descriptor.scale
    return y[..., : h * s, : w * s]


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    # torch.cuda.OutOfMemoryError is torch.OutOfMemoryError since 2.5, and exists on the torch 2.1 A1111 installs
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    text = str(e).lower()
    return any(marker in text for marker in OOM_MARKERS)


def release_cached(device: torch.device) -> None:
    """Give the allocator's cached blocks back, on whichever backend ran the tile."""
    backend = getattr(torch, device.type, None) if device.type in ("cuda", "mps", "xpu") else None
    empty_cache = getattr(backend, "empty_cache", None)
    if empty_cache is not None:
        empty_cache()
