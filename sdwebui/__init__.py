"""The Stable Diffusion WebUI adapter (AUTOMATIC1111 1.10, Forge): our models as the host's
upscalers. ``models`` and ``health`` are host-neutral; ``upscaler`` and ``extension`` import
the WebUI's ``modules`` and are only imported inside it, by ``scripts/realesrgan_tiled_webui.py``."""
