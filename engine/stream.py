"""Frames as a stream: an iterable of frames in, their upscaled frames out, in order, with a
bounded number in flight whatever the length (a video, a folder of frames).

Consecutive frames of one size are handed to ``upscale`` in chunks of ``chunk`` frames, so the
engine can run several per forward on a GPU (``frames.py``); a frame of another size starts a
new chunk. The model is placed on the device once for the whole stream (not per chunk) and
handed back at its end, on error or cancel too, unless the host's model manager owns it.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np
import torch

from ..errors import InputImageError
from . import settings
from .interface import Choices, Host
from .run import upscale, weight_bytes

GPU_CHUNK = 16  # frames per call off the CPU: room for the engine's pipeline of batches, few frames in flight


def upscale_stream(frames: Iterable, model, choices: Choices | None = None, host: Host | None = None,
                   chunk: int | None = None) -> Iterator[torch.Tensor]:
    """Yield each frame upscaled, ``[H', W', C]`` on the host's output device in its output
    dtype (``torch.uint8`` for an encoder). A frame is ``[H, W, C]``: uint8, uint16 (16-bit
    PNG, 10-bit video as rgb48) or float 0..1, as a numpy array or a tensor; consecutive frames
    of one size and dtype go to the engine together."""
    choices, host = choices or Choices(), host or Host()
    device = settings.resolve_device(host.device)
    if chunk is None:
        chunk = choices.batch_size or (1 if device.type == "cpu" else GPU_CHUNK)
    run_host = host if host.place_model is not None else replace(host, device=device, place_model=_placed_once(model, host))
    try:
        pending: list[torch.Tensor] = []
        for frame in frames:
            image = as_frame(frame)
            if pending and (image.shape != pending[0].shape or image.dtype != pending[0].dtype or len(pending) >= chunk):
                yield from _run(pending, model, choices, run_host)
                pending = []
            pending.append(image)
        if pending:
            yield from _run(pending, model, choices, run_host)
    finally:
        if host.place_model is None:
            model.to(host.offload_device)


def _run(pending: list[torch.Tensor], model, choices: Choices, host: Host) -> Iterator[torch.Tensor]:
    images = upscale(torch.stack(pending), model, choices, host).images
    pending.clear()  # the inputs go before the outputs are consumed
    yield from images.unbind(0)


def _placed_once(model, host: Host):
    """A place-model hook for the whole stream: it asks the host for room for the weights, and
    for each new working set, once; the model stays on the device until the stream ends."""
    asked: set = set()

    def place(device: torch.device, working_set: int) -> None:
        if (device, working_set) in asked:
            return
        asked.add((device, working_set))
        if host.make_room is not None:
            host.make_room(device, working_set or weight_bytes(model))

    return place


def as_frame(frame) -> torch.Tensor:
    """A frame as an [H, W, C] tensor: uint8 as it is (the engine makes it float 0..1 where it
    runs: on a GPU a quarter of the bytes go up), anything else float32 in 0..1."""
    if isinstance(frame, np.ndarray):
        if frame.dtype == np.uint16:
            frame = frame.astype(np.float32) / 65535
        frame = torch.from_numpy(np.ascontiguousarray(frame))
    if not isinstance(frame, torch.Tensor) or frame.ndim != 3:
        shape = tuple(frame.shape) if hasattr(frame, "shape") else type(frame).__name__
        raise InputImageError(f"a frame must be a [height, width, channels] array, got {shape}")
    if frame.dtype == torch.uint8:
        return frame
    if frame.dtype == torch.uint16:
        return frame.to(torch.float32).div_(65535)
    if frame.is_floating_point():
        return frame.float()
    raise InputImageError(f"a frame has dtype {frame.dtype}; expected uint8, uint16 or float")
