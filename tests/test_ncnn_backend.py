"""The ncnn backend (runtimes/ncnn/) against independent oracles:
the functional networks written from the papers' equations, spandrel, and our torch plans;
and the engine contracts it must keep (seam-free tiles, cancel and progress within a tile,
backend choice and report, the memory bound)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from spandrel import ModelLoader

from realesrgan_tiled.errors import InputImageError
from realesrgan_tiled.loading import build_descriptor, load_model
from realesrgan_tiled.loading.sniff import sniff
from realesrgan_tiled.runtimes import backend as backends
from realesrgan_tiled.runtimes import probes
from realesrgan_tiled.runtimes.ncnn.rrdbnet import RRDBNetNcnnPlan
from realesrgan_tiled.runtimes.ncnn.srvgg import SRVGGNcnnPlan

from .conftest import photo, run_engine, upscaled
from .model_fixtures import image, rrdbnet_oracle, rrdbnet_state, srvgg_oracle, srvgg_state

pytest.importorskip("ncnn")
TOLERANCE = 1e-4  # fp32 Winograd against direct convolution: the contract's bound (observed ~1e-5)


def build_from_state_dict(sd: dict, act_type: str | None = None):
    return build_descriptor(sniff(sd, act_type))


def _run(model, plan, x):
    with torch.inference_mode():
        return plan.run(model.network, x)


@pytest.mark.parametrize("hp", [
    dict(num_upsample=2), dict(num_upsample=1, unshuffle=2), dict(num_upsample=2, unshuffle=4), dict(num_upsample=0),
    dict(num_upsample=3, num_grow_ch=8), dict(num_upsample=2, in_ch=1, out_ch=1),
])
def test_rrdbnet_on_ncnn_equals_the_paper_network(hp):
    """Small windows, so the map has interior, edge and corner windows and the tail is cut too."""
    sd = rrdbnet_state(num_feat=16, num_block=2, **hp)
    model = build_from_state_dict(sd)
    x = image(37, 29, c=hp.get("in_ch", 3))
    y = _run(model, RRDBNetNcnnPlan(trunk_window=8, tail_window=5), x)
    assert (y - rrdbnet_oracle(sd, x)).abs().max() <= TOLERANCE


@pytest.mark.parametrize("act", ["prelu", "relu", "leakyrelu"])
@pytest.mark.parametrize("upscale,in_ch,out_ch", [(4, 3, 3), (2, 3, 3), (3, 1, 3), (1, 3, 3)])
def test_srvgg_on_ncnn_equals_the_paper_network(act, upscale, in_ch, out_ch):
    sd = srvgg_state(num_feat=16, num_conv=3, upscale=upscale, prelu=act == "prelu", in_ch=in_ch, out_ch=out_ch)
    model = build_from_state_dict(sd, act_type=None if act == "prelu" else act)
    x = image(41, 23, c=in_ch)
    y = _run(model, SRVGGNcnnPlan(window=9), x)
    assert (y - srvgg_oracle(sd, x, act, upscale)).abs().max() <= TOLERANCE


def test_real_weights_on_ncnn_equal_spandrel_on_a_real_photo(x4plus_path, animevideov3_path):
    """Real animevideov3 and anime_6B weights through both backends' real plans, against
    spandrel's own networks. The photo spans several windows of each plan."""
    from realesrgan_tiled.loading.bundled import bundled_model_path

    x = photo("astronaut", (200, 232)).permute(0, 3, 1, 2).contiguous()
    for path, plan in ((animevideov3_path, SRVGGNcnnPlan(window=96)),
                       (bundled_model_path("RealESRGAN_x4plus_anime_6B"), RRDBNetNcnnPlan())):
        model = load_model(path)
        oracle = ModelLoader().load_from_state_dict(dict(model.model.state_dict())).model.eval()
        with torch.inference_mode():
            expected = oracle(x)
        assert (_run(model, plan, x) - expected).abs().max() <= TOLERANCE, path.name


def test_engine_tiles_on_ncnn_are_seam_free(compact):
    """Tiled on ncnn equals one whole-image pass on torch: the overlap covers the receptive field."""
    x = photo("coffee", (96, 120))
    whole = upscaled(compact, x, backend="torch", tile_size=512)
    ran = run_engine(compact, x, backend="ncnn", tile_size=40)
    assert ran.ran.backend == "ncnn" and ran.ran.tiles > 4
    assert (ran.images - whole).abs().max() <= TOLERANCE


def test_the_report_says_which_backend_ran_and_choices_pin_it(compact):
    x = photo("astronaut", (24, 24))
    assert run_engine(compact, x, backend="torch").ran.backend == "torch"
    assert run_engine(compact, x, backend="ncnn").ran.backend == "ncnn"
    assert run_engine(compact, x, backend="ncnn", precision="bf16").ran.backend == "torch"  # ncnn is fp32 only
    assert run_engine(compact, x).ran.backend in backends.RUNS
    with pytest.raises(InputImageError, match="backend must be one of auto, torch, ncnn, openvino, not 'onnx'"):
        run_engine(compact, x, backend="onnx")


def test_the_environment_pins_the_backend_when_choices_do_not(compact, monkeypatch):
    x = photo("astronaut", (24, 24))
    monkeypatch.setenv(backends.ENVIRONMENT_VARIABLE, "ncnn")
    assert run_engine(compact, x).ran.backend == "ncnn"
    assert run_engine(compact, x, backend="torch").ran.backend == "torch"  # the user's choice wins
    monkeypatch.setenv(backends.ENVIRONMENT_VARIABLE, "vulkan")
    with pytest.raises(InputImageError, match="REALESRGAN_TILED_BACKEND must be one of"):
        run_engine(compact, x)


def test_auto_keeps_the_backend_whose_probe_ran_faster():
    def taking(seconds):
        return lambda: time.sleep(seconds)

    assert backends._measure({"torch": taking(0.03), "ncnn": taking(0.001)}) == "ncnn"
    assert backends._measure({"torch": taking(0.001), "ncnn": taking(0.03)}) == "torch"


def test_auto_measures_once_per_network_shape_on_the_cpu(compact, monkeypatch):
    x = torch.rand(1, 272, 256, 3)
    choice = run_engine(compact, x, precision="fp32").ran.backend
    (arch, _, threads, side, precisions, _), stored = next(
        (k, v) for k, v in backends.measured().items() if k[3] == 512 and k[0] == compact.our_architecture.name)
    assert (arch, threads, precisions, stored) == (compact.our_architecture.name, torch.get_num_threads(), "fp32", f"{choice}/fp32")
    monkeypatch.setattr(probes, "candidates", lambda *a: pytest.fail("measured again"))
    assert run_engine(compact, x, precision="fp32").ran.backend == choice


CACHED_CHOICE = """
import sys, torch
from realesrgan_tiled.runtimes import backend, probes
from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.loading import load_model
model = load_model(bundled_model_path("realesr-animevideov3-x4"))
if sys.argv[1] == "second":
    def no_probe(*args):
        raise AssertionError("probed again although the cache holds the answer")
    probes.candidates = no_probe
print(backend.resolve("auto", model, torch.device("cpu"), torch.float32, 256 * 256))
"""


def test_auto_measures_once_per_machine_not_per_process(tmp_path):
    """The measured choice is cached on disk (per CPU, threads, versions): a second process
    takes it without probing."""
    import os

    env = dict(os.environ, **{backends.CACHE_DIR_VARIABLE: str(tmp_path)})
    first, second = (subprocess.run([sys.executable, "-c", CACHED_CHOICE, which], capture_output=True, text=True,
                                    timeout=300, env=env) for which in ("first", "second"))
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:] + first.stderr[-2000:]
    assert first.stdout.split()[-1] == second.stdout.split()[-1] in backends.RUNS
    stored = json.loads((tmp_path / "cpu_backends.json").read_text())
    assert list(stored.values()) == [first.stdout.split()[-1] + "/fp32"] and "SRVGGNetCompact" in next(iter(stored))


def test_a_cancel_stops_autos_first_measurement_and_nothing_is_kept(tmp_path, monkeypatch):
    """A model's first auto run on a machine times its candidates (up to a minute): a cancel
    (ComfyUI's interrupt) is seen between the probes, and the cut-short measurement is not
    cached, so the next run measures in full."""
    monkeypatch.setenv(backends.CACHE_DIR_VARIABLE, str(tmp_path))
    monkeypatch.setattr(backends, "_measured", {})
    model = build_from_state_dict(srvgg_state(num_feat=8, num_conv=2))
    checks = []

    class Stop(Exception):
        pass

    def cancel_on_second_check():
        checks.append(1)
        if len(checks) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_engine(model, image(40, 40).movedim(1, -1), backend="auto", precision="fp32", check_cancel=cancel_on_second_check)
    assert len(checks) == 2 and backends._measured == {} and backends._read_cache() == {}
    run_engine(model, image(40, 40).movedim(1, -1), backend="auto", precision="fp32")
    assert list(backends._read_cache().values())[0].split("/")[0] in backends.RUNS


def test_a_damaged_cache_file_means_measuring_again(tmp_path, monkeypatch):
    monkeypatch.setenv(backends.CACHE_DIR_VARIABLE, str(tmp_path))
    (tmp_path / "cpu_backends.json").write_text("{not json")
    assert backends._read_cache() == {}
    backends._write_cache("k", "ncnn")
    assert backends._read_cache() == {"k": "ncnn"}


def test_stages_follow_weights_changed_in_place():
    """A training step or EMA update writes the weights in place: the ncnn copy must follow."""
    sd = srvgg_state(num_feat=8, num_conv=2)
    model = build_from_state_dict(sd)
    x = image(20, 20)
    before = _run(model, SRVGGNcnnPlan(window=16), x)
    with torch.no_grad():
        model.network.body[-1].bias.add_(0.5)
    after = _run(model, SRVGGNcnnPlan(window=16), x)
    with torch.inference_mode():
        assert (after - model.network(x)).abs().max() <= TOLERANCE
    assert (after - before).abs().max() > 0.1


def test_models_made_under_inference_mode_run_and_follow_in_place_writes():
    """ComfyUI loads and runs models under torch.inference_mode: their weights are inference
    tensors, which have no version counter."""
    sd = srvgg_state(num_feat=8, num_conv=2)
    x = image(20, 20)
    with torch.inference_mode():
        model = build_from_state_dict({k: v.clone() for k, v in sd.items()})
        before = SRVGGNcnnPlan(window=16).run(model.network, x)
        assert (before - model.network(x)).abs().max() <= TOLERANCE
        model.network.body[-1].bias.add_(0.5)
        after = SRVGGNcnnPlan(window=16).run(model.network, x)
        assert (after - model.network(x)).abs().max() <= TOLERANCE
    assert (after - before).abs().max() > 0.1


def test_cancel_and_progress_within_one_tile_on_ncnn():
    sd = rrdbnet_state(num_feat=16, num_block=2)
    model = build_from_state_dict(sd)
    model.plan = RRDBNetNcnnPlan(trunk_window=16, tail_window=8, threads=1)
    x = photo("astronaut", (64, 64))
    seen = []
    run_engine(model, x, progress=lambda done, total: seen.append(done), progress_interval=0.0)
    inside = [v for v in seen if 0 < v < 1]
    assert len(inside) >= 10 and inside == sorted(inside)  # moves within the one tile, never back

    class Stop(Exception):
        pass

    calls = []

    def cancel_after_five():
        calls.append(1)
        if len(calls) > 5:
            raise Stop

    with pytest.raises(Stop):
        run_engine(model, x, check_cancel=cancel_after_five)
    assert len(calls) == 6  # stopped at the first check after the fifth window, not at the tile's end


MEMORY_PROBE = """
import json, sys, torch
from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.engine import call_model
from realesrgan_tiled.engine.memory import model_cost
from realesrgan_tiled.runtimes import backend
from realesrgan_tiled.loading import load_model
torch.set_num_threads(2)
name, side = sys.argv[1], int(sys.argv[2])
model = load_model(bundled_model_path(name))
x = torch.rand(1, 3, side, side)
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))
with torch.inference_mode(), backend.using("ncnn"):
    estimate = model_cost(model, torch.device("cpu"), torch.float32, call_model).bytes_for(side * side)
    call_model(model, x[..., :40, :40])  # loads ncnn's code and its copy of the weights (both in the estimate's fixed part)
    base = rss("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # restart the high-water mark here
    call_model(model, x)
    peak = rss("VmHWM:") - base
print(json.dumps({"estimate": estimate, "peak": peak}))
"""


@pytest.mark.parametrize("name,side", [("realesr-animevideov3-x4", 400), ("RealESRGAN_x4plus_anime_6B", 200)])
def test_the_memory_estimate_covers_ncnn_runs(name, side):
    """Measured as the process's resident high-water mark during the run (ncnn's memory is
    not torch's, so the engine's allocation tracker cannot see it)."""
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, name, str(side)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["peak"] <= figures["estimate"] <= 4 * figures["peak"] + (64 << 20), figures
