"""SRVGGNetCompact (realesr-animevideov3, realesr-general-x4v3, compact community models):
network, key layout, inference plan, ncnn pattern and cost profile."""
from __future__ import annotations

import torch

from ..architecture import Cost, ModelSpec, OurArchitecture
from .inference import SRVGGPlan
from .keys import DEFAULT_ACT, NAME, read_spec
from .ncnn_plan import SRVGGNcnnPlan
from .network import ACT_TYPES, SRVGGNetCompact


class SRVGGArchitecture(OurArchitecture):
    network_class = SRVGGNetCompact
    plan_class = SRVGGPlan
    ncnn_plan_class = SRVGGNcnnPlan
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

    def probe_key(self, net: SRVGGNetCompact) -> tuple:
        return net.num_feat, net.receptive_radius, net.act_type

    def speed_probe(self, net: SRVGGNetCompact) -> dict:
        """The whole network over the same two 96 px windows on each backend."""
        side = 96
        x = torch.rand(1, net.num_in_ch, side, 2 * side)
        torch_plan, ncnn_plan = SRVGGPlan(window=(side, side), whole_map_max_pixels=0), SRVGGNcnnPlan(window=side)
        return {"torch": lambda: torch_plan.run(net, x), "ncnn": lambda: ncnn_plan.run(net, x)}

    def cost(self, net: SRVGGNetCompact, plan: SRVGGPlan, element_size: int) -> Cost:
        """Feature maps (none with windows), the output, the upscaled input and their sum."""
        per_pixel = plan.map_channels(net) + 3 * net.num_out_ch * net.upscale**2
        return Cost(plan.window_bytes(net, element_size), per_pixel * element_size)


ARCHITECTURE = SRVGGArchitecture(NAME)

__all__ = ["ACT_TYPES", "ARCHITECTURE", "DEFAULT_ACT", "SRVGGNcnnPlan", "SRVGGNetCompact", "SRVGGPlan"]
