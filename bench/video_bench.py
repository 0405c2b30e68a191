"""The video pipeline on the CPU: peak RSS against video length, and end-to-end fps against
the engine alone and the encoder alone on the same clip.

    .venv/bin/python bench/video_bench.py                  # 200 vs 2000 frames of 64x48, animevideov3-x2, ncnn
    .venv/bin/python bench/video_bench.py --short 50 --long 500 --size 96x128

Clips are made here from a real photo (scikit-image's astronaut, panned), H.264 with an AAC
track. Peak RSS: each length is upscaled by the CLI in its own fresh process (its
``ru_maxrss``); the goal is long <= 1.1x short. Speed, in this process on the short clip,
each the best of ``--rounds``: the engine alone over decoded frames held in memory (uint8
out, what the pipeline asks), the encoder alone (the same segment writer and settings) over
those upscaled frames, and the whole file to file run (probe, decode, upscale, encode,
concatenate with the audio). The goal is end to end >= 0.8x the slower of the two. Not a
test: figures go into README.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def make_clip(path: Path, frames: int, h: int, w: int) -> Path:
    import av
    import skimage.data

    photo = skimage.data.astronaut()
    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=30, options={"g": "30"})
    video.width, video.height, video.pix_fmt = w, h, "yuv420p"
    audio = out.add_stream("aac", rate=48000, layout="mono")
    span = photo.shape[1] - w
    for i in range(frames):
        x = i % (2 * span)
        x = x if x < span else 2 * span - x  # back and forth
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[100:100 + h, x:x + w]), format="rgb24")
        frame.pts = i
        out.mux(video.encode(frame.reformat(format="yuv420p")))
    out.mux(video.encode(None))
    samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(48000 * frames // 30) / 48000)).astype(np.float32)
    for k in range(0, len(samples), 1024):
        chunk = av.AudioFrame.from_ndarray(samples[None, k:k + 1024].copy(), format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts = 48000, k
        out.mux(audio.encode(chunk))
    out.mux(audio.encode(None))
    out.close()
    return path


def cli_peak_rss(clip: Path, out: Path, model: str, backend: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one fresh CLI process upscaling ``clip``."""
    cmd = [sys.executable, "-m", "realesrgan_tiled", "video", str(clip), "-o", str(out), "--model", model,
           "--device", "cpu", "--backend", backend, "--quiet", "--overwrite"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the CLI failed on {clip}: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def speeds(clip: Path, work: Path, model_name: str, backend: str, rounds: int, codec: str | None) -> dict:
    import av

    from realesrgan_tiled.engine import Choices, Host, upscale_stream
    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import model_path
    from realesrgan_tiled.media.video_encode import PartWriter, choose_encoding
    from realesrgan_tiled.media.video_files import decode_frames, probe
    from realesrgan_tiled.video.pipeline import VideoJob, upscale_video

    model = load_model(model_path(model_name))
    choices = Choices(backend=backend)
    source = probe(clip)
    frames = [array for _, array in decode_frames(source, 0, source.frames, "rgb24")]
    n = len(frames)
    best = {"engine": 0.0, "encoder": 0.0, "end to end": 0.0}
    upscaled: list = []
    for _ in range(rounds):
        start = time.perf_counter()
        upscaled = [t.numpy() for t in upscale_stream(iter(frames), model, choices, Host(device="cpu", output_dtype=torch.uint8))]
        best["engine"] = max(best["engine"], n / (time.perf_counter() - start))

        encoding = choose_encoding(work / "enc.mp4", source, codec, None, None)
        h, w = upscaled[0].shape[:2]
        start = time.perf_counter()
        writer = PartWriter(work / "enc.mp4", encoding, w, h, source.time_base, source.rate)
        for pts, array in zip(source.pts, upscaled):
            writer.write(array, int(pts))
        writer.finish()
        best["encoder"] = max(best["encoder"], n / (time.perf_counter() - start))

        start = time.perf_counter()
        job = VideoJob(clip, work / "e2e.mp4", codec=codec, overwrite=True)
        upscale_video(job, model, choices, Host(device="cpu"), note=lambda line: None)
        best["end to end"] = max(best["end to end"], n / (time.perf_counter() - start))
        with av.open(str(work / "e2e.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == n
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", type=int, default=200)
    parser.add_argument("--long", type=int, default=2000)
    parser.add_argument("--size", default="48x64", help="HxW of the clip (default 48x64)")
    parser.add_argument("--model", default="realesr-animevideov3-x2")
    parser.add_argument("--backend", default="ncnn", choices=("ncnn", "torch"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--codec", help="encoder of the speed rows (default libx264, as the CLI's)")
    parser.add_argument("--no-rss", action="store_true", help="only the speed rows")
    args = parser.parse_args()
    h, w = map(int, args.size.lower().split("x"))
    sys.path.insert(0, str(ROOT.parent))
    from realesrgan_tiled.runtimes.backend import cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lengths = (args.short,) if args.no_rss else (args.short, args.long)
        clips = {n: make_clip(work / f"clip{n}.mp4", n, h, w) for n in lengths}
        rss = {} if args.no_rss else {n: cli_peak_rss(clip, work / f"out{n}.mp4", args.model, args.backend)
                                      for n, clip in clips.items()}
        fps = speeds(clips[args.short], work, args.model, args.backend, args.rounds, args.codec)
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); {args.model}, {args.backend}, {w}x{h} clip, {args.codec or 'libx264'}")
    if rss:
        print(f"{'frames':>8} {'peak RSS MiB':>13} {'CLI wall s':>11} {'CLI fps':>8}")
        for n, (mib, seconds) in rss.items():
            print(f"{n:>8} {mib:>13.1f} {seconds:>11.1f} {n / seconds:>8.1f}")
        ratio = rss[args.long][0] / rss[args.short][0]
        print(f"peak RSS {args.long} / {args.short} frames: {ratio:.3f} (goal <= 1.1)")
    print(f"\n{'on ' + str(args.short) + ' frames':<22} {'fps':>7}")
    for name, value in fps.items():
        print(f"{name:<22} {value:>7.1f}")
    slower = min(fps["engine"], fps["encoder"])
    print(f"end to end / min(engine, encoder): {fps['end to end'] / slower:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
