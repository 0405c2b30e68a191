"""Starting or joining a Ray cluster quietly, and sizing the actor pool so it cannot starve the
read tasks.

The pitfall this is built around: with ``ray.init(num_cpus=2)`` and two actors booking one CPU
each, Ray Data's read task never gets a CPU and the job waits forever without an error. So an
actor books only ``ACTOR_SHARE`` of the CPUs it uses (its torch threads use them all), and the
read tasks book ``READ_CPUS``: on every node at least a tenth of a CPU stays free for them.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

from ..errors import RealESRGANTiledError

ACTOR_SHARE = 0.9  # of the CPUs an actor's threads use, what it books with Ray
READ_CPUS = 0.05  # what one read task books: reading a file's bytes is I/O


@dataclass(frozen=True)
class Pool:
    size: int  # actors
    num_cpus: float  # booked per actor
    num_gpus: float  # per actor (0 or 1)
    threads: int | None  # torch threads per actor on the CPU (None: torch's own choice on a GPU actor)

    def describe(self) -> str:
        what = "1 GPU" if self.num_gpus else f"{self.threads} CPU thread{'s' * (self.threads != 1)}"
        return f"{self.size} actor{'s' * (self.size != 1)}, {what} each"


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RealESRGANTiledError(f"--ray needs Ray Data: pip install 'realesrgan-tiled[ray]' ({e})") from None
    return ray


class Cluster:
    """``with Cluster("local" | "auto" | ADDRESS) as cluster:``. ``local`` starts a cluster on
    this machine (in a temp folder of its own, removed after); otherwise it joins one. If Ray is
    already initialised (a test's cluster, a user's script), that one is used and left running."""

    def __init__(self, address: str = "local", num_cpus: int | None = None, quiet: bool = False):
        self.address, self.num_cpus, self.quiet = address, num_cpus, quiet
        self.started, self.temp = False, None

    def __enter__(self):
        ray = require_ray()
        if not ray.is_initialized():
            self._init(ray)
        _quiet_data(self.quiet)
        return self

    def _init(self, ray) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # the core worker's C++ log on stderr: its one line per run about actor arguments in the object store
        # (Ray Data puts every pool's there; the driver owns them for the whole job) is not the user's business
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        kwargs = {"logging_level": logging.WARNING, "log_to_driver": False, "include_dashboard": False}
        if self.address == "local":
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token-auth warning on a cluster of our own
            self.temp = tempfile.mkdtemp(prefix="rtray-")  # short: Ray's socket paths must fit 107 bytes
            kwargs.update(num_cpus=self.num_cpus, _temp_dir=self.temp)
        else:
            kwargs["address"] = self.address
        try:
            ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            self._remove_temp()
            raise RealESRGANTiledError(f"--ray {self.address}: cannot start or reach a Ray cluster ({e})") from None
        self.started = True

    def resources(self) -> dict:
        import ray

        return ray.cluster_resources()

    def __exit__(self, *exc):
        if self.started:
            import ray

            ray.shutdown()
            self._remove_temp()
        return False

    def _remove_temp(self) -> None:
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)


def size_pool(resources: dict, device: str | None, cpus_per_actor: int | None) -> Pool:
    """One actor per GPU (unless ``--device cpu``), else one per ``cpus_per_actor`` CPUs
    (default 1: on the CPU one image per core beat one image over several cores here)."""
    cpus = float(resources.get("CPU", 0))
    gpus = int(resources.get("GPU", 0))
    if gpus and (device or "auto") != "cpu" and cpus_per_actor is None:
        return Pool(gpus, min(1.0, ACTOR_SHARE * cpus / gpus), 1, None)
    per = cpus_per_actor or 1
    if cpus < per:
        raise RealESRGANTiledError(f"--ray-cpus {per}: the cluster has only {cpus:g} CPUs")
    return Pool(int(cpus // per), ACTOR_SHARE * per, 0, per)


def _quiet_data(quiet: bool) -> None:
    """Ray Data's progress bar on a terminal only (off one it logs a line every few seconds),
    and no execution-plan banner."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = not quiet and sys.stderr.isatty()
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled": we chose so
