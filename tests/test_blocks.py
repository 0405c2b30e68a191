"""Window geometry of ``archs/blocks.py``: the networks' exactness rests on it."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realesrgan_tiled.archs.blocks import even_spans, windows


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 60), w=st.integers(1, 60), rows=st.integers(1, 70), cols=st.integers(1, 70), halo=st.integers(0, 9))
def test_windows_cover_the_map_once_and_load_core_plus_clipped_halo(h, w, rows, cols, halo):
    feature_map = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w) + 1
    covered = torch.zeros(h, w, dtype=torch.int64)
    for win in windows(h, w, (rows, cols), halo):
        (r, c), size = win.core, win.size
        covered[r, c] += 1
        assert size == (r.stop - r.start + 2 * halo, c.stop - c.start + 2 * halo)
        assert r.stop - r.start <= rows and c.stop - c.start <= cols
        loaded = torch.full((1, 1, *size), -1.0)
        win.load(loaded, feature_map)
        # window px (i, j) is map px (r.start - halo + i, c.start - halo + j), or 0 off the map
        ys = torch.arange(size[0]) + r.start - halo
        xs = torch.arange(size[1]) + c.start - halo
        on_map = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
        expected = torch.zeros(size)
        expected[on_map] = feature_map[0, 0][ys.clamp(0, h - 1)][:, xs.clamp(0, w - 1)][on_map]
        assert torch.equal(loaded[0, 0], expected)
        # a layer that shrank by k px per side: exactly its off-map part is zeroed
        for k in range(0, min(size) // 2 + 1):
            layer = torch.ones(1, 1, size[0] - 2 * k, size[1] - 2 * k)
            win.zero_outside_map(layer, k)
            assert torch.equal(layer[0, 0], on_map[k : size[0] - k, k : size[1] - k].float())
    assert bool((covered == 1).all())


def test_even_spans_have_no_thin_last_span():
    assert [s.stop - s.start for s in even_spans(100, 96)] == [50, 50]
    assert [s.stop - s.start for s in even_spans(7, 100)] == [7]
    assert [s.stop - s.start for s in even_spans(512, 256)] == [256, 256]
