"""Make assets/sample.mp4, the example video workflow's input: 2 s at 24 fps, 192x144, a slow pan
across scikit-image's astronaut photo (a real photo), with a quiet 440 Hz tone as its audio.

    .venv/bin/python scripts/make_sample_video.py
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import skimage.data
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"
FRAMES, RATE, SIZE = 48, 24, (144, 192)  # (height, width)


def frames():
    photo = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((288, 288), Image.LANCZOS))
    h, w = SIZE
    for i in range(FRAMES):
        x = round(i * (photo.shape[1] - w) / (FRAMES - 1))
        yield np.ascontiguousarray(photo[60:60 + h, x:x + w])


def main() -> None:
    with av.open(str(OUT), "w") as out:
        video = out.add_stream("libx264", rate=RATE, options={"crf": "20", "preset": "slow"})
        video.height, video.width = SIZE
        video.pix_fmt = "yuv420p"
        ctx = video.codec_context
        ctx.color_primaries = ctx.color_trc = ctx.colorspace = 1  # BT.709
        ctx.color_range = 1
        sound = out.add_stream("aac", rate=48000, layout="mono")
        for i, array in enumerate(frames()):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p", dst_colorspace="ITU709")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        seconds = FRAMES / RATE
        tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(int(48000 * seconds)) / 48000)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
