"""ComfyUI node registrations. ComfyUI itself is imported lazily inside the nodes' functions
(see ``_host``), so importing this package never needs ComfyUI."""
from . import _host
from .upscale import HiresFixUpscale, InterpolateUpscaleModels, LoadUpscaleModel, UpscaleImageTiled

NODE_CLASS_MAPPINGS = {
    "RealESRGAN_LoadUpscaleModel": LoadUpscaleModel,
    "RealESRGAN_UpscaleImageTiled": UpscaleImageTiled,
    "RealESRGAN_HiresFixUpscale": HiresFixUpscale,
    "RealESRGAN_InterpolateUpscaleModels": InterpolateUpscaleModels,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "RealESRGAN_LoadUpscaleModel": "Load Upscale Model (Real-ESRGAN)",
    "RealESRGAN_UpscaleImageTiled": "Upscale Image Tiled (Real-ESRGAN)",
    "RealESRGAN_HiresFixUpscale": "Hires-Fix Upscale (Real-ESRGAN)",
    "RealESRGAN_InterpolateUpscaleModels": "Interpolate Upscale Models (Real-ESRGAN)",
}

_host.register_health_route()  # inside ComfyUI only

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
