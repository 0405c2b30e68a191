"""RRDBNet's concat-free inference trunk against the plain module graph (the readable
``body(feat)`` path that runs when autograd is on)."""
from __future__ import annotations

import pytest
import torch

from realesrgan_tiled.archs import RRDBNet


@pytest.mark.parametrize("num_feat,grow,blocks,unshuffle", [(16, 8, 2, 1), (12, 20, 1, 2), (8, 4, 3, 4)])
def test_inference_trunk_equals_module_graph(num_feat, grow, blocks, unshuffle):
    torch.manual_seed(0)
    net = RRDBNet(num_feat=num_feat, num_block=blocks, num_grow_ch=grow, unshuffle=unshuffle).eval()
    x = torch.rand(2, 3, 13, 10)
    with torch.enable_grad():
        plain = net(x)  # grad mode: the nn.Sequential of RRDB modules
    with torch.inference_mode():
        fast = net(x)
    assert (plain - fast).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_inference_trunk_under_autocast_stays_close_to_fp32(dtype):
    torch.manual_seed(1)
    net = RRDBNet(num_feat=16, num_block=2, num_grow_ch=8).eval()
    for p in net.parameters():
        p.data.mul_(0.3)
    x = torch.rand(1, 3, 12, 12)
    with torch.inference_mode():
        ref = net(x)
        with torch.autocast("cpu", dtype=dtype):
            half = net(x)
    assert half.dtype == dtype
    assert (half.float() - ref).abs().max() < 3e-2


@pytest.mark.parametrize("num_upsample,unshuffle", [(2, 1), (3, 1), (0, 1), (2, 2), (1, 1)])
def test_tail_in_strips_equals_whole_map(monkeypatch, num_upsample, unshuffle):
    """Force tiny strips (a few trunk rows) so strip edges and halos are everywhere."""
    import realesrgan_tiled.archs.rrdbnet as rrdbnet

    torch.manual_seed(2)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, num_upsample=num_upsample, unshuffle=unshuffle).eval()
    x = torch.rand(1, 3, 23, 17)
    with torch.inference_mode():
        whole = net(x)
        row_bytes = 3 * 8 * (17 // unshuffle + 1) * 4**num_upsample * 4
        monkeypatch.setattr(rrdbnet, "TAIL_STRIP_BYTES", 3 * row_bytes)
        strips = net(x)
    assert strips.shape == whole.shape
    assert (strips - whole).abs().max() < 1e-6
