"""Which models the WebUI lists, and under which names. Host-neutral: it takes folders and
returns names, so it is tested without a WebUI."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..engine.health import Listed, Refused
from ..errors import ModelLoadError
from ..loading import load_model
from ..loading.bundled import BUNDLED, DEFAULT_MODEL, bundled_model_path, bundled_models_dir

log = logging.getLogger("realesrgan_tiled")

# The name contract: "<file stem> (tiled)" and "<bundled name> (tiled)". The host looks names up
# globally and takes the first match, and its built-in ESRGAN upscaler lists models/ESRGAN by
# bare stem, so the suffix keeps ours distinct.
NAME_SUFFIX = " (tiled)"
# .bin is listed through its .param (an ncnn pair); a lone .bin is not a model we list
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".param")


def upscaler_name(stem: str) -> str:
    return stem + NAME_SUFFIX


def model_files(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Model files under each folder (recursively, like the host's own model search), folder
    by folder in the order given, each folder sorted; a folder listed twice is read once."""
    seen_folders, files = set(), []
    for folder in folders:
        folder = Path(folder)
        key = os.path.realpath(folder)
        if key in seen_folders or not folder.is_dir():
            continue
        seen_folders.add(key)
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [Path(dirpath) / f for f in filenames if f.lower().endswith(MODEL_SUFFIXES)]
        files += sorted(found)
    return files


def native_scale(path: str | os.PathLike) -> int:
    """Load the model (safely) and return its scale; raises what the loader raises."""
    return int(load_model(path).scale)


def discover(folders: Iterable[str | os.PathLike], *, bundled: bool = True,
             scale_of: Callable[[Path], int] = native_scale) -> tuple[list[Listed], list[Refused]]:
    """(listed, refused): the bundled models first, then every file our loader reads, each
    named by the contract with its native scale. A file is refused when the loader cannot read
    it (hostile pickles included: the loader only ever opens them weights-only) or when an
    earlier model already has its name. ``scale_of`` may answer from a cache."""
    listed: list[Listed] = []
    refused: list[Refused] = []
    taken: dict[str, str] = {}
    candidates = []
    if bundled:
        try:
            bundled_models_dir()
            candidates += [(upscaler_name(n), None, n) for n in [DEFAULT_MODEL] + [n for n in BUNDLED if n != DEFAULT_MODEL]]
        except ModelLoadError as e:  # the package is missing: one line, not one per model
            refused.append(Refused("bundled models", one_line(e)))
    candidates += [(upscaler_name(p.stem), p, None) for p in model_files(folders)]
    for name, path, bundled_name in candidates:
        where = f"bundled model {bundled_name}" if path is None else str(path)
        if name in taken:
            refused.append(Refused(where, f"same name as {taken[name]} ({name!r}); rename one of them"))
            continue
        try:
            if path is None:
                path = bundled_model_path(bundled_name)
            scale = scale_of(path)
        except Exception as e:  # the loader's errors name the file; anything else is still one line
            refused.append(Refused(where, one_line(e)))
            continue
        taken[name] = where
        listed.append(Listed(name, str(path), scale))
    for r in refused:
        log.warning("realesrgan_tiled: not listing %s: %s", r.path, r.reason)
    return listed, refused


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
