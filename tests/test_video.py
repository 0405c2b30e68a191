"""The ``video`` command on real encodes: short clips made here from real photos with PyAV (an
audio track beside them), upscaled by the bundled animevideov3-x2 on the CPU, and the results
opened again with PyAV. No mocks; the resume test kills a real subprocess."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from realesrgan_tiled.cli import main  # noqa: E402
from realesrgan_tiled.engine import Choices, Host, upscale  # noqa: E402
from realesrgan_tiled.loading import load_model  # noqa: E402
from realesrgan_tiled.loading.bundled import model_path  # noqa: E402
from realesrgan_tiled.video.segments import Segment, plan_segments  # noqa: E402

MODEL = ["--model", "realesr-animevideov3-x2", "--device", "cpu", "--backend", "ncnn", "--quiet"]


def frames_of(photo: str, n: int, h: int, w: int) -> list[np.ndarray]:
    """``n`` frames panning across a real photo."""
    import skimage.data

    image = getattr(skimage.data, photo)()[..., :3]
    step = max(1, (image.shape[1] // 3 - w) // max(n, 1))
    small = image[::3, ::3]
    return [np.ascontiguousarray(small[10:10 + h, 10 + i * step:10 + i * step + w]) for i in range(n)]


def make_clip(path: Path, n: int = 16, size: tuple[int, int] = (48, 64), codec: str = "libx264", pix_fmt: str = "yuv420p",
              gop: int = 4, rate: int = 30, audio: str | None = "aac", pts: list[int] | None = None, rotation: int | None = None,
              photo: str = "astronaut", title: str = "a clip", sample_aspect: Fraction | None = None) -> Path:
    h, w = size
    out = av.open(str(path), "w")
    options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"} if codec == "libx264" else {"g": str(gop)}
    video = out.add_stream(codec, rate=rate, options=options)
    video.width, video.height, video.pix_fmt = w, h, pix_fmt
    rgb = av.VideoFormat(pix_fmt).is_rgb
    ctx = video.codec_context
    ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range = 1, 1, 0 if rgb else 1, 2 if rgb else 1
    if rotation is not None:
        video.set_display_rotation(rotation)
    if sample_aspect is not None:
        ctx.sample_aspect_ratio = sample_aspect
    out.metadata["title"] = title
    sound = out.add_stream(audio, rate=48000, layout="mono") if audio else None
    deep = av.VideoFormat(pix_fmt).components[0].bits > 8
    for i, array in enumerate(frames_of(photo, n, h, w)):
        frame = av.VideoFrame.from_ndarray(array.astype(np.uint16) * 257 if deep else array, format="rgb48le" if deep else "rgb24")
        if not rgb:
            frame = frame.reformat(format=pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")
        frame.pts = i if pts is None else pts[i]
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    if sound:
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(48000 * n // rate) / 48000)).astype(np.float32)
        size_ = sound.codec_context.frame_size or 1024
        for k in range(0, len(samples), size_):
            frame = av.AudioFrame.from_ndarray(samples[None, k:k + size_].copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48000, k
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    out.close()
    return path


def read(path: Path, rgb: str = "rgb24") -> dict:
    """Everything the tests compare, read back with PyAV."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        packets = [(p.pts, p.dts) for p in c.demux(v) if p.size]
        c.seek(0)
        frames = list(c.decode(v))
        audio = []
        if c.streams.audio:
            c.seek(0)
            audio = [(p.pts, p.duration) for p in c.demux(c.streams.audio[0]) if p.size]
        first = frames[0]
        return {"tb": Fraction(v.time_base), "rate": v.average_rate, "pts": [f.pts for f in frames],
                "times": [f.pts * Fraction(v.time_base) for f in frames], "packets": packets,
                "pixels": [f.to_ndarray(format=rgb) for f in frames], "size": (first.height, first.width),
                "pix_fmt": first.format.name, "rotation": first.rotation, "metadata": dict(c.metadata),
                "sample_aspect": v.sample_aspect_ratio or v.codec_context.sample_aspect_ratio,
                "colour": (first.color_primaries, first.color_trc, first.colorspace, first.color_range),
                "audio": audio, "audio_codec": c.streams.audio[0].codec_context.name if c.streams.audio else None}


def video(*args, capsys=None) -> tuple[int, str]:
    rc = main(["video", *map(str, args), *MODEL])
    return rc, capsys.readouterr().err if capsys else ""


def dts_rise_and_precede_pts(packets) -> bool:
    known = [(p, d) for p, d in packets if d is not None]
    return all(d <= p for p, d in known) and all(a[1] < b[1] for a, b in zip(known, known[1:]))


def test_frames_timestamps_audio_rotation_and_colour_survive(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mp4", n=16, rotation=90)
    rc, err = video(src, "-o", tmp_path / "out.mp4", "--segment-frames", "4", capsys=capsys)
    assert rc == 0, err
    a, b = read(src), read(tmp_path / "out.mp4")
    assert len(b["pts"]) == 16 and b["times"] == a["times"] and b["tb"] == a["tb"] and b["rate"] == a["rate"] == 30
    assert b["size"] == (96, 128) and b["pix_fmt"] == "yuv420p"
    assert b["audio"] == a["audio"] and b["audio_codec"] == "aac" and len(b["audio"]) >= 10  # copied packet for packet
    assert b["rotation"] == 90 and b["colour"] == a["colour"] == (1, 1, 1, 1)
    assert b["metadata"]["title"] == "a clip"
    assert dts_rise_and_precede_pts(b["packets"])  # B-frames across four segment joins
    assert not (tmp_path / "out.mp4.parts").exists()
    rc, err = video(src, "-o", tmp_path / "out.mkv", "--segment-frames", "4", capsys=capsys)  # MP4 -> Matroska's milliseconds
    assert rc == 0, err
    assert max(abs(x - y) for x, y in zip(read(tmp_path / "out.mkv")["times"], a["times"])) <= Fraction(1, 2000)
    # the frames are the photo upscaled, not noise: close to a plain resize of the source
    up = torch.nn.functional.interpolate(torch.from_numpy(a["pixels"][5]).permute(2, 0, 1)[None].float(), scale_factor=2,
                                         mode="bicubic")[0].permute(1, 2, 0).numpy()
    assert np.abs(up - b["pixels"][5]).mean() < 12


def test_lossless_run_equals_the_image_path_frame_for_frame(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mkv", n=6, codec="ffv1", pix_fmt="bgr0", gop=1, audio="pcm_s16le", photo="chelsea")
    rc, err = video(src, "-o", tmp_path / "out.mkv", "--codec", "ffv1", "--segment-frames", "2", capsys=capsys)
    assert rc == 0, err
    a, b = read(src), read(tmp_path / "out.mkv")
    assert b["pix_fmt"] == "bgr0" and b["pts"] == a["pts"] and len(b["audio"]) == len(a["audio"])
    model = load_model(model_path("realesr-animevideov3-x2"))
    for frame, got in zip(a["pixels"], b["pixels"]):
        image = torch.from_numpy(frame).float().div(255)[None]
        want = upscale(image, model, Choices(backend="ncnn"), Host(device="cpu")).images[0]
        want = want.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        assert np.array_equal(want, got)


def test_matroska_to_mp4_keeps_every_timestamp(tmp_path, capsys):
    """Matroska counts in 1/1000 s; the MP4 muxer re-times its stream (1/16000) once the first
    packet is out, and the frames after that must still be on the source's clock."""
    src = make_clip(tmp_path / "in.mkv", n=40, gop=20, audio=None)
    for crf in ("0", "18"):
        rc, err = video(src, "-o", tmp_path / "out.mp4", "--overwrite", "--crf", crf, capsys=capsys)
        assert rc == 0, err
        assert read(tmp_path / "out.mp4")["times"] == read(src)["times"]


def test_variable_frame_rate_keeps_every_timestamp(tmp_path, capsys):
    pts = [0, 1, 3, 4, 7, 8, 9, 12, 14, 15, 16, 19]
    src = make_clip(tmp_path / "vfr.mkv", n=len(pts), pts=pts, gop=3, audio=None)
    for out in ("out.mkv", "out.mp4"):
        rc, err = video(src, "-o", tmp_path / out, "--segment-frames", "3", capsys=capsys)
        assert rc == 0, err
        assert read(tmp_path / out)["times"] == read(src)["times"], out
        assert dts_rise_and_precede_pts(read(tmp_path / out)["packets"])


def _run(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "realesrgan_tiled", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _interrupt_after(proc, parts: Path, segment: int, sig) -> list[str]:
    while not (parts / f"segment-{segment:05d}.mp4").exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return sorted(p.name for p in parts.iterdir())


def test_resume_after_ctrl_c_and_a_kill_equals_an_uninterrupted_run(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mp4", n=24, size=(32, 48), gop=3)
    out, parts = tmp_path / "out.mp4", tmp_path / "out.mp4.parts"
    cmd = ["video", str(src), "-o", str(out), "--segment-frames", "3", *MODEL]
    last = "segment-00007.mp4"
    proc = _run(cmd)
    left = _interrupt_after(proc, parts, 0, signal.SIGINT)
    assert proc.returncode == 130 and "--resume" in proc.stderr.read()
    assert not out.exists() and "segment-00000.mp4" in left and last not in left
    assert not any(name.endswith(".tmp") for name in left)  # Ctrl-C deletes the half-written segment

    rc, err = main(cmd), capsys.readouterr().err
    assert rc == 2 and "--resume" in err and len(err.strip().splitlines()) == 1

    proc = _run([*cmd, "--resume"])
    done_before = len([n for n in left if n.startswith("segment-")])
    left = _interrupt_after(proc, parts, done_before + 1, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert "plan.json" in left and last not in left

    assert main([*cmd, "--resume"]) == 0, capsys.readouterr().err
    assert not parts.exists()
    assert main(["video", str(src), "-o", str(tmp_path / "whole.mp4"), "--segment-frames", "3", *MODEL]) == 0
    resumed, whole = read(out), read(tmp_path / "whole.mp4")
    assert len(resumed["pts"]) == 24 and resumed["pts"] == whole["pts"] and resumed["packets"] == whole["packets"]
    assert max(np.abs(x.astype(int) - y).max() for x, y in zip(resumed["pixels"], whole["pixels"])) <= 2
    assert resumed["audio"] == whole["audio"] == read(src)["audio"]
    assert dts_rise_and_precede_pts(resumed["packets"])


def test_existing_output_and_unfinished_parts_need_a_flag(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mp4", n=4, audio=None)
    (tmp_path / "out.mp4").write_bytes(b"old")
    rc, err = video(src, "-o", tmp_path / "out.mp4", capsys=capsys)
    assert rc == 2 and "--overwrite" in err and (tmp_path / "out.mp4").read_bytes() == b"old"
    (tmp_path / "out.mp4.parts").mkdir()
    rc, err = video(src, "-o", tmp_path / "out.mp4", "--overwrite", "--resume", "--segment-frames", "2", capsys=capsys)
    assert rc == 0, err  # a parts folder with no plan is started over under --overwrite
    assert len(read(tmp_path / "out.mp4")["pts"]) == 4
    (tmp_path / "other.mp4.parts").mkdir()
    (tmp_path / "other.mp4.parts" / "plan.json").write_text(json.dumps({"source": "elsewhere"}))
    rc, err = video(src, "-o", tmp_path / "other.mp4", "--resume", capsys=capsys)
    assert rc == 2 and "other settings" in err and not (tmp_path / "other.mp4").exists()


@pytest.mark.parametrize("kind", ["truncated mp4", "truncated mkv", "not a video", "an image", "audio only"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, kind):
    bad = tmp_path / {"truncated mkv": "bad.mkv", "an image": "bad.png", "audio only": "bad.wav"}.get(kind, "bad.mp4")
    if kind.startswith("truncated"):
        whole = make_clip(tmp_path / f"whole{bad.suffix}", n=16).read_bytes()
        bad.write_bytes(whole[:len(whole) // 2])
    elif kind == "not a video":
        bad.write_text("just some text\n")
    elif kind == "an image":
        from PIL import Image

        Image.fromarray(frames_of("chelsea", 1, 48, 64)[0]).save(bad)
    else:
        out = av.open(str(bad), "w")
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.close()
    rc, err = video(bad, "-o", tmp_path / "out.mp4", capsys=capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], err
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.mp4.parts").exists()


def test_two_inputs_one_bad_the_good_one_is_written(tmp_path, capsys):
    good = make_clip(tmp_path / "good.mov", n=6)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(good.read_bytes()[:3000])
    rc, err = video(bad, good, "-o", tmp_path / "out", capsys=capsys)
    assert rc == 2 and err.count("error:") == 1 and "bad.mp4" in err
    assert len(read(tmp_path / "out" / "good.mov")["pts"]) == 6 and not (tmp_path / "out" / "bad.mp4").exists()


def test_odd_sizes(tmp_path, capsys):
    """Odd sides, and an anamorphic source's display shape: kept through x2 and an exact size."""
    src = make_clip(tmp_path / "odd.mkv", n=4, size=(47, 63), pix_fmt="yuv444p", audio=None, sample_aspect=Fraction(8, 9))
    rc, err = video(src, "-o", tmp_path / "x2.mkv", capsys=capsys)
    assert rc == 0, err
    x2 = read(tmp_path / "x2.mkv")
    assert x2["size"] == (94, 126) and x2["pix_fmt"] == "yuv444p" and x2["sample_aspect"] == Fraction(8, 9)
    rc, err = video(src, "-o", tmp_path / "odd420.mp4", "--width", "95", "--height", "47", "--pix-fmt", "yuv420p", capsys=capsys)
    assert rc == 0 and "cropped to 94x46" in err
    got = read(tmp_path / "odd420.mp4")
    assert got["size"] == (46, 94)
    assert abs(94 * got["sample_aspect"] / 46 - 63 * Fraction(8, 9) / 47) < 0.01  # the same display aspect


def test_ten_bit_stays_ten_bit(tmp_path, capsys):
    src = make_clip(tmp_path / "deep.mkv", n=4, pix_fmt="yuv420p10le", audio=None)
    rc, err = video(src, "-o", tmp_path / "out.mkv", capsys=capsys)
    assert rc == 0, err
    got = read(tmp_path / "out.mkv", rgb="rgb48le")
    assert got["pix_fmt"] == "yuv420p10le"
    levels = np.unique(got["pixels"][0])
    assert np.mean(levels % 257 != 0) > 0.5  # values between the 8-bit steps: more than 8 bits came through


def test_trim_moves_audio_and_chapters_with_the_picture(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mkv", n=30, gop=5)
    rc, err = video(src, "-o", tmp_path / "cut.mkv", "--start", "0.4", "--duration", "0.3", capsys=capsys)
    assert rc == 0, err
    a, b = read(src), read(tmp_path / "cut.mkv")
    assert len(b["pts"]) == 9 and b["times"][0] == a["times"][0] == 0
    audio_times = [p * Fraction(1, 1000) for p, _ in b["audio"]]
    assert 0 <= audio_times[0] < Fraction(25, 1000) and audio_times[-1] < Fraction(3, 10)


def test_webm_reencodes_audio_with_a_note(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mp4", n=4)
    rc, err = video(src, "-o", tmp_path / "out.webm", capsys=capsys)
    assert rc == 0, err
    assert "re-encoded to opus" in err and len(err.strip().splitlines()) == 1
    got = read(tmp_path / "out.webm")
    assert got["audio_codec"] == "opus" and len(got["pts"]) == 4


def test_without_pyav_one_line(tmp_path):
    code = ("import sys; sys.modules['av'] = None; from realesrgan_tiled.cli import main; "
            f"sys.exit(main(['video', {str(tmp_path / 'x.mp4')!r}, '-o', {str(tmp_path / 'y.mp4')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "error: the video command needs PyAV: pip install av"


def test_segments_start_at_keyframes_after_every_n_frames():
    key = np.zeros(20, bool)
    key[[0, 3, 7, 8, 15]] = True
    assert plan_segments(key, 0, 20, 4) == [Segment(0, 0, 7), Segment(1, 7, 8), Segment(2, 15, 5)]
    assert plan_segments(key, 2, 12, 4) == [Segment(0, 2, 5), Segment(1, 7, 5)]  # a --start mid-GOP
    assert plan_segments(np.ones(5, bool), 0, 5, 300) == [Segment(0, 0, 5)]


def test_dts_join_keeps_decode_order_rising_at_a_segment_join():
    """Two B-frame segments whose encoders each start DTS two frames early: the second's first
    DTS step back past the first's last; they move onto the first's unused presentation times."""
    from realesrgan_tiled.media.video_remux import DtsJoin

    join = DtsJoin()
    first = [(0, -2), (3, -1), (1, 0), (2, 1)]  # decode order of pts 0..3 with a reorder delay of 2
    second = [(4, 1), (7, 2), (5, 4), (6, 5)]  # its encoder's DTS start at 4 - 3: behind the first's last (1)
    got = [join.dts(p, d) for p, d in first]
    join.part_ends()
    got += [join.dts(p, d) for p, d in second]
    assert got == [-2, -1, 0, 1, 2, 3, 4, 5]
    assert all(d <= p for (p, _), d in zip(first + second, got))
    assert DtsJoin().dts(5, None) == 5  # Matroska's unset first DTS
    stuck = DtsJoin()
    stuck.dts(10, 10)
    assert stuck.dts(10, 9) is None  # no DTS fits: reported, not written
