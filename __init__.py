"""realesrgan_tiled: Real-ESRGAN-family upscalers for ComfyUI (and a CLI).

Imported by ComfyUI as a custom-node package (this file is its entry point) and by
Python as ``realesrgan_tiled``. The node module imports ComfyUI lazily, so importing the
package outside ComfyUI works and pulls in only the host-neutral core.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# No frontend extension. Example workflows are found by ComfyUI in ./example_workflows.
WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
