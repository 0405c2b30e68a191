"""Hardening: memory bounded by output + working set, long batches stream, cancellation at
every stage leaves a model that gives the same result as a fresh one, Ctrl-C in the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from realesrgan_tiled.archs import SRVGGNetCompact
from realesrgan_tiled.errors import InputImageError
from realesrgan_tiled.loading import load_model

from .conftest import upscaled
from .engine_fixtures import spy_descriptor
from .model_fixtures import OverflowsInHalf, as_descriptor


@pytest.fixture(scope="module")
def compact_file(tmp_path_factory):
    torch.manual_seed(5)
    net = SRVGGNetCompact(num_feat=16, num_conv=4, upscale=4)
    path = tmp_path_factory.mktemp("m") / "compact.safetensors"
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(path))
    return path


MEASURE = textwrap.dedent("""
    import json, resource, sys, torch
    from realesrgan_tiled.engine import upscale, Choices
    from realesrgan_tiled.loading import load_model
    torch.set_num_threads(1)
    model = load_model(sys.argv[1])
    h, w, tile = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    image = torch.rand(1, h, w, 3)
    upscale(torch.rand(1, 64, 64, 3), model, Choices(tile_size=tile))  # warm up allocator and kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = upscale(image, model, Choices(tile_size=tile)).images
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"growth": after - before, "output": out.numel() * out.element_size()}))
""")


def test_peak_memory_is_output_plus_a_bounded_working_set(compact_file):
    """Scaled-down stand-in for the 16384^2 x4 case: a 1536x1152 x4 run (108 MB input, 85 MB
    per output plane) may grow the process by the output plus a working set that depends
    on the tile, not on the image. A second full-size copy of the output would fail this."""
    done = subprocess.run([sys.executable, "-c", MEASURE, str(compact_file), "1152", "1536", "128"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    m = json.loads(done.stdout.strip().splitlines()[-1])
    input_bytes = 1152 * 1536 * 3 * 4
    working_set = 64 << 20  # a 128-px tile of a 16-feature net is a few MB; allocator slack on top
    assert m["growth"] <= m["output"] + input_bytes + working_set, m


def test_four_hundred_frames_stream_one_tile_at_a_time(compact_file):
    model, spy = spy_descriptor(load_model(compact_file))
    frames = torch.rand(400, 12, 12, 3)
    out = upscaled(model, frames)
    assert out.shape == (400, 48, 48, 3)
    assert len(spy.calls) == 400 and all(shape[0] == 1 for shape, _ in spy.calls)


def test_cancel_during_the_fp32_rerun_then_next_run_matches_a_fresh_model():
    model, spy = spy_descriptor(as_descriptor(OverflowsInHalf()))
    image = torch.rand(1, 20, 20, 3)  # one tile
    checks = {"n": 0}

    class Stop(Exception):
        pass

    def cancel_at_rerun():
        checks["n"] += 1
        if checks["n"] == 2:  # 1: before the tile, 2: before its fp32 re-run
            raise Stop()

    with pytest.raises(Stop):
        upscaled(model, image, tile_size=20, precision="fp16", check_cancel=cancel_at_rerun)
    assert [autocast for _, autocast in spy.calls] == [True]  # the fp16 tile ran, its fp32 re-run did not
    assert checks["n"] == 2 and model.device.type == "cpu"
    spy.calls.clear()
    again = upscaled(model, image, precision="fp16")
    fresh = upscaled(as_descriptor(OverflowsInHalf()), image, precision="fp16")
    assert torch.equal(again, fresh)


def test_cancel_mid_tile_leaves_no_state_behind(compact_file):
    model = load_model(compact_file)
    image = torch.rand(2, 40, 40, 3)
    n = {"k": 0}

    def cancel_third():
        n["k"] += 1
        if n["k"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscaled(model, image, tile_size=24, overlap=8, check_cancel=cancel_third)
    assert not model.model.training and model.device.type == "cpu"
    assert torch.equal(upscaled(model, image, tile_size=24, overlap=8),
                       upscaled(load_model(compact_file), image, tile_size=24, overlap=8))


def test_ctrl_c_while_loading_exits_cleanly(tmp_path, x4plus_path):
    """SIGINT during model loading (the big ncnn import): exit status 130, one line, no
    traceback, no half-written output."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the child restores Python's Ctrl-C handler: a runner that starts jobs in the background
    # (nohup ... &) passes SIGINT down as ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import signal; signal.signal(signal.SIGINT, signal.default_int_handler)
        import sys, realesrgan_tiled.loading.loader as L
        real = L.build_descriptor
        def slow(*a, **k):
            print("loading", flush=True)
            import time; time.sleep(30)
            return real(*a, **k)
        L.build_descriptor = slow
        from realesrgan_tiled.cli import main
        sys.exit(main(["upscale", r"{tmp_path / 'a.png'}", "-o", r"{tmp_path / 'out'}", "--quiet"]))
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "loading"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and err.strip() == "interrupted"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_result_larger_than_free_memory_is_refused_before_any_work(compact_file):
    """The issue's 16384x16384 x4 case: 65536^2 x 3 fp32 = 48 GiB of result. On a host with
    less free memory it must be one clear error up front, not an OOM kill half-way."""
    model, spy = spy_descriptor(load_model(compact_file))
    huge = torch.zeros(1, 1, 1, 3).expand(1, 16384, 16384, 3)  # no memory behind it
    with pytest.raises(InputImageError, match=r"needs 48\.0 GiB but only 24\.0 GiB"):
        upscaled(model, huge, free_memory=lambda device: 24 << 30)
    assert spy.calls == []
