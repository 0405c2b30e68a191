"""``Upscaler``: the callable class a Ray Data pipeline maps over its batches.

Ray builds one per actor, so the model loads once per actor and stays there for every batch.
It imports nothing of Ray: Ray imports it. Two shapes of batch:

- **arrays**: a column ``image`` of ``[H, W, C]`` uint8 (or float 0..1) pictures in, the same
  column upscaled (uint8) out;
- **files** (``output_dir`` given): the columns ``bytes`` and ``path`` of
  ``ray.data.read_binary_files(..., include_paths=True)`` in. Each file is decoded here, so a bad
  one is an error row and not a failed dataset; its PNG is written by the actor (atomically)
  and only a small manifest row goes back: input, output, width, height, seconds, error.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..engine import Choices, Host, upscale
from ..errors import RealESRGANTiledError
from ..media.images import png_array, read_image, write_png_array

MANIFEST_COLUMNS = ("input", "output", "width", "height", "seconds", "error")


class Upscaler:
    """``ds.map_batches(Upscaler, fn_constructor_kwargs={...}, compute=ActorPoolStrategy(size=N), num_gpus=1)``.

    ``model``: a bundled model name or a model file, or a function of no arguments that returns a
    loaded model (what the CLI passes: its flags, ``--interpolate`` included). ``choices``: the
    engine's ``Choices`` (tile, precision, size, passes, backend). ``device``: ``None``/"auto"
    (the actor's GPU where Ray gave it one), "cpu", "cuda". ``threads``: torch's CPU threads in
    this actor (what Ray's ``num_cpus`` only books). ``names``: output names that differ from
    ``<stem>.png`` (keyed by the input path), as the CLI gives a second ``a.jpg`` beside ``a.png``.
    """

    def __init__(self, model: str | Callable, choices: Choices | None = None, device: str | None = None,
                 output_dir: str | None = None, threads: int | None = None, names: dict[str, str] | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.model = build_model(model)
        self.choices = choices or Choices()
        self.device = device
        self.names = names or {}
        self.output = None if output_dir is None else Output(output_dir)

    def __call__(self, batch: dict) -> dict:
        if self.output is None:
            return {**batch, "image": [self._array(image) for image in batch["image"]]}
        rows = [self._file(str(path), bytes(data)) for path, data in zip(batch["path"], batch["bytes"])]
        return {column: [row[column] for row in rows] for column in MANIFEST_COLUMNS}

    def _array(self, image: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(np.ascontiguousarray(image))
        pixels = pixels.float().div(255) if pixels.dtype == torch.uint8 else pixels.float()
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        result = upscale(pixels.unsqueeze(0), self.model, self.choices, Host(device=self.device, output_dtype=torch.uint8))
        return result.images[0].numpy()

    def _file(self, path: str, data: bytes) -> dict:
        """One input file to one PNG, as the local CLI writes it; a failure is the row's error."""
        start = time.perf_counter()
        target = self.output.join(self.names.get(path) or f"{PurePosixPath(path).stem}.png")
        row = {"input": path, "output": target, "width": 0, "height": 0, "seconds": 0.0, "error": None}
        try:
            image = read_image(Path(path), data)
            result = upscale(image.pixels, self.model, self.choices, Host(device=self.device))
            bit_depth = image.bit_depth
            del image  # the float input, before the PNG's pixels exist
            pixels = png_array(result.images[0], bit_depth)
            del result
            self.output.write(target, pixels)
            row["height"], row["width"] = pixels.shape[:2]
        except (RealESRGANTiledError, OSError) as e:
            row["error"] = str(e) if path in str(e) else f"{path}: {e}"
        row["seconds"] = time.perf_counter() - start
        return row


def build_model(model):
    if callable(model):
        return model()
    from ..loading import load_model
    from ..loading.bundled import model_path

    return load_model(model_path(model))


class Output:
    """The output folder: a local path, or a URI Ray's filesystems (pyarrow) open: ``file://``,
    ``s3://``, ``gs://``. Every file appears under its final name only when complete."""

    def __init__(self, where: str):
        self.where = str(where)
        if "://" in self.where:
            from pyarrow import fs

            self.fs, self.root = fs.FileSystem.from_uri(self.where)
            self.local = Path(self.root) if isinstance(self.fs, fs.LocalFileSystem) else None
        else:
            self.fs, self.root, self.local = None, self.where, Path(self.where)

    def join(self, name: str) -> str:
        return str(self.local / name) if self.local is not None else f"{self.root.rstrip('/')}/{name}"

    def make(self) -> None:
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
        else:
            self.fs.create_dir(self.root, recursive=True)

    def write(self, target: str, pixels: np.ndarray) -> None:
        if self.local is not None:
            write_png_array(Path(target), pixels)  # .part, then rename
            return
        with tempfile.TemporaryDirectory() as tmp:  # encoded here, then one upload: an object appears only when complete
            local = Path(tmp) / "out.png"
            write_png_array(local, pixels)
            self.put(target, local.read_bytes())

    def put(self, target: str, data: bytes) -> None:
        """Small files (the manifest): whole or not at all."""
        if self.local is not None:
            tmp = Path(target + ".part")
            tmp.write_bytes(data)
            tmp.replace(target)
        else:
            with self.fs.open_output_stream(target) as f:
                f.write(data)

    def complete_png_size(self, target: str) -> tuple[int, int] | None:
        """(width, height) if the file is there, starts as a PNG and ends with its IEND chunk:
        a finished output (a killed run leaves only ``.part`` files, which are written over)."""
        iend = b"\x00\x00\x00\x00IEND\xaeB`\x82"
        try:
            if self.local is not None:
                with open(target, "rb") as f:
                    head = f.read(24)
                    size = f.seek(0, 2)
                    f.seek(max(size - 12, 0))
                    tail = f.read(12)
            else:
                with self.fs.open_input_file(target) as f:
                    size = f.size()
                    head, tail = f.read_at(24, 0), f.read_at(12, max(size - 12, 0))
        except OSError:
            return None
        if size < 57 or head[:8] != b"\x89PNG\r\n\x1a\n" or tail != iend:
            return None
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
