"""realesrgan_tiled: Real-ESRGAN-family upscalers for ComfyUI, Stable Diffusion WebUI and a CLI.

Three hosts import this file:
- ComfyUI, as a custom-node package: it reads ``NODE_CLASS_MAPPINGS`` (and the display names)
  with ``getattr``, which the module ``__getattr__`` below answers by importing the nodes;
- the WebUI (AUTOMATIC1111, Forge), through ``scripts/realesrgan_tiled_webui.py``;
- Python, as ``realesrgan_tiled`` (the CLI, tests).

So importing the package itself imports nothing: each host pulls in only its own adapter.
"""

# Served by ComfyUI at /extensions/<folder>/: no scripts, only the node help pages in web/docs/
# (the frontend shows web/docs/<node id>.md). Example workflows are found in ./example_workflows.
WEB_DIRECTORY = "./web"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


def __getattr__(name):
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        from . import nodes

        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
