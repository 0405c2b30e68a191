"""The package's rooms and their one-way order (README, "Architecture"), read from the code's
imports (every ``import``, top-level or inside a function): the networks import nothing of
ours but ``errors``, no room imports a room above it, the core never imports a host, and no
module imports itself round a circle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "realesrgan_tiled"
ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("archs", "engine", "loading", "media", "nodes", "on_ray", "runtimes", "sdwebui", "train", "video")
ENTRY_POINTS = ("__init__", "__main__", "cli", "install", "preload")

# Lower ranks are imported by higher ones, never the other way; one rank's rooms do not import
# each other. Host adapters, then the entry points at the root, sit on top.
RANK = {
    "errors": 0,
    "archs": 1, "media": 1,
    "runtimes": 2,
    "loading": 3,
    "engine": 4,
    "train": 5, "video": 5,
    "nodes": 6, "sdwebui": 6, "on_ray": 6,
    "entry": 7,
}
HOST_ROOMS = {"nodes", "sdwebui", "entry"}
# what ComfyUI and the WebUIs put on sys.path; only the host adapters may import them
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution",
                "latent_preview", "node_helpers", "nodes", "modules", "launch", "webui", "gradio"}
MAX_ROOT_MODULES = 7
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {f"{PACKAGE}.{name}": ROOT / f"{name}.py" for name in (*ENTRY_POINTS, "errors") if name != "__init__"}
    found[PACKAGE] = ROOT / "__init__.py"
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((PACKAGE, *parts))] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules ``name`` imports (``from pkg import sub`` names the submodule), and the
    host modules it imports, as ``host:NAME``."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if alias.name.startswith(PACKAGE + "."):
                    out.add(_nearest(alias.name, known))
                elif top in HOST_MODULES:
                    out.add(f"host:{top}")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == PACKAGE:
                target = node.module
            else:
                if node.module and node.module.split(".")[0] in HOST_MODULES:
                    out.add(f"host:{node.module.split('.')[0]}")
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else _nearest(target, known))
    out.discard(name)
    return out


def _nearest(target: str, known: set[str]) -> str:
    while target not in known and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def room(module: str) -> str:
    parts = module.split(".")
    return "entry" if len(parts) == 1 or parts[1] in ENTRY_POINTS else parts[1]


GRAPH = {name: imports(name, path, set(modules())) for name, path in modules().items()}


def test_every_module_has_a_room():
    assert {room(m) for m in GRAPH} <= set(RANK)


def test_the_networks_import_nothing_of_ours_but_errors():
    bad = {m: sorted(t for t in ts if room(t) not in ("archs", "errors")) for m, ts in GRAPH.items() if room(m) == "archs"}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_no_room_imports_a_room_above_it_or_beside_it():
    """Entry points -> host adapters -> train -> engine -> loading -> runtimes -> networks
    (and media) -> errors."""
    bad = []
    for module, targets in GRAPH.items():
        for target in targets:
            if target.startswith("host:") or room(target) == room(module):
                continue
            if RANK[room(target)] >= RANK[room(module)]:
                bad.append(f"{module} -> {target}")
    assert bad == []


def test_the_core_never_imports_a_host():
    bad = [f"{m} -> {t}" for m, ts in GRAPH.items() for t in ts if t.startswith("host:") and room(m) not in HOST_ROOMS]
    assert bad == []


def test_no_import_circle():
    """Between modules, counting imports inside functions too (a lazy import that closes a
    circle is still a circle)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], path[len(path):] = 1, [node]
        for nxt in sorted(t for t in GRAPH.get(node, ()) if not t.startswith("host:")):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(GRAPH):
        if start not in state:
            cycle = visit(start)
            assert cycle is None, " -> ".join(cycle)


def test_the_root_holds_only_what_a_host_looks_for():
    loose = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(loose) <= MAX_ROOT_MODULES, loose
    assert {p.stem for p in ROOT.glob("*.py")} <= {*ENTRY_POINTS, "errors"}


@pytest.mark.parametrize("folder", [*SOURCE_DIRS, "bench", "scripts"])
def test_no_source_file_is_over_400_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checker_sees_a_back_arrow(tmp_path):
    """The checker itself can fail: a network module importing the engine is caught."""
    fake = tmp_path / "inference.py"
    fake.write_text("from ...engine.run import upscale\nimport folder_paths\n")
    found = imports(f"{PACKAGE}.archs.rrdbnet.inference", fake, set(GRAPH))
    assert found == {f"{PACKAGE}.engine.run", "host:folder_paths"}
