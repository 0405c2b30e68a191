"""bench/peers.py and bench/peer_child.py (CPU peer engines for the side-by-side table): the parts that can break without
a heavy run. openvino and onnxruntime are optional: where they are not installed (CI's venv)
their peers must be skipped with a note, and their own checks here skip."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from .ncnn_fixtures import one_torch_thread  # noqa: F401  (autouse)

ROOT = Path(__file__).resolve().parents[1]


def _bench_script(name: str):
    spec = importlib.util.spec_from_file_location(f"realesrgan_tiled_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peers():
    return _bench_script("peers")


@pytest.fixture(scope="module")
def peer_child():
    return _bench_script("peer_child")


def tiny_photo(peers, size=32):
    """A real photo (bench.py's), cropped small."""
    return peers.photo(size, size)


@pytest.mark.parametrize("module, peer, pip_name", [("openvino", "openvino", "openvino"),
                                                    ("onnxruntime", "onnxruntime", "onnxruntime"),
                                                    ("ncnn", "ncnn-winograd", "ncnn")])
def test_a_peer_whose_package_is_missing_is_skipped_with_the_pip_package(peers, monkeypatch, module, peer, pip_name):
    monkeypatch.setitem(sys.modules, module, None)  # what find_spec and import see when it is not installed
    rows = peers.peer_rows("realesr-animevideov3-x4", np.zeros((8, 8, 3), np.uint8), threads=1, repeats=1, peers=[peer])
    (row,) = rows
    assert row["name"] == peer and row["seconds"] is None and row["max_abs_diff"] is None
    assert row["skipped_reason"].startswith("not installed: pip install") and pip_name in row["skipped_reason"].split()
    assert "skipped" in peers.format_table("m", 8, 8, rows)


def test_unknown_peer_is_an_error(peers):
    with pytest.raises(ValueError, match="no peer named"):
        peers.peer_rows("realesr-animevideov3-x4", np.zeros((8, 8, 3), np.uint8), peers=["tensorrt"])


def test_a_row_over_the_tolerance_does_not_count(peers):
    assert peers.judge(peers._row("x"), 5e-5)["skipped_reason"] is None
    assert "3.00e-03 > 0.0001" in peers.judge(peers._row("x"), 3e-3)["skipped_reason"]
    assert peers.judge(peers._row("x"), float("nan"))["skipped_reason"] is not None


def test_inputs_in_every_layout_become_the_same_nchw(peers, tmp_path):
    from PIL import Image

    hwc = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)
    Image.fromarray(hwc).save(tmp_path / "p.png")
    want = hwc.transpose(2, 0, 1)[None].astype(np.float32) / 255
    for image in (hwc, hwc / 255.0, (hwc / 255.0)[None], want, tmp_path / "p.png", str(tmp_path / "p.png")):
        got = peers.as_nchw(image)
        assert got.dtype == np.float32 and got.shape == (1, 3, 5, 7)
        np.testing.assert_allclose(got, want, atol=1e-7)
    assert peers.photo(48, 32).shape == (1, 3, 32, 48)


def test_blob_names_of_the_bundled_params(peer_child, x4plus_path, animevideov3_path):
    for path in (x4plus_path, animevideov3_path):
        data, output = peer_child.blob_names(path)
        assert data and output and data != output


def check_row(row, threads=1, repeats=2):
    assert row["skipped_reason"] is None, row
    assert row["max_abs_diff"] <= 1e-4
    assert len(row["runs"]) == repeats and row["first_seconds"] == row["seconds"] == row["runs"][0] > 0
    assert row["best_seconds"] == min(row["runs"])
    assert 0 < row["baseline_rss_bytes"] <= row["peak_rss_bytes"] < 2**31  # its own process, not the parent's
    assert f"{threads} threads" in row["detail"]


def test_ncnn_peers_match_the_torch_reference_on_real_weights(peers):
    rows = peers.peer_rows("realesr-animevideov3-x4", tiny_photo(peers), threads=1, repeats=2,
                           peers=["ncnn-winograd", "ncnn-direct"])
    assert [r["name"] for r in rows] == ["ncnn-winograd", "ncnn-direct"]
    for row in rows:
        check_row(row)
    assert "winograd on" in rows[0]["detail"] and "winograd off" in rows[1]["detail"]


@pytest.mark.parametrize("peer, modules", [("openvino", ["openvino"]), ("onnxruntime", ["onnxruntime", "onnx", "onnxscript"])])
def test_converted_peers_match_the_torch_reference_on_real_weights(peers, peer, modules):
    for module in modules:
        pytest.importorskip(module)
    (row,) = peers.peer_rows("realesr-animevideov3-x4", tiny_photo(peers), threads=1, repeats=2, peers=[peer])
    check_row(row)
    if peer == "openvino":
        assert "precision f32" in row["detail"]
