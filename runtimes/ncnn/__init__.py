"""The ncnn backend: our networks' weights as in-memory ncnn graphs (``writer.py``), run window
by window (``runtime.py``). Each network it runs has a module here with its ``PLAN``;
``runtimes/probes.py`` times its pieces against the other backends'."""
from __future__ import annotations

from types import ModuleType

from ...archs import rrdbnet as rrdbnet_network
from ...archs import srvgg as srvgg_network
from . import rrdbnet, srvgg
from .runtime import available

NETWORKS: dict[str, ModuleType] = {rrdbnet_network.NAME: rrdbnet, srvgg_network.NAME: srvgg}

__all__ = ["NETWORKS", "available", "network_support"]


def network_support(arch_name: str) -> ModuleType | None:
    """The module that runs this architecture on ncnn, or None: it runs on torch only."""
    return NETWORKS.get(arch_name)
