"""Our own network implementations (plain torch.nn), in the basicsr key layout."""
from .rrdbnet import RRDBNet
from .srvgg import ACT_TYPES, SRVGGNetCompact

__all__ = ["RRDBNet", "SRVGGNetCompact", "ACT_TYPES"]
