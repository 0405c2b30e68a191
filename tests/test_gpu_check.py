"""bench/gpu_check.py must keep running where no GPU is (its --dry-run: every section on the
CPU at toy sizes), so that the one device call a lent task gets does not find it broken."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["environment", "fidelity", "tiled_vs_whole", "auto_tile_and_memory", "throughput", "engine_profile", "layout",
            "against_core", "real_oom", "nan_guard", "cancel_in_a_tile", "syncs_per_tile",
            "video_batch", "overlap", "syncs_per_frame", "device_accumulation", "compiled_network"]


def test_gpu_check_dry_run_passes_every_section(tmp_path):
    out = tmp_path / "report.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    failed = {k: v for k, v in report["sections"].items() if not v.get("passed")}
    assert res.returncode == 0 and report["passed"], f"{failed}\n{res.stderr[-3000:]}"
    assert list(report["sections"]) == SECTIONS
    assert report["sections"]["nan_guard"]["fp32_reruns"] >= 1
    assert report["sections"]["cancel_in_a_tile"]["cancel_checks"] == 4
    assert set(report["sections"]["fidelity"]["models"]) >= {"RealESRGAN_x4plus", "realesr-animevideov3-x4"}
    video = report["sections"]["video_batch"]
    assert video["network_tflops"] > 0 and set(video["sweep_uint8_fps"]) == {"1", "2", "4"}
    assert report["sections"]["overlap"]["same_bytes"]
    assert report["sections"]["device_accumulation"]["tiles"] > 1  # the CPU took the device path, tiled
    for run in report["sections"]["layout"]["runs"].values():  # every layout computes the same network
        assert all(v["psnr_vs_first"] >= 100 for v in run.values()), run
