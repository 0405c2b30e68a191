"""realesrgan_tiled: Real-ESRGAN-family upscalers for ComfyUI, Stable Diffusion WebUI and a CLI.

Three hosts import this file:
- ComfyUI, as a custom-node package: it calls ``comfy_entrypoint`` (the V3 schema's entry point),
  which the module ``__getattr__`` below answers by importing the nodes;
- the WebUI (AUTOMATIC1111, Forge), through ``scripts/realesrgan_tiled_webui.py``;
- Python, as ``realesrgan_tiled`` (the CLI, tests).

So importing the package itself imports nothing: each host pulls in only its own adapter.
"""

# Served by ComfyUI at /extensions/<folder>/: no scripts, only the node help pages in web/docs/
# (the frontend shows web/docs/<node id>.md). Example workflows are found in ./example_workflows.
WEB_DIRECTORY = "./web"


def __getattr__(name):
    if name == "comfy_entrypoint":
        try:
            from comfy_api.latest import io  # noqa: F401
        except ImportError as e:  # a ComfyUI from before the V3 schema (mid-2025), or no ComfyUI at all
            raise ImportError(f"realesrgan_tiled's nodes need ComfyUI 0.3.64 or newer, with its V3 node schema "
                              f"(comfy_api.latest.io): {e}; update ComfyUI") from None
        from .nodes.schema import comfy_entrypoint

        return comfy_entrypoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
