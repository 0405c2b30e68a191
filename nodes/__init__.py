"""The ComfyUI nodes: ``upscale.py`` does the work without importing ComfyUI (so CI can test it);
``schema.py`` declares the nodes in ComfyUI's V3 schema and is imported only by ComfyUI, through
the package root's ``comfy_entrypoint``."""
