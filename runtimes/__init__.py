"""What runs our networks: torch (each network's own plans, ``archs/<name>/inference.py``),
ncnn (``ncnn/``) or OpenVINO (``openvino/``), and the choice between them (``backend.py``,
timing ``probes.py``; each backend's plan: ``plans.py``). Above the networks, below the engine
and the loaders."""
from __future__ import annotations

from . import backend
from .plans import plan_for

__all__ = ["backend", "plan_for"]
