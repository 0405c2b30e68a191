"""Window geometry and worker threads of ``archs/windows.py``: the networks' exactness rests on it."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realesrgan_tiled.archs import RRDBNetPlan, SRVGGPlan
from realesrgan_tiled.archs.windows import Window, even_spans, for_each_window, windows


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


@pytest.fixture
def threads():
    """Set torch's intra-op thread count for one test, and restore it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _nets():
    from realesrgan_tiled.archs import RRDBNet, SRVGGNetCompact

    torch.manual_seed(5)
    rrdb = RRDBNet(num_feat=16, num_block=2, num_grow_ch=8).eval()
    srvgg = SRVGGNetCompact(num_feat=16, num_conv=3, upscale=2).eval()
    for p in [*rrdb.parameters(), *srvgg.parameters()]:
        p.data.mul_(0.5)
    return rrdb, srvgg


@pytest.mark.parametrize("modes", ["inference", "no_grad+bf16"])
def test_windows_on_worker_threads_equal_the_callers_thread(monkeypatch, threads, modes):
    """Two intra-op threads: windows run on the pool, each worker single-threaded. The result
    equals running every window in the caller's thread, the caller's thread count is unchanged,
    and the caller's inference mode / autocast reach the workers (thread-local in torch)."""
    plans = (RRDBNetPlan(trunk_window=7, whole_map_max_pixels=0, tail_window=5),
             SRVGGPlan(window=(6, 9), whole_map_max_pixels=0))
    worker_names = set()
    real_load = Window.load
    monkeypatch.setattr(Window, "load", lambda *a: worker_names.add(threading.current_thread().name) or real_load(*a))
    x = torch.rand(1, 3, 23, 31)

    def run(n_threads):
        threads(n_threads)
        mode = torch.inference_mode() if modes == "inference" else torch.no_grad()
        with mode, torch.autocast("cpu", dtype=torch.bfloat16, enabled=modes != "inference"):
            outs = [plan.run(net, x) for plan, net in zip(plans, _nets())]
        assert torch.get_num_threads() == n_threads
        return outs

    alone = run(1)
    assert worker_names == {threading.current_thread().name}
    worker_names.clear()
    pooled = run(2)
    assert any(name.startswith("realesrgan-window") for name in worker_names)
    assert alone[0].dtype == (torch.float32 if modes == "inference" else torch.bfloat16)  # autocast reached the convs
    for a, b in zip(alone, pooled):
        assert a.dtype == b.dtype
        assert (a.float() - b.float()).abs().max() <= (1e-5 if modes == "inference" else 2e-2)
        assert b.is_inference() == (modes == "inference")


def test_an_error_in_one_window_skips_the_rest_and_surfaces_once_none_is_running(threads):
    threads(2)
    wins = list(windows(40, 40, (8, 8), 1))
    done = []

    def work(win):
        if win is wins[3]:
            raise MemoryError("window 3")
        time.sleep(0.01)
        done.append(win)

    with pytest.raises(MemoryError, match="window 3"):
        for_each_window(work, wins)
    finished = len(done)
    time.sleep(0.1)
    assert len(done) == finished, "a window was still running after the error surfaced"
    assert finished < len(wins) - 1, "windows after the error were not skipped"
