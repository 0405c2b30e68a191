"""Real-host harness for the Stable Diffusion WebUI extension: a throwaway WebUI data folder
(``--data-dir``) with this repository git-cloned into its ``extensions/``, the host's own
installer run for it, and the API server driven over HTTP.

- ``make_env``: a venv layered over the WebUI's venv (a .pth file puts the WebUI's site-packages
  on its path, so torch & co. are shared and never modified); our ``install.py`` installs what
  is missing into the layer, run by the host's ``launch_utils.run_extension_installer``.
- ``WebUIServer``: ``launch.py --api --nowebui --data-dir TMP`` on a free loopback port.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared server process
from host_server import HostServer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXTENSION_DIR_NAME = "sd-webui-realesrgan-tiled"  # any folder name works: the WebUI names it after the clone

# environment variables naming a built host (see README), and the flags it runs with on CPU
HOSTS = {
    "a1111": ("A1111_DIR", "A1111_PYTHON",
              ["--use-cpu", "all", "--no-half", "--skip-load-model-at-start", "--ckpt", "test/test_files/empty.pt",
               "--do-not-download-clip", "--disable-nan-check"]),  # a random-weight SD model may produce NaNs
    "forge": ("FORGE_DIR", "FORGE_PYTHON", ["--always-cpu"]),
}


def host_config(name: str) -> tuple[Path, Path] | None:
    dir_var, python_var, _ = HOSTS[name]
    d, py = os.environ.get(dir_var), os.environ.get(python_var)
    return (Path(d), Path(py)) if d and py else None


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def python_eval(python: Path, code: str) -> str:
    res = run([python, "-c", code])
    if res.returncode != 0:
        raise RuntimeError(f"{python} -c {code!r} failed:\n{res.stdout}")
    return res.stdout.strip()


# ---------------------------------------------------------------- install

def clone_extension(extensions_dir: Path) -> Path:
    """``git clone`` this repository, as a user does; tracked files edited since the last
    commit are copied over the clone, so the working tree is what gets tested (untracked files
    are not: a user's clone would not have them either)."""
    dest = extensions_dir / EXTENSION_DIR_NAME
    res = run(["git", "clone", "--quiet", REPO, dest])
    if res.returncode != 0:
        raise RuntimeError(f"git clone failed:\n{res.stdout}")
    tracked = run(["git", "-C", REPO, "ls-files", "-z"]).stdout.split("\0")
    for rel in filter(None, tracked):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


# {canonical distribution name: version} of what a Python sees
VERSIONS_CODE = ("import importlib.metadata as m, json, re; print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): "
                 "d.version for d in m.distributions() if d.metadata['Name']}))")


@dataclass
class HostEnv:
    python: Path
    installer: subprocess.CompletedProcess | None = None
    before: dict = field(default_factory=dict)  # distribution -> version, before our installer
    after: dict = field(default_factory=dict)


def make_env(host_python: Path, where: Path, webui_dir: Path, data_dir: Path, extension: Path) -> HostEnv:
    """Layer a venv over the WebUI's and run our installer the host's way
    (``launch_utils.run_extension_installer``: a subprocess with the WebUI root on PYTHONPATH)."""
    base = python_eval(host_python, "import sys; print(getattr(sys, '_base_executable', sys.executable))")
    venv = where / "venv"
    res = run([base, "-m", "venv", venv])
    if res.returncode != 0:
        raise RuntimeError(f"venv creation failed:\n{res.stdout}")
    python = venv / "bin" / "python"
    site = python_eval(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    host_site = python_eval(host_python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    (Path(site) / "_webui_venv.pth").write_text(host_site + "\n")
    env = HostEnv(python=python)
    env.before = json.loads(python_eval(python, VERSIONS_CODE))
    code = f"from modules import launch_utils as l; l.run_extension_installer({str(extension)!r})"
    env.installer = run([python, "-c", code, "--data-dir", data_dir], cwd=webui_dir)
    env.after = json.loads(python_eval(python, VERSIONS_CODE))
    return env


# ---------------------------------------------------------------- models and images

def real_state_dict(bundled: str) -> dict:
    """The real weights of a bundled model (shipped as ncnn) as an official-layout state dict."""
    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import bundled_model_path

    return {k: v.clone() for k, v in load_model(bundled_model_path(bundled)).network.state_dict().items()}


def png_b64(array: np.ndarray) -> str:
    from PIL import Image

    buf = BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode_b64(data: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(BytesIO(base64.b64decode(data))))


def sample_photo(size, name="astronaut") -> np.ndarray:
    """uint8 [H, W, 3] crop of a real photo (scikit-image), from the face: real detail."""
    import skimage.data

    arr = getattr(skimage.data, name)()[..., :3]
    h, w = size
    return np.ascontiguousarray(arr[40:40 + h, 150:150 + w])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# ---------------------------------------------------------------- server

class ApiError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:2000]}")
        self.status, self.body = status, body


class WebUIServer(HostServer):
    label, ready_path = "the WebUI", "/sdapi/v1/upscalers"

    def __init__(self, webui_dir: Path, python: Path, data_dir: Path, flags: list[str]):
        super().__init__(webui_dir, data_dir / "webui.log")
        self.webui_dir, self.python, self.data_dir, self.flags = webui_dir, python, data_dir, flags

    def command(self) -> list[str]:
        return [str(self.python), "launch.py", "--skip-prepare-environment", "--skip-torch-cuda-test", "--api",
                "--nowebui", "--skip-version-check", "--port", str(self.port), "--data-dir", str(self.data_dir),
                *self.flags]

    def environment(self) -> dict:
        return dict(super().environment(), HF_HUB_OFFLINE="1")

    def start(self, timeout: float = 180.0) -> None:
        super().start(timeout)

    def peak_rss_bytes(self) -> int:
        """The server process's peak resident memory so far (Linux VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def request(self, path: str, data=None, timeout=600):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                payload = r.read()
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, e.read().decode(errors="replace")) from None
        return json.loads(payload) if payload else None

    def get(self, path: str, **kw):
        return self.request(path, **kw)

    # -- the WebUI's API
    def upscalers(self) -> dict[str, dict]:
        return {u["name"]: u for u in self.get("/sdapi/v1/upscalers")}

    def health(self) -> dict:
        return self.get("/realesrgan-tiled/health")

    def extras(self, image: np.ndarray, upscaler: str, resize: float, **extra) -> tuple[np.ndarray, dict]:
        res = self.request("/sdapi/v1/extra-single-image",
                           {"image": png_b64(image), "upscaling_resize": resize, "upscaler_1": upscaler, **extra})
        return decode_b64(res["image"]), res

    def set_options(self, **options) -> None:
        self.request("/sdapi/v1/options", options)
