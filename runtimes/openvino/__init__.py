"""The OpenVINO backend (optional: ``pip install realesrgan_tiled[openvino]``): our networks'
weights as in-memory OpenVINO graphs (``graph.py``), compiled per shape and precision
(``runtime.py``). Each network it runs has a module here with its ``PLAN``."""
from __future__ import annotations

from types import ModuleType

from ...archs import rrdbnet as rrdbnet_network
from ...archs import srvgg as srvgg_network
from . import rrdbnet, srvgg
from .runtime import available

NETWORKS: dict[str, ModuleType] = {rrdbnet_network.NAME: rrdbnet, srvgg_network.NAME: srvgg}

__all__ = ["NETWORKS", "available", "network_support"]


def network_support(arch_name: str) -> ModuleType | None:
    """The module that runs this architecture on OpenVINO, or None: it does not."""
    return NETWORKS.get(arch_name)
