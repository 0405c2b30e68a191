"""Copy lanes: a batch's trip to the device and its result's trip home. On CUDA each trip has
its own stream and goes through a page-locked buffer this object keeps, so the upload of the
next batch and the download of the last one run while the network works on this one. Anywhere
else (the CPU, MPS, XPU, DirectML) a trip is a plain copy made when asked: nothing to overlap,
and those paths stay as they were."""
from __future__ import annotations

from collections.abc import Callable

import torch

OVERLAP_ON_CUDA = True  # bench/gpu_check.py turns it off to measure what the overlap buys


def lanes_for(device: torch.device) -> Lanes:
    if device.type == "cuda" and OVERLAP_ON_CUDA:
        return CudaLanes(device)
    return Lanes(device)


class Lanes:
    """The plain trips, one after the other."""

    def __init__(self, device: torch.device):
        self.device = device

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        # contiguous first: a copy from a strided slice returns wrong values on MPS (PyTorch #139550)
        return host.contiguous().to(self.device)

    def download(self, *tensors: torch.Tensor) -> Callable[[], tuple[torch.Tensor, ...]]:
        """``tensors`` (on the device) on their way home; the returned call gives their host
        copies, in order (the CPU's own tensors are returned as they are)."""
        home = tuple(t.cpu() for t in tensors)
        return lambda: home


class CudaLanes(Lanes):
    """Two side streams (up, down); each trip's tensors go through page-locked buffers kept in
    two sets per lane, used in turn: the host fills batch i+1's set while batch i's copy reads
    the other. Pinning memory anew for every batch cost as much as the copy it saves (README:
    On a GPU), so the buffers are kept, grown to the largest batch seen."""

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.streams = {"up": torch.cuda.Stream(device), "down": torch.cuda.Stream(device)}
        self.pinned: dict[tuple, torch.Tensor] = {}
        self.last_copy: dict[tuple, torch.cuda.Event] = {}  # per buffer set: when its last copy landed
        self.turns = {"up": 0, "down": 0}

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        if host.device.type != "cpu":  # already off the host: nothing to stage
            return super().upload(host)
        staged = self._buffers("up", host)
        if staged is None:  # no page-locked memory to be had
            return super().upload(host)
        staged[0].copy_(host)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.streams["up"]):  # allocated on the up stream, which writes it first ...
            x = staged[0].to(self.device, non_blocking=True)
        self._landed_when("up")
        x.record_stream(compute)  # ... and its memory not reused while the compute stream still reads it
        compute.wait_stream(self.streams["up"])  # work queued from here on waits for this upload; earlier work does not
        return x

    def download(self, *tensors: torch.Tensor) -> Callable[[], tuple[torch.Tensor, ...]]:
        staged = self._buffers("down", *tensors)
        if staged is None:
            return super().download(*tensors)
        down = self.streams["down"]
        down.wait_stream(torch.cuda.current_stream(self.device))  # after the work that made them, not later work
        with torch.cuda.stream(down):
            for buffer, t in zip(staged, tensors):
                buffer.copy_(t, non_blocking=True)
        for t in tensors:
            t.record_stream(down)  # the caller may drop them: their memory waits for the copy
        event = self._landed_when("down")

        def landed() -> tuple[torch.Tensor, ...]:
            event.synchronize()
            return staged  # valid until the next-but-one download

        return landed

    def _buffers(self, lane: str, *like: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The lane's next set of buffers, shaped like ``like``, once its last copy has landed."""
        turn = self.turns[lane] % 2
        self.turns[lane] += 1
        if (lane, turn) in self.last_copy:
            self.last_copy.pop((lane, turn)).synchronize()  # long done in a running pipeline: it guards the reuse
        views = []
        for index, t in enumerate(like):
            need, key = t.numel() * t.element_size(), (lane, turn, index)
            if key not in self.pinned or self.pinned[key].numel() < need:
                try:
                    self.pinned[key] = torch.empty(max(need, 1), dtype=torch.uint8, pin_memory=True)
                except RuntimeError:
                    return None
            views.append(self.pinned[key][:need].view(t.dtype).view(t.shape))
        return tuple(views)

    def _landed_when(self, lane: str) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(self.streams[lane])
        self.last_copy[(lane, (self.turns[lane] - 1) % 2)] = event
        return event
