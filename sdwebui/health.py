"""What GET /realesrgan-tiled/health reports: the models found and refused, and what happened
since start. Host-neutral counters, updated by the upscaler, read by the route."""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

from .models import Listed, Refused


@dataclass
class Counts:
    runs: int = 0  # model passes that produced the image
    fallbacks: int = 0  # calls where the model could not run: the host resized without it
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
                             "tiles": report.tiles, "tile_size": report.tile_size}

    def fell_back(self, model: str, message: str) -> None:
        with self._lock:
            self.counts.fallbacks += 1
            self.last_error = {"model": model, "time": _now(), "message": message}

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
            }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


HEALTH = Health()
