"""RRDBNet (ESRGAN, Real-ESRGAN x4plus/x2plus/anime_6B, BSRGAN, …): network, key layouts,
torch inference plan and cost profile."""
from __future__ import annotations

import torch

from ..architecture import Cost, ModelSpec, OurArchitecture
from .inference import RRDBNetPlan
from .keys import NAME, read_spec
from .network import RRDBNet


class RRDBNetArchitecture(OurArchitecture):
    network_class = RRDBNet
    plan_class = RRDBNetPlan
    build_keys = ("num_in_ch", "num_out_ch", "num_feat", "num_block", "num_grow_ch", "num_upsample", "unshuffle")

    def spec(self, state: dict, act_type: str | None = None) -> ModelSpec | None:
        return read_spec(state)  # act_type only concerns SRVGGNetCompact

    def tags(self, hp: dict) -> list[str]:
        return [f"{hp['num_feat']}nf", f"{hp['num_block']}nb", f"{hp['num_grow_ch']}gc"]

    def multiple_of(self, hp: dict) -> int:
        return hp["unshuffle"]

    def overlap(self, net: RRDBNet) -> int:
        return 48  # its receptive field is wider than any overlap; 48 px measured >= 50 dB (README)

    def torch_plan_walks_windows(self, net: RRDBNet, pixels: int) -> bool:
        return RRDBNetPlan.for_device(torch.device("cpu")).trunk_in_windows(net, -(-pixels // net.unshuffle**2))

    def cost(self, net: RRDBNet, plan: RRDBNetPlan, element_size: int) -> Cost:
        """Trunk maps (at 1/unshuffle^2 of the input px) plus the network output."""
        per_pixel = plan.map_channels(net) / net.unshuffle**2 + net.num_out_ch * net.scale**2
        return Cost(plan.window_bytes(net, element_size), per_pixel * element_size)


ARCHITECTURE = RRDBNetArchitecture(NAME)

__all__ = ["ARCHITECTURE", "NAME", "RRDBNet", "RRDBNetPlan"]
