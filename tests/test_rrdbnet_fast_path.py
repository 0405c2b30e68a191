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


@pytest.mark.parametrize("path", ["whole-map", "windows"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_inference_trunk_under_autocast_stays_close_to_fp32(monkeypatch, dtype, path):
    import realesrgan_tiled.archs.rrdbnet as rrdbnet

    if path == "windows":
        monkeypatch.setattr(rrdbnet, "WHOLE_MAP_MAX_PIXELS", 0)
        monkeypatch.setattr(rrdbnet, "BLOCK", 6)
    torch.manual_seed(1)
    net = RRDBNet(num_feat=16, num_block=2, num_grow_ch=8).eval()
    for p in net.parameters():
        p.data.mul_(0.3)
    x = torch.rand(1, 3, 20, 14)
    with torch.inference_mode():
        ref = net(x)
        with torch.autocast("cpu", dtype=dtype):
            half = net(x)
    assert half.dtype == dtype
    assert (half.float() - ref).abs().max() < 3e-2


@pytest.mark.parametrize("num_upsample,unshuffle", [(2, 1), (3, 1), (0, 1), (2, 2), (1, 1)])
@pytest.mark.parametrize("window", [(3, 17), (2, 2), (5, 4), (100, 100)])
def test_tail_in_windows_equals_whole_map(num_upsample, unshuffle, window):
    """Tiny windows (a few trunk px) put window edges and clipped halos everywhere; (3, 17) is
    the full-width strip layout used off CPU."""
    torch.manual_seed(2)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, num_upsample=num_upsample, unshuffle=unshuffle).eval()
    feat = torch.randn(2, 8, 23, 17)
    with torch.inference_mode():
        whole = net._tail(feat)
        windowed = net._tail_in_windows(feat, window)
    assert windowed.shape == whole.shape
    assert (windowed - whole).abs().max() < 1e-6


@pytest.mark.parametrize("block", [1, 4, 7, 96])
@pytest.mark.parametrize("num_feat,grow,blocks,unshuffle,size", [
    (16, 8, 2, 1, (31, 23)), (12, 20, 1, 2, (40, 9)), (8, 4, 3, 1, (5, 30)), (8, 4, 1, 4, (33, 35)),
])
def test_trunk_in_windows_equals_module_graph(monkeypatch, block, num_feat, grow, blocks, unshuffle, size):
    """The CPU window-by-window trunk (forced on at any size) against the plain module graph:
    windows smaller than the halo, a map thinner than a window, batches of two."""
    import realesrgan_tiled.archs.rrdbnet as rrdbnet

    monkeypatch.setattr(rrdbnet, "WHOLE_MAP_MAX_PIXELS", 0)
    monkeypatch.setattr(rrdbnet, "BLOCK", block)
    monkeypatch.setattr(rrdbnet, "TAIL_BLOCK", max(1, block // 2))
    torch.manual_seed(3)
    net = RRDBNet(num_feat=num_feat, num_block=blocks, num_grow_ch=grow, unshuffle=unshuffle).eval()
    x = torch.rand(2, 3, *size)
    with torch.enable_grad():
        plain = net(x)
    with torch.inference_mode():
        windowed = net(x)
    assert windowed.shape == plain.shape
    assert (plain - windowed).abs().max() < 1e-5


def test_large_cpu_maps_take_the_window_path(monkeypatch):
    """Above WHOLE_MAP_MAX_PIXELS the CPU trunk must run window by window (the speed and memory
    figures in README depend on it), below it the whole-map path."""
    import realesrgan_tiled.archs.rrdbnet as rrdbnet

    calls = []
    real = rrdbnet._dense_block_in_windows
    monkeypatch.setattr(rrdbnet, "_dense_block_in_windows", lambda *a: calls.append(1) or real(*a))
    net = RRDBNet(num_feat=4, num_block=1, num_grow_ch=4).eval()
    side = int(rrdbnet.WHOLE_MAP_MAX_PIXELS**0.5)
    with torch.inference_mode():
        net(torch.rand(1, 3, side, side))
        assert not calls
        net(torch.rand(1, 3, side + 1, side))
        assert len(calls) == 3
