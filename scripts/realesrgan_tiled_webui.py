"""Stable Diffusion WebUI entry point (AUTOMATIC1111 1.10, Forge): the host runs every
``scripts/*.py`` of an extension at start and at each UI reload.

The host loads this file by path, and the extension folder is named after the git repository,
so the package is imported here by path, as ``realesrgan_tiled``; then the adapter registers
our settings, upscalers and health route (see ``sdwebui/``)."""
import importlib.util
import sys
from pathlib import Path

PACKAGE = "realesrgan_tiled"
ROOT = Path(__file__).resolve().parent.parent


def import_package():
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None and Path(loaded.__file__).resolve().parent == ROOT:
        return loaded
    spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return package


import_package()
from realesrgan_tiled.sdwebui import extension  # noqa: E402 (needs the package imported above)

extension.register()
