"""What runs our networks: torch (each network's own plans, ``archs/<name>/inference.py``) or
ncnn (``ncnn/``), and the choice between them (``backend.py``). Above the networks, below the
engine and the loaders."""
from __future__ import annotations

import torch

from ..archs import OurArchitecture
from . import backend, ncnn

__all__ = ["backend", "plan_for"]


def plan_for(arch: OurArchitecture, device: torch.device, backend_name: str = "torch"):
    """The plan ``arch``'s network runs on ``device`` with ``backend_name``."""
    if backend_name == "ncnn":
        return ncnn.network_support(arch.name).PLAN()
    return arch.plan_for(device)
