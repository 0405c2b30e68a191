"""Our architectures, one package each (see README, "Architecture"). Adding one means adding
its package and listing its ``ARCHITECTURE`` here."""
from __future__ import annotations

from . import rrdbnet, srvgg
from .architecture import Cost, ModelSpec, OurArchitecture, OurModel
from .rrdbnet import RRDBNet, RRDBNetPlan
from .srvgg import ACT_TYPES, SRVGGNetCompact, SRVGGPlan

ARCHITECTURES: dict[str, OurArchitecture] = {a.name: a for a in (rrdbnet.ARCHITECTURE, srvgg.ARCHITECTURE)}

__all__ = ["ACT_TYPES", "ARCHITECTURES", "Cost", "ModelSpec", "OurArchitecture", "OurModel", "RRDBNet",
           "RRDBNetPlan", "SRVGGNetCompact", "SRVGGPlan"]
