"""Install what this package needs into the running Python, and nothing else.

ComfyUI-Manager runs ``pip install -r requirements.txt`` and then ``python install.py`` from this
folder; the Stable Diffusion WebUI (AUTOMATIC1111, Forge) runs ``install.py`` of each extension
with its own root on PYTHONPATH, and then this uses the host's ``launch.is_installed`` and
``launch.run_pip``; running it by hand is fine too. It

- installs only requirements that are missing or too old (quiet and without touching pip when
  everything is present, so it is idempotent and cheap at every start);
- changes no installed version: whenever pip runs, every installed distribution but the ones
  being installed is pinned through a constraints file, so no dependency can move torch or what
  the host pins (the WebUIs pin spandrel 0.3.4, numpy 1.26.2, Pillow 9.5);
- never installs torch/torchvision/torchaudio, even when missing: the host owns them;
- says clearly what to do when PyPI cannot be reached;
- installs an optional extra only when the user opts in through the environment:
  ``REALESRGAN_TILED_EXTRAS=openvino`` (comma-separated, names of ``OPTIONAL_EXTRAS``) before
  ComfyUI-Manager or the WebUI runs this, or by hand; the same pins apply.

Standalone on purpose: it does not import the package (whose modules need its dependencies).
Exit status: 0 when everything is present afterwards, 1 otherwise.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
PREFIX = "[realesrgan_tiled]"
# The host (ComfyUI) owns these; pinning them keeps a dependency from replacing a CUDA build.
PROTECTED = ("torch", "torchvision", "torchaudio")
OFFLINE_MARKERS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "Max retries exceeded",
    "No matching distribution found",
    "Could not find a version that satisfies",
)
# opt-in extras (pyproject's optional dependencies of the same name): name -> requirement lines
OPTIONAL_EXTRAS = {"openvino": ["openvino>=2025.0"]}  # the OpenVINO CPU backend (release_memory: 2025.0)
EXTRAS_VARIABLE = "REALESRGAN_TILED_EXTRAS"
_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;#]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path = REQUIREMENTS) -> list[tuple[str, str, str]]:
    """(name, specifier, original requirement) for each requirement line; options, URLs and
    comments are skipped, and so are the protected packages."""
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")) or "://" in line:
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, spec = m.group(1), m.group(3).strip()
        if canonical(name) in PROTECTED:
            continue
        out.append((name, spec, line))
    return out


def opted_in_extras(environ=os.environ, out=None) -> list[tuple[str, str, str]]:
    """The requirements of the extras named in REALESRGAN_TILED_EXTRAS, as read_requirements
    gives them; an unknown name is reported and skipped."""
    found = []
    for extra in (e.strip().lower() for e in environ.get(EXTRAS_VARIABLE, "").split(",")):
        if not extra:
            continue
        if extra not in OPTIONAL_EXTRAS:
            print(f"{PREFIX} {EXTRAS_VARIABLE}: no extra named {extra!r}; choose from {', '.join(OPTIONAL_EXTRAS)}",
                  file=out or sys.stdout, flush=True)
            continue
        for line in OPTIONAL_EXTRAS[extra]:
            m = _LINE.match(line)
            found.append((m.group(1), m.group(3).strip(), line))
    return found


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _specifier_set(spec: str):
    for mod in ("packaging.specifiers", "pip._vendor.packaging.specifiers"):
        try:
            return __import__(mod, fromlist=["SpecifierSet"]).SpecifierSet(spec)
        except ImportError:
            continue
    return None


def _version_tuple(v: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", v.split("+")[0])[:4])


def satisfies(version: str, spec: str) -> bool:
    """Does installed ``version`` meet ``spec`` (e.g. ">=0.4")? Uses packaging when present,
    else a numeric comparison that understands >=, ==, > and (loosely) ~=."""
    if not spec:
        return True
    specifiers = _specifier_set(spec)
    if specifiers is not None:
        return specifiers.contains(version, prereleases=True)
    have = _version_tuple(version)
    for part in spec.split(","):
        m = re.match(r"\s*(>=|==|>|~=|<=|<|!=)\s*(\S+)", part)
        if not m:
            continue
        op, want = m.group(1), _version_tuple(m.group(2))
        ok = {">=": have >= want, "~=": have >= want, "==": have[: len(want)] == want, ">": have > want,
              "<=": have <= want, "<": have < want, "!=": have[: len(want)] != want}[op]
        if not ok:
            return False
    return True


def missing_requirements(requirements, lookup=installed_version) -> list[str]:
    """The requirement lines not met by what is installed."""
    out = []
    for name, spec, line in requirements:
        version = lookup(name)
        if version is None or not satisfies(version, spec):
            out.append(line)
    return out


def installed_versions() -> dict[str, str]:
    """{canonical name: version} of every distribution this Python sees (the first one found
    wins, as for imports)."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonical(name), dist.version)
    return out


_PINNABLE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]*$")


def constraints_text(installed: dict[str, str], installing: list[str]) -> str:
    """A pin for every installed distribution except those being installed, e.g.
    'numpy==1.26.2\\n...torch==2.14.1\\n': pip may add packages, but moves none."""
    skip = {canonical(_LINE.match(line).group(1)) for line in installing}
    return "".join(f"{name}=={version}\n" for name, version in sorted(installed.items())
                   if name not in skip and _PINNABLE_VERSION.match(version))


def pip_command() -> list[str]:
    """pip of the running interpreter; uv's pip when this environment has no pip (uv venvs)."""
    try:
        import pip  # noqa: F401
    except ImportError:
        uv = shutil.which("uv")
        if uv:
            return [uv, "pip", "install", "--python", sys.executable]
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]


def is_offline_failure(output: str) -> bool:
    return any(marker in output for marker in OFFLINE_MARKERS)


def webui_launch():
    """The WebUI's ``launch`` module when the WebUI runs this file (it puts its own root on
    PYTHONPATH; the extension itself may live elsewhere, under --data-dir); None under ComfyUI
    or when run by hand."""
    roots = [Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if not any((r / "launch.py").is_file() and (r / "modules" / "launch_utils.py").is_file() for r in roots):
        return None
    try:
        import launch
    except Exception:
        return None
    return launch if hasattr(launch, "run_pip") and hasattr(launch, "is_installed") else None


def webui_lookup(launch):
    """The host's convention for "is it installed", then our version check."""
    return lambda name: installed_version(name) if launch.is_installed(name) else None


def webui_runner(launch):
    """Runs our pip command through the host's ``launch.run_pip`` (its index URL, its log)."""
    def run(cmd, **_):
        args = " ".join(_quote(a) for a in cmd[cmd.index("install"):])
        try:
            output = launch.run_pip(args, "realesrgan_tiled requirements")
        except RuntimeError as e:  # the host raises with pip's output in the message
            return subprocess.CompletedProcess(cmd, 1, stdout=str(e))
        return subprocess.CompletedProcess(cmd, 0, stdout=output or "")

    return run


def _quote(arg: str) -> str:
    # run_pip hands a string to the shell: double quotes work in both sh and cmd.exe
    return f'"{arg}"' if any(c in arg for c in ' <>=|&;"') or not arg else shlex.quote(arg)


def main(argv=None, *, lookup=None, installed=installed_versions, runner=None,
         requirements_file: Path = REQUIREMENTS, out=None, environ=os.environ) -> int:
    out = out or sys.stdout
    launch = webui_launch() if lookup is None and runner is None else None
    lookup = lookup or (webui_lookup(launch) if launch else installed_version)
    runner = runner or (webui_runner(launch) if launch else subprocess.run)
    todo = missing_requirements(read_requirements(requirements_file) + opted_in_extras(environ, out), lookup)
    if not todo:
        return 0  # everything present: no pip, no output
    print(f"{PREFIX} installing missing dependencies: {', '.join(todo)}", file=out, flush=True)
    with tempfile.TemporaryDirectory(prefix="realesrgan_tiled_install_") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(constraints_text(installed(), todo), encoding="utf-8")
        cmd = pip_command() + ["-c", str(constraints), *todo]
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        try:
            result = runner(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        except OSError as e:
            print(f"{PREFIX} could not run pip ({e}); install by hand: {_manual(todo)}", file=out, flush=True)
            return 1
    if result.returncode == 0:
        print(f"{PREFIX} installed: {', '.join(todo)}", file=out, flush=True)
        return 0
    output = result.stdout or ""
    if is_offline_failure(output):
        print(
            f"{PREFIX} could not download {', '.join(todo)}: PyPI is not reachable (offline, or a proxy/firewall "
            f"in the way). realesrgan_tiled needs them. When online, run again:\n    {_manual(todo)}",
            file=out, flush=True,
        )
    else:
        tail = "\n".join(output.strip().splitlines()[-15:])
        print(f"{PREFIX} pip failed to install {', '.join(todo)} (exit {result.returncode}):\n{tail}\n"
              f"Install by hand: {_manual(todo)}", file=out, flush=True)
    return 1


def _manual(todo) -> str:
    return " ".join([f'"{sys.executable}"', "-m", "pip", "install", *(f'"{t}"' for t in todo)])


if __name__ == "__main__":
    sys.exit(main())
