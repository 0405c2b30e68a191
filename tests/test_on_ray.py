"""``upscale … --ray`` and ``on_ray.Upscaler`` on a real local Ray cluster (2 CPUs, one for the
whole module: starting Ray costs seconds), against the local CLI and the engine as oracles."""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from realesrgan_tiled.cli import main
from realesrgan_tiled.engine import Choices, Host, upscale
from realesrgan_tiled.loading import load_model

from .conftest import photo

ray = pytest.importorskip("ray", reason="the ray extra is not installed", exc_type=ImportError)
pytest.importorskip("ray.data", reason="Ray Data does not import here (the WebUI pins: numpy 1.26 under pandas 3)", exc_type=ImportError)

MODEL = "realesr-animevideov3-x2"
FLAGS = ["--model", MODEL, "--backend", "ncnn", "--quiet"]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


@pytest.fixture(scope="module")
def cluster():
    from realesrgan_tiled.on_ray.cluster import Cluster

    with Cluster("local", num_cpus=2) as started:  # the CLI below finds it running and uses it
        yield started


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Five small real photos, a truncated PNG and a text file named like a JPEG."""
    folder = tmp_path_factory.mktemp("in")
    for name in PHOTOS:
        pixels = photo(name, (40, 56))[0].mul(255).round().byte().numpy()
        Image.fromarray(pixels).save(folder / f"{name}.png")
    whole = (folder / "coffee.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.jpg").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def local_run(inputs, tmp_path_factory):
    """The oracle: the same command without --ray (its exit status, files and error lines)."""
    out = tmp_path_factory.mktemp("local")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["upscale", str(inputs), "-o", str(out), *FLAGS])
    return code, out, _errors(err.getvalue())


def _errors(err: str) -> set[str]:
    return {line for line in err.splitlines() if line.startswith("error:")}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _manifest(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "_manifest.jsonl").read_text().splitlines()]
    return {Path(row["input"]).name: row for row in rows}


def test_ray_writes_what_the_local_cli_writes_and_bad_files_are_error_rows(cluster, inputs, local_run, tmp_path, capsys):
    local_code, local_out, local_errors = local_run
    code = main(["upscale", str(inputs), "-o", str(tmp_path), "--ray", *FLAGS])
    assert local_code == 2 and code == 2
    assert _errors(capsys.readouterr().err) == local_errors and len(local_errors) == 2  # the same one-line messages
    for name in PHOTOS:
        ours, theirs = _pixels(tmp_path / f"{name}.png"), _pixels(local_out / f"{name}.png")
        assert ours.shape == theirs.shape == (80, 112, 3)
        assert np.array_equal(ours, theirs), name
    rows = _manifest(tmp_path)
    assert len(rows) == len(PHOTOS) + 2  # one row per input
    assert {n for n, r in rows.items() if r["status"] == "failed"} == {"cut.png", "notes.jpg"}
    assert all(r["status"] == "done" and (r["width"], r["height"]) == (112, 80) and not r["error"]
               for n, r in rows.items() if n not in ("cut.png", "notes.jpg"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{n}.png" for n in PHOTOS] + ["_manifest.jsonl"])


def test_resume_skips_complete_outputs_and_redoes_missing_or_broken_ones(cluster, inputs, tmp_path):
    assert main(["upscale", str(inputs), "-o", str(tmp_path), "--ray", *FLAGS]) == 2
    first = {n: (tmp_path / f"{n}.png").stat().st_mtime_ns for n in PHOTOS}
    good = (tmp_path / "chelsea.png").read_bytes()
    (tmp_path / "astronaut.png").unlink()
    (tmp_path / "chelsea.png").write_bytes(good[: len(good) // 2])  # a file that is not a whole PNG is not done
    assert main(["upscale", str(inputs), "-o", str(tmp_path), "--ray", *FLAGS]) == 2  # the bad inputs are tried again
    rows = _manifest(tmp_path)
    assert {n for n, r in rows.items() if r["status"] == "done"} == {"astronaut.png", "chelsea.png"}
    assert {n for n, r in rows.items() if r["status"] == "skipped"} == {"coffee.png", "rocket.png", "camera.png"}
    assert all((r["width"], r["height"]) == (112, 80) for r in rows.values() if r["status"] != "failed")
    assert (tmp_path / "chelsea.png").read_bytes() == good
    for name in ("coffee", "rocket", "camera"):
        assert (tmp_path / f"{name}.png").stat().st_mtime_ns == first[name]
    assert main(["upscale", str(inputs), "-o", str(tmp_path), "--overwrite", "--ray", *FLAGS]) == 2
    assert all(r["status"] in ("done", "failed") for r in _manifest(tmp_path).values())


def test_a_file_uri_output_gets_the_same_files(cluster, inputs, local_run, tmp_path):
    photos = [str(inputs / f"{n}.png") for n in PHOTOS[:2]]
    assert main(["upscale", *photos, "-o", tmp_path.as_uri() + "/out", "--ray", *FLAGS]) == 0
    for name in PHOTOS[:2]:
        assert np.array_equal(_pixels(tmp_path / "out" / f"{name}.png"), _pixels(local_run[1] / f"{name}.png"))


def test_two_actors_on_two_cpus_leave_room_for_the_read_tasks(cluster):
    """The hang Ray Data has when the actors book every CPU: ours book 0.9 each."""
    from realesrgan_tiled.on_ray.cluster import READ_CPUS, size_pool

    pool = size_pool(ray.cluster_resources(), None, None)
    assert pool.size == 2 and pool.threads == 1
    assert ray.cluster_resources()["CPU"] - pool.size * pool.num_cpus >= READ_CPUS
    with pytest.raises(Exception, match="--ray-cpus 4: the cluster has only 2 CPUs"):
        size_pool(ray.cluster_resources(), None, 4)


def test_upscaler_in_a_users_pipeline_equals_the_engine(cluster, animevideov3_path):
    """The documented call: arrays in, uint8 arrays out, the model loaded once per actor."""
    from realesrgan_tiled.on_ray import Upscaler

    images = [photo(name, (32, 40))[0].mul(255).round().byte().numpy() for name in PHOTOS[:3]]
    choices = Choices(backend="ncnn", tile_size=24)
    ds = ray.data.from_items([{"id": i, "image": image} for i, image in enumerate(images)])
    ds = ds.map_batches(Upscaler, fn_constructor_kwargs={"model": str(animevideov3_path), "choices": choices},
                        batch_size=2, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.9)
    got = {row["id"]: row["image"] for row in ds.iter_rows()}
    model = load_model(animevideov3_path)
    for i, image in enumerate(images):
        pixels = torch.from_numpy(image).float().div(255).unsqueeze(0)
        oracle = upscale(pixels, model, choices, Host(output_dtype=torch.uint8)).images[0].numpy()
        assert got[i].shape == (128, 160, 3) and np.array_equal(got[i], oracle)


def test_flags_that_need_ray_say_so(tmp_path, capsys):
    assert main(["upscale", str(tmp_path), "-o", str(tmp_path / "o"), "--ray-cpus", "2"]) == 2
    assert "--ray-cpus needs --ray" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_the_hosts_installer_never_installs_ray():
    """ComfyUI-Manager and the WebUI run install.py over requirements.txt: Ray is in neither."""
    import realesrgan_tiled.install as install

    assert "ray" not in install.OPTIONAL_EXTRAS
    assert not any(name.lower().startswith("ray") for name, _, _ in install.read_requirements())


def test_a_video_split_over_two_actors_equals_the_local_run_frame_for_frame(cluster, tmp_path, capsys):
    """Four keyframe segments of a lossless clip over 2 actors, joined by remux with the audio,
    against the local ``video`` command (ffv1: pixel for pixel); a second, non-video input is
    an error line while the video is still written."""
    pytest.importorskip("av")
    from .test_video import make_clip, read

    src = make_clip(tmp_path / "clip.mkv", n=12, codec="ffv1", pix_fmt="bgr0", gop=3, audio="pcm_s16le", photo="chelsea")
    flags = ["--codec", "ffv1", "--segment-frames", "3", "--model", MODEL, "--backend", "ncnn", "--device", "cpu"]
    assert main(["video", str(src), "-o", str(tmp_path / "local.mkv"), *flags, "--quiet"]) == 0
    (tmp_path / "bad.mp4").write_text("not a video")
    code = main(["video", str(src), str(tmp_path / "bad.mp4"), "-o", str(tmp_path / "ray"), *flags, "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and "2 actors" in err, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        line for line in _local_errors(tmp_path / "bad.mp4", flags) if line.startswith("error:")]
    local, ours = read(tmp_path / "local.mkv"), read(tmp_path / "ray" / "clip.mkv")
    assert ours["pts"] == local["pts"] and ours["audio"] == local["audio"] and len(ours["pixels"]) == 12
    assert all(np.array_equal(a, b) for a, b in zip(ours["pixels"], local["pixels"]))
    assert not (tmp_path / "ray" / "clip.mkv.parts").exists()


def _local_errors(path: Path, flags: list[str]) -> list[str]:
    with contextlib.redirect_stderr(io.StringIO()) as err:
        main(["video", str(path), "-o", str(path.with_name("local_bad.mp4")), *flags, "--quiet"])
    return err.getvalue().splitlines()


def test_an_actor_killed_mid_job_still_gives_every_output_exactly_once(cluster, tmp_path):
    """SIGKILL one actor process once the first PNG is written: Ray restarts it and retries its
    batch, and every input ends with one complete output, one row, and no .part file."""
    import threading

    import psutil

    from realesrgan_tiled.on_ray.files import upscale_files

    src = tmp_path / "in"
    src.mkdir()
    for i in range(16):
        Image.fromarray(photo(PHOTOS[i % 5], (40, 56))[0].mul(255).round().byte().numpy()).save(src / f"p{i:02d}.png")
    out, killed = tmp_path / "out", []

    def kill_one_actor():
        while not killed:
            if any(out.glob("p*.png")):
                for proc in psutil.process_iter(["cmdline"]):
                    if "MapWorker(MapBatches(Upscaler))" in " ".join(proc.info["cmdline"] or []):
                        proc.kill()
                        killed.append(proc.pid)
                        return
            threading.Event().wait(0.02)

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    summary = upscale_files(sorted(src.iterdir()), str(out), MODEL, Choices(backend="ncnn"), cluster, "cpu")
    killed.append(None)  # stops the killer if it found nothing
    assert killed[0] is not None, "no actor process was found to kill"
    assert [r["status"] for r in summary.rows] == ["done"] * 16
    assert sorted(p.name for p in out.iterdir()) == sorted([f"p{i:02d}.png" for i in range(16)] + ["_manifest.jsonl"])
    assert all(np.asarray(Image.open(p)).shape == (80, 112, 3) for p in out.glob("p*.png"))


@pytest.mark.slow
def test_the_same_command_runs_on_a_two_node_cluster(inputs, local_run, tmp_path, monkeypatch):
    """``--ray ADDRESS`` against two real Ray nodes of 1 CPU each (``cluster_utils.Cluster``): one
    actor lands on each, the reads still get CPU, and the files equal the local CLI's."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rtray-")  # not /tmp/ray; short, for Ray's socket paths
    monkeypatch.setenv("RAY_TMPDIR", temp)
    two = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        two.add_node(num_cpus=1)
        two.wait_for_nodes()
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        run = subprocess.run([sys.executable, "-m", "realesrgan_tiled", "upscale", str(inputs), "-o", str(tmp_path),
                              "--ray", two.address, *FLAGS[:-1]], capture_output=True, text=True, env=env, timeout=300)
    finally:
        two.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert run.returncode == 2 and "on 2 actors" in run.stderr, run.stderr
    for name in PHOTOS:
        assert np.array_equal(_pixels(tmp_path / f"{name}.png"), _pixels(local_run[1] / f"{name}.png"))
