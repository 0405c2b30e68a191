"""Real-host harness: a throwaway ComfyUI with this package installed the way ComfyUI-Manager
installs it, driven over HTTP.

- ``make_env``: a venv layered over ComfyUI's venv (a .pth file puts ComfyUI's site-packages on
  its path, so torch & co. are shared and never modified) into which the Manager's steps
  (``pip install -r requirements.txt``, then ``python install.py``) install what is missing.
- ``ComfyServer``: ``main.py --cpu --base-directory TMP --database-url sqlite:///:memory:`` on a
  free loopback port, with the package copied into ``TMP/custom_nodes``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared server process
from host_server import HostServer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR_NAME = "realesrgan_tiled"
API_DIR = Path(__file__).resolve().parent / "workflows_api"
EXAMPLES_DIR = REPO / "example_workflows"
SD15_BUILDER = Path(os.environ.get("COMFY_SD15_BUILDER", REPO.parent / "shared" / "comfyui" / "make_random_sd15.py"))
NODE_IDS = ("RealESRGAN_LoadUpscaleModel", "RealESRGAN_UpscaleImageTiled", "RealESRGAN_HiresFixUpscale",
            "RealESRGAN_UpscaleVideo", "RealESRGAN_UpscaleImagesToVideo",
            "RealESRGAN_InterpolateUpscaleModels")
COPY_IGNORE = shutil.ignore_patterns(".venv*", ".git", "__pycache__", "*.egg-info", ".pytest_cache",
                                     ".hypothesis", "out", "build", "dist", "*.pyc")


def host_config() -> tuple[Path, Path] | None:
    d, py = os.environ.get("COMFYUI_DIR"), os.environ.get("COMFY_PYTHON")
    if not d or not py:
        return None
    return Path(d), Path(py)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


# ---------------------------------------------------------------- environment

@dataclass
class HostEnv:
    python: Path
    venv: Path
    steps: list = field(default_factory=list)  # (name, CompletedProcess, seconds)
    torch_before: str = ""


def site_packages(python: Path) -> str:
    return run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()


def python_eval(python: Path, code: str) -> str:
    res = run([python, "-c", code])
    if res.returncode != 0:
        raise RuntimeError(f"{python} -c {code!r} failed:\n{res.stdout}")
    return res.stdout.strip()


def make_env(comfy_python: Path, where: Path, package_dir: Path) -> HostEnv:
    """Layer a venv over ComfyUI's and run the Manager's install steps from ``package_dir``."""
    venv = where / "venv"
    base = python_eval(comfy_python, "import sys; print(sys._base_executable if hasattr(sys, '_base_executable') else sys.executable)")
    res = run([base, "-m", "venv", venv])
    if res.returncode != 0:
        raise RuntimeError(f"venv creation failed:\n{res.stdout}")
    python = venv / "bin" / "python"
    (Path(site_packages(python)) / "_comfyui_venv.pth").write_text(site_packages(comfy_python) + "\n")
    env = HostEnv(python=python, venv=venv)
    env.torch_before = python_eval(python, "import torch, torchvision; print(torch.__version__, torchvision.__version__)")
    for name, cmd in (
        ("pip install -r requirements.txt", [python, "-m", "pip", "install", "-q", "-r", "requirements.txt"]),
        ("python install.py", [python, "install.py"]),
    ):
        t = time.monotonic()
        res = run(cmd, cwd=package_dir)
        env.steps.append((name, res, time.monotonic() - t))
    return env


def copy_package(dest_custom_nodes: Path) -> Path:
    dest = dest_custom_nodes / PACKAGE_DIR_NAME
    shutil.copytree(REPO, dest, ignore=COPY_IGNORE)
    return dest


# ---------------------------------------------------------------- images

def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def sample_photo(size=(40, 56), name="astronaut") -> np.ndarray:
    """uint8 [H, W, 3] crop of a real photo (scikit-image)."""
    import skimage.data

    arr = getattr(skimage.data, name)()[..., :3]
    h, w = size
    top, left = 60, 180  # the face: real detail, not a flat wall
    return np.ascontiguousarray(arr[top:top + h, left:left + w])


def to_image_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(array.astype(np.float32) / 255.0).unsqueeze(0)


def comfy_save_quantize(t) -> np.ndarray:
    """What ComfyUI's SaveImage writes for an IMAGE tensor [H, W, C]: clip(255*x).astype(uint8)."""
    return np.clip(255.0 * t.cpu().numpy(), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# ---------------------------------------------------------------- server

class ComfyServer(HostServer):
    label, ready_path = "ComfyUI", "/system_stats"

    def __init__(self, comfy_dir: Path, python: Path, base: Path, device_args: tuple[str, ...] = ("--cpu",)):
        super().__init__(comfy_dir, base / "comfyui.log")
        self.comfy_dir, self.python, self.base = comfy_dir, python, base
        self.device_args = device_args  # () on a GPU machine: ComfyUI's own device choice
        self.client_id = uuid.uuid4().hex

    def command(self) -> list[str]:
        return [str(self.python), "main.py", *self.device_args, "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
                *os.environ.get("COMFYUI_EXTRA_ARGS", "").split()]  # e.g. --front-end-root DIR: another frontend

    def start(self, timeout: float = 120.0) -> None:
        super().start(timeout)

    # -- HTTP
    def request(self, path: str, data=None, method=None, raw=False, timeout=30):
        body = None if data is None else (data if isinstance(data, bytes) else json.dumps(data).encode())
        req = urllib.request.Request(self.url + path, data=body, method=method or ("POST" if body is not None else "GET"),
                                     headers={"Content-Type": "application/json"} if body is not None else {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload = r.read()
        if raw:
            return payload
        return json.loads(payload) if payload else None

    def get(self, path: str, **kw):
        return self.request(path, **kw)

    def queue(self, prompt: dict) -> str:
        """POST /prompt; raises PromptRejected (with ComfyUI's error body) on a validation failure."""
        try:
            res = self.request("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as e:
            raise PromptRejected(e.read().decode(errors="replace")) from None
        return res["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id) if hist else None
            if entry and entry.get("status"):  # history is written when the prompt ends, however it ends
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout}s:\n{self.log()[-3000:]}")

    def run_prompt(self, prompt: dict, timeout: float = 300.0) -> dict:
        entry = self.wait(self.queue(prompt), timeout)
        status = entry.get("status", {})
        if status.get("status_str") != "success":
            raise PromptFailed(json.dumps(status.get("messages"), indent=1)[-4000:])
        return entry

    def output_images(self, entry: dict, node_id: str) -> list[np.ndarray]:
        from PIL import Image

        out = []
        for img in entry["outputs"][node_id]["images"]:
            q = urllib.parse.urlencode({"filename": img["filename"], "subfolder": img["subfolder"], "type": img["type"]})
            data = self.get(f"/view?{q}", raw=True)
            out.append(np.asarray(Image.open(BytesIO(data))))
        return out

    def output_text(self, entry: dict, node_id: str) -> str:
        return "".join(entry["outputs"][node_id]["text"])

    def interrupt(self) -> None:
        self.request("/interrupt", {})

    def queue_state(self) -> dict:
        return self.get("/queue")


class PromptRejected(Exception):
    pass


class PromptFailed(Exception):
    pass


# ---------------------------------------------------------------- workflows

def load_api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.json"))


def combo_options(spec: list) -> list:
    """A combo input's choices in /object_info: ["COMBO", {"options": [...]}] for V3 nodes (ours,
    and core's newer ones), [[...], {...}] for V1 nodes."""
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def with_unique_prefix(prompt: dict) -> dict:
    """A copy whose SaveImage/SaveVideo prefixes are unique, so ComfyUI's cache never serves an old result."""
    prompt = json.loads(json.dumps(prompt))
    tag = uuid.uuid4().hex[:8]
    for node in prompt.values():
        if node["class_type"] in ("SaveImage", "SaveVideo"):
            node["inputs"]["filename_prefix"] = f"{node['inputs'].get('filename_prefix', 'ComfyUI')}_{tag}"
    return prompt


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def needs_checkpoint(prompt: dict) -> bool:
    return any(v["class_type"] in ("CheckpointLoaderSimple", "CheckpointLoader", "UNETLoader") for v in prompt.values())


if __name__ == "__main__":  # pragma: no cover - manual helper: start a server to poke at
    cfg = host_config()
    if cfg is None:
        sys.exit("set COMFYUI_DIR and COMFY_PYTHON")
    print("see tests/comfyui/conftest.py for how the tests use this module")


def cpu_upscale(model, images, **choices):
    """Our engine on the CPU with the given user choices: the oracle for what the nodes produced."""
    from realesrgan_tiled.engine import Choices, Host, upscale

    return upscale(images, model, Choices(**choices), Host(device="cpu")).images
