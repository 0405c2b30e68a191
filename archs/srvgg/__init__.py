"""SRVGGNetCompact (realesr-animevideov3, realesr-general-x4v3, compact community models):
network, key layout, torch inference plan and cost profile."""
from __future__ import annotations

import torch

from ..architecture import Cost, ModelSpec, OurArchitecture
from .inference import SRVGGPlan
from .keys import DEFAULT_ACT, NAME, read_spec
from .network import ACT_TYPES, SRVGGNetCompact


class SRVGGArchitecture(OurArchitecture):
    network_class = SRVGGNetCompact
    plan_class = SRVGGPlan
    build_keys = ("num_in_ch", "num_out_ch", "num_feat", "num_conv", "upscale", "act_type")

    def spec(self, state: dict, act_type: str | None = None) -> ModelSpec | None:
        return read_spec(state, act_type)

    def tags(self, hp: dict) -> list[str]:
        return [f"{hp['num_feat']}nf", f"{hp['num_conv']}nc", hp["act_type"]]

    def overlap(self, net: SRVGGNetCompact) -> int:
        """The zero-weight margin (3/8 of the overlap) covers the receptive field, so tiles
        reproduce the whole-image result exactly."""
        return -(-(net.receptive_radius * 8 // 3) // 8) * 8

    def torch_plan_walks_windows(self, net: SRVGGNetCompact, pixels: int) -> bool:
        return SRVGGPlan.for_device(torch.device("cpu")).in_windows(pixels)

    def cost(self, net: SRVGGNetCompact, plan: SRVGGPlan, element_size: int) -> Cost:
        """Feature maps (none with windows), the output, the upscaled input and their sum."""
        per_pixel = plan.map_channels(net) + 3 * net.num_out_ch * net.upscale**2
        return Cost(plan.window_bytes(net, element_size), per_pixel * element_size)


ARCHITECTURE = SRVGGArchitecture(NAME)

__all__ = ["ACT_TYPES", "ARCHITECTURE", "DEFAULT_ACT", "NAME", "SRVGGNetCompact", "SRVGGPlan"]
