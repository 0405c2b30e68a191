"""Our networks, one package each (see README, "Architecture"). Adding one means adding its
package and listing its ``ARCHITECTURE`` here. Nothing in ``archs/`` imports from the rooms
above it (loading, runtimes, the engine, hosts): ``tests/test_layout.py`` holds that."""
from __future__ import annotations

from . import rrdbnet, srvgg
from .architecture import Cost, ModelSpec, OurArchitecture
from .rrdbnet import RRDBNet, RRDBNetPlan
from .srvgg import ACT_TYPES, SRVGGNetCompact, SRVGGPlan

ARCHITECTURES: dict[str, OurArchitecture] = {a.name: a for a in (rrdbnet.ARCHITECTURE, srvgg.ARCHITECTURE)}

__all__ = ["ACT_TYPES", "ARCHITECTURES", "Cost", "ModelSpec", "OurArchitecture", "RRDBNet",
           "RRDBNetPlan", "SRVGGNetCompact", "SRVGGPlan"]
