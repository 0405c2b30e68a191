"""A real host's server as a child process for the real-host tests (ComfyUI, the WebUIs): on a
free loopback port, its output in a log file, ready when one of its routes answers. Imported by
path (tests/ on sys.path) from each host's harness, which the benchmarks also load by path."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HostServer:
    """Subclasses say how to launch the host (``command``) and which route answers once it is
    up (``ready_path``), and provide ``get(path)``."""

    label = "the host"
    ready_path = "/"

    def __init__(self, cwd: Path, log_path: Path):
        self.cwd, self.log_path = cwd, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict:
        return dict(os.environ, PYTHONUNBUFFERED="1")

    def start(self, timeout: float) -> None:
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command(), cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.environment())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited ({self.proc.returncode}):\n{self.log()[-5000:]}")
            try:
                self.get(self.ready_path)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"{self.label} did not answer within {timeout}s:\n{self.log()[-5000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, **kw):
        raise NotImplementedError
