"""The OpenVINO backend (runtimes/openvino/) against independent oracles: the functional
networks written from the papers' equations, spandrel, and the torch fp32 network; its bf16
fidelity on real photos; and the engine contracts it must keep (seam-free tiles, cancel and
progress within a tile, fp32 meaning fp32, the memory bound), and ``auto``'s choices."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from spandrel import ModelLoader

from realesrgan_tiled.loading import build_descriptor, load_model
from realesrgan_tiled.loading.bundled import BUNDLED, bundled_model_path
from realesrgan_tiled.loading.sniff import sniff
from realesrgan_tiled.runtimes import backend as backends
from realesrgan_tiled.runtimes import probes
from realesrgan_tiled.runtimes.openvino.rrdbnet import RRDBNetOpenVINOPlan
from realesrgan_tiled.runtimes.openvino.srvgg import SRVGGOpenVINOPlan

from .conftest import photo, psnr, run_engine, upscaled
from .model_fixtures import image, rrdbnet_oracle, rrdbnet_state, srvgg_oracle, srvgg_state

pytest.importorskip("openvino")
TOLERANCE = 1e-4  # fp32 against the torch network: the contract's bound (observed 2-5e-6)
# bf16 against fp32 on real photos, measured here (AMD EPYC, AVX512-BF16): x4plus 55-56 dB,
# anime_6B and animevideov3 59-64 dB; the bar, and auto's (probes.FIDELITY_DB), is 50
BF16_DB = probes.FIDELITY_DB


def build(sd: dict, act_type: str | None = None):
    return build_descriptor(sniff(sd, act_type))


def _run(model, plan, x, dtype=torch.float32):
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        return plan.run(model.network, x)


@pytest.mark.parametrize("hp", [dict(num_upsample=2), dict(num_upsample=1, unshuffle=2), dict(num_upsample=0),
                                dict(num_upsample=3, num_grow_ch=8), dict(num_upsample=2, in_ch=1, out_ch=1)])
def test_rrdbnet_on_openvino_equals_the_paper_network(hp):
    """Small tail windows, so the tail has interior, edge and corner windows."""
    sd = rrdbnet_state(num_feat=16, num_block=2, **hp)
    x = image(37, 29, c=hp.get("in_ch", 3))
    for plan in (RRDBNetOpenVINOPlan(tail_window=5), RRDBNetOpenVINOPlan(tail_window=None)):
        assert (_run(build(sd), plan, x) - rrdbnet_oracle(sd, x)).abs().max() <= TOLERANCE, plan


@pytest.mark.parametrize("act", ["prelu", "relu", "leakyrelu"])
@pytest.mark.parametrize("upscale,in_ch", [(4, 3), (3, 1), (1, 3)])
def test_srvgg_on_openvino_equals_the_paper_network(act, upscale, in_ch):
    sd = srvgg_state(num_feat=16, num_conv=3, upscale=upscale, prelu=act == "prelu", in_ch=in_ch)
    model = build(sd, act_type=None if act == "prelu" else act)
    x = image(41, 23, c=in_ch)
    for plan in (SRVGGOpenVINOPlan(), SRVGGOpenVINOPlan(window=9)):
        assert (_run(model, plan, x) - srvgg_oracle(sd, x, act, upscale)).abs().max() <= TOLERANCE, plan


def test_real_weights_on_openvino_equal_spandrel_on_a_real_photo(animevideov3_path):
    x = photo("astronaut", (72, 88)).permute(0, 3, 1, 2).contiguous()
    for path, plan in ((animevideov3_path, SRVGGOpenVINOPlan()),
                       (bundled_model_path("RealESRGAN_x4plus_anime_6B"), RRDBNetOpenVINOPlan(tail_window=16))):
        model = load_model(path)
        oracle = ModelLoader().load_from_state_dict(dict(model.model.state_dict())).model.eval()
        with torch.inference_mode():
            expected = oracle(x)
        assert (_run(model, plan, x) - expected).abs().max() <= TOLERANCE, path.name


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "x4plus" in n else n for n in BUNDLED])
def test_bf16_keeps_fidelity_on_real_photos_for_every_bundled_model(name):
    """OpenVINO's bf16 and our torch plans' bf16 (what auto precision may pick) against the
    fp32 network on two real photos."""
    model = load_model(bundled_model_path(name))
    plans = [SRVGGOpenVINOPlan() if "animevideo" in name else RRDBNetOpenVINOPlan(), model.our_architecture.plan_for(torch.device("cpu"))]
    for which in ("astronaut", "coffee"):
        x = photo(which, (64, 96)).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            reference = model.network(x).clamp(0, 1)
        for plan in plans:
            half = _run(model, plan, x, torch.bfloat16).float().clamp(0, 1)
            assert psnr(half, reference) >= BF16_DB, (which, plan)
            assert (half - reference).abs().max() > 1e-4  # it did run in bf16: fp32 would be ~1e-6


def test_fp32_means_fp32_on_openvino(compact):
    """OpenVINO runs bf16 by default on CPUs that have it (this one does): fp32 must be exact."""
    x = photo("coffee", (48, 64))
    ran = run_engine(compact, x, backend="openvino", precision="fp32")
    assert ran.ran.backend == "openvino" and ran.ran.precision == "fp32"
    assert (ran.images - upscaled(compact, x, backend="torch", precision="fp32")).abs().max() <= TOLERANCE
    half = run_engine(compact, x, backend="openvino", precision="bf16")
    assert half.ran.backend == "openvino" and half.ran.precision == "bf16"
    assert 1e-4 < (half.images - ran.images).abs().max() and psnr(half.images, ran.images) >= BF16_DB


def test_engine_tiles_on_openvino_are_seam_free(compact):
    x = photo("coffee", (96, 120))
    whole = upscaled(compact, x, backend="torch", tile_size=512)
    ran = run_engine(compact, x, backend="openvino", tile_size=40)
    assert ran.ran.backend == "openvino" and ran.ran.tiles > 4
    assert (ran.images - whole).abs().max() <= TOLERANCE


def test_cancel_and_progress_within_one_tile_on_openvino():
    model = build(rrdbnet_state(num_feat=16, num_block=6))
    model.plan = RRDBNetOpenVINOPlan(tail_window=8)
    x = photo("astronaut", (64, 64))
    seen = []
    run_engine(model, x, progress=lambda done, total: seen.append(done), progress_interval=0.0)
    inside = [v for v in seen if 0 < v < 1]
    assert len(inside) >= 10 and inside == sorted(inside)  # 6 RRDBs and 64 tail windows in the one tile

    class Stop(Exception):
        pass

    calls = []

    def cancel_after_three():
        calls.append(1)
        if len(calls) > 3:
            raise Stop

    with pytest.raises(Stop):
        run_engine(model, x, check_cancel=cancel_after_three)
    assert len(calls) == 4  # stopped at the check before the third RRDB, not at the tile's end


def test_auto_candidates_include_the_whole_map_torch_forward_and_every_backend(compact):
    found = probes.candidates("SRVGGNetCompact", compact.network, 512, [torch.float32, torch.bfloat16], lambda n, d: True)
    assert {("torch-whole", torch.float32), ("torch", torch.float32), ("ncnn", torch.float32), ("openvino", torch.float32),
            ("torch-whole", torch.bfloat16), ("openvino", torch.bfloat16)} <= set(found)
    assert ("ncnn", torch.bfloat16) not in found  # ncnn is fp32 only


def test_auto_scores_a_candidate_by_its_weighted_probes():
    import time

    def taking(seconds):
        return lambda: time.sleep(seconds)

    found = {("torch-whole", torch.float32): [probes.Probe(taking(0.002), weight=20), probes.Probe(taking(0.001))],
             ("openvino", torch.float32): [probes.Probe(taking(0.02))]}
    assert backends._ranked(found)[0][0] == "openvino"  # 0.02 s against 20 x 0.002 + 0.001


def test_a_compiling_probe_counts_its_compile_once_and_grows_only_its_compute():
    """A stage's first call compiles (OpenVINO): its second call is its compute. The estimate is
    weight x (compile + compute x scale): the compile is not grown with the map, nor is a piece's
    compute left at the probe's small size."""
    import time

    calls = []

    def compiling():  # 0.06 s the first time, 0.01 s after
        calls.append(1)
        time.sleep(0.06 if len(calls) == 1 else 0.01)

    ov = probes.Probe(compiling, weight=2, scale=4, compiles=True)
    plain = probes.Probe(lambda: time.sleep(0.02), weight=2, scale=4)
    seconds = backends._seconds({("openvino", torch.float32): [ov], ("torch", torch.float32): [plain]})
    assert len(calls) == 2
    assert seconds[("openvino", torch.float32)] == pytest.approx(2 * (0.05 + 0.01 * 4), abs=0.03)  # 0.18 s
    assert seconds[("torch", torch.float32)] == pytest.approx(2 * 0.02 * 4, abs=0.03)  # 0.16 s
    # timed as one first call and grown whole, the compiling piece would have scored 2 x 0.06 x 4 = 0.48 s


def test_auto_runs_what_it_measured_and_reports_it(compact, tmp_path, monkeypatch):
    monkeypatch.setenv(backends.CACHE_DIR_VARIABLE, str(tmp_path))
    monkeypatch.delenv(backends.AUTO_BF16_VARIABLE)
    x = photo("astronaut", (72, 80))
    ran = run_engine(compact, x).ran
    assert ran.backend in backends.RUNS and ran.precision in ("fp32", "bf16")
    (choice,) = json.loads((tmp_path / "cpu_backends.json").read_text()).values()
    assert choice == f"{ran.backend}/{ran.precision}"
    pinned = upscaled(compact, x, backend="torch", precision="fp32")
    result = upscaled(compact, x)
    assert psnr(result, pinned) >= BF16_DB if ran.precision == "bf16" else (result - pinned).abs().max() <= TOLERANCE


def test_auto_precision_stays_fp32_when_bf16_loses_fidelity(compact, tmp_path, monkeypatch):
    """The bf16 fidelity check is real: with a bar no bf16 run can pass, auto keeps fp32."""
    monkeypatch.setenv(backends.CACHE_DIR_VARIABLE, str(tmp_path))
    monkeypatch.delenv(backends.AUTO_BF16_VARIABLE)
    monkeypatch.setattr(probes, "FIDELITY_DB", 200.0)
    monkeypatch.setattr(backends, "_measured", {})
    assert run_engine(compact, photo("astronaut", (40, 48))).ran.precision == "fp32"


def test_native_bf16_is_read_from_the_cpu_flags():
    flags = backends.cpu_flags()
    assert backends.cpu_runs_bf16() == bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


def test_an_explicit_precision_is_never_changed_by_auto(compact, monkeypatch):
    monkeypatch.delenv(backends.AUTO_BF16_VARIABLE)
    assert run_engine(compact, photo("astronaut", (40, 48)), precision="fp32").ran.precision == "fp32"


WITHOUT_OPENVINO = """
import sys, json
sys.modules["openvino"] = None  # as if not installed
import torch
from realesrgan_tiled.engine import upscale, Choices
from realesrgan_tiled.engine.health import HEALTH
from realesrgan_tiled.loading import load_model
from realesrgan_tiled.loading.bundled import bundled_model_path
model = load_model(bundled_model_path("realesr-animevideov3-x4"))
ran = upscale(torch.rand(1, 40, 48, 3), model, Choices()).ran
pinned = upscale(torch.rand(1, 40, 48, 3), model, Choices(backend="openvino")).ran
print(json.dumps({"auto": ran.backend, "pinned": pinned.backend, "found": HEALTH.report()["cpu_backends_found"]}))
"""


def test_the_product_works_without_openvino_and_says_so():
    done = subprocess.run([sys.executable, "-c", WITHOUT_OPENVINO], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["auto"] != "openvino" and out["pinned"] == "torch"
    assert out["found"] == {"torch": True, "ncnn": True, "openvino": False}
    assert "realesrgan_tiled[openvino]" in done.stderr  # the warning says how to get it


MEMORY_PROBE = """
import json, sys, torch
from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.engine import call_model
from realesrgan_tiled.engine.memory import model_cost
from realesrgan_tiled.runtimes import backend
from realesrgan_tiled.loading import load_model
torch.set_num_threads(2)
name, side, precision = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
model = load_model(bundled_model_path(name))
x = torch.rand(1, 3, side, side)
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))
with torch.inference_mode(), backend.using("openvino"), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
    estimate = model_cost(model, torch.device("cpu"), dtype, call_model).bytes_for(side * side)
    call_model(model, x[..., :32, :32])  # loads OpenVINO's code (a 32 px shape compiled: the estimate's fixed part)
    base = rss("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # restart the high-water mark here
    call_model(model, x)
    peak = rss("VmHWM:") - base
print(json.dumps({"estimate": estimate, "peak": peak}))
"""


@pytest.mark.parametrize("name,side,precision", [pytest.param("realesr-animevideov3-x4", 400, "fp32", marks=pytest.mark.slow),
                                                 ("realesr-animevideov3-x4", 400, "bf16"), ("RealESRGAN_x4plus_anime_6B", 200, "fp32")])
def test_the_memory_estimate_covers_openvino_runs(name, side, precision):
    """Measured as the process's resident high-water mark during the run (OpenVINO's memory is
    not torch's, so the engine's allocation tracker cannot see it)."""
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, name, str(side), precision], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["peak"] <= figures["estimate"] <= 4 * figures["peak"] + (64 << 20), figures
