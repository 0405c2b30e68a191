"""ESRGAN variants users have that spandrel handles and our RRDBNet does not build: ESRGAN+
(``RDB1.conv1x1``), 1->3, 1->1 and 4->4 channel models, x8 with three upsampling stages. Each
file must load (through us or through spandrel) and compute exactly what spandrel's own model
of the same weights computes (the oracle), not be intercepted by a look-alike of ours."""
from __future__ import annotations

import pytest
import torch
from spandrel import ModelLoader
from spandrel.architectures import ESRGAN as spandrel_esrgan

from realesrgan_tiled.loading import load_model

from .model_fixtures import save

# spandrel 0.4 names the class ESRGAN; 0.3.4 (pinned by the WebUIs) RRDBNet
SPANDREL_RRDB = getattr(spandrel_esrgan, "ESRGAN", None) or spandrel_esrgan.RRDBNet

VARIANTS = {
    "ESRGAN+ (conv1x1)": dict(plus=True, scale=4),
    "gray to RGB (1->3)": dict(in_nc=1, out_nc=3, scale=4),
    "gray (1->1)": dict(in_nc=1, out_nc=1, scale=2),
    "RGBA (4->4)": dict(in_nc=4, out_nc=4, scale=4),
    "x8 (three upsampling stages)": dict(scale=8),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_loads_and_matches_spandrels_model(name, tmp_path):
    torch.manual_seed(0)
    kwargs = dict(num_filters=8, num_blocks=1, **VARIANTS[name])
    sd = {k: v.detach().clone() for k, v in SPANDREL_RRDB(**kwargs).state_dict().items()}
    path = save(sd, tmp_path / "variant.pth")
    ours = load_model(path)
    theirs = ModelLoader().load_from_state_dict(sd)
    assert (ours.scale, ours.input_channels, ours.output_channels) == (kwargs["scale"], kwargs.get("in_nc", 3),
                                                                      kwargs.get("out_nc", 3))
    x = torch.rand(1, ours.input_channels, 12, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-5)
    if name == "ESRGAN+ (conv1x1)":
        assert ours.architecture.id == "ESRGAN"  # spandrel's: ours has no conv1x1
