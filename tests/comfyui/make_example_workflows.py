"""Regenerate example_workflows/*.json (+ .jpg thumbnails) from the API twins in workflows_api/,
through the real frontend: it loads each twin as the frontend loads a dropped API json, lays it
out, and saves the UI-format workflow it would save; the thumbnail is a picture of the graph.

    COMFYUI_DIR=... COMFY_PYTHON=... .venv/bin/python tests/comfyui/make_example_workflows.py

The API twins stay the source of truth; tests/comfyui/test_browser.py checks that the frontend
turns each saved workflow back into exactly its twin.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser  # noqa: E402
import harness  # noqa: E402


def main() -> int:
    cfg = harness.host_config()
    if cfg is None:
        sys.exit("set COMFYUI_DIR and COMFY_PYTHON")
    comfy_dir, comfy_python = cfg
    base = Path(tempfile.mkdtemp(prefix="rt_make_examples_"))
    try:
        for sub in ("custom_nodes", "input", "output", "user"):
            (base / sub).mkdir()
        harness.copy_package(base / "custom_nodes")
        shutil.copy(comfy_dir / "input" / "example.png", base / "input" / "example.png")
        server = harness.ComfyServer(comfy_dir, comfy_python, base)
        server.start()
        front = None
        try:
            front = browser.Frontend(server, viewport=(2600, 1100))
            harness.EXAMPLES_DIR.mkdir(exist_ok=True)
            for api_path in sorted(harness.API_DIR.glob("*.json")):
                name = api_path.stem
                front.reload()
                workflow = front.load_api(json.loads(api_path.read_text()))
                out = harness.EXAMPLES_DIR / f"{name}.json"
                out.write_text(json.dumps(workflow, indent=2) + "\n")
                front.screenshot(str(harness.EXAMPLES_DIR / f"{name}.jpg"))
                print("wrote", out)
            if front.serious_errors():
                print("browser errors:", *front.serious_errors(), sep="\n  ")
        finally:
            if front is not None:
                front.close()
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
