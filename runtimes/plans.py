"""The plan each backend runs for one of our networks (``backend.RUNS``)."""
from __future__ import annotations

import torch

from ..archs import OurArchitecture, RRDBNetPlan, SRVGGPlan
from . import ncnn, openvino

# the torch plans over whole maps on the CPU (backend "torch-whole"): no windows, RRDBNet's
# tail in strips of bounded memory
WHOLE_MAP_PLANS = {"RRDBNet": RRDBNetPlan(trunk_window=None, tail_window=None), "SRVGGNetCompact": SRVGGPlan(window=None)}


def plan_for(arch: OurArchitecture, device: torch.device, backend_name: str = "torch"):
    """The plan ``arch``'s network runs on ``device`` with ``backend_name`` (one of backend.RUNS)."""
    if backend_name == "ncnn":
        return ncnn.network_support(arch.name).PLAN()
    if backend_name == "openvino":
        return openvino.network_support(arch.name).PLAN()
    if backend_name == "torch-whole" and device.type == "cpu":
        return WHOLE_MAP_PLANS[arch.name]
    return arch.plan_for(device)
