"""What the WebUI script registers, each time the host (re)loads its scripts: our settings, the
upscaler class (defined on import of ``upscaler``) and the health route."""
from __future__ import annotations

from modules import script_callbacks

from ..engine.health import HEALTH, versions
from . import settings
from .upscaler import UpscalerRealESRGAN_tiled  # noqa: F401 (defining it registers it with the host)

HEALTH_ROUTE = "/realesrgan-tiled/health"


def register() -> None:
    settings.register()
    script_callbacks.on_ui_settings(settings.register, name="realesrgan_tiled settings")
    script_callbacks.on_app_started(add_health_route, name="realesrgan_tiled health")


def add_health_route(_demo, app) -> None:
    if any(getattr(route, "path", None) == HEALTH_ROUTE for route in app.routes):
        return  # the app outlives a UI reload, and our callbacks run again after one
    app.add_api_route(HEALTH_ROUTE, health, methods=["GET"])


def health() -> dict:
    from modules import devices

    return HEALTH.report(
        device=str(devices.device_esrgan),
        # what "auto" picks depends on the model and device: each run's choice is in last_run
        precision={"setting": settings.value(settings.PRECISION), "asked": settings.choices().precision},
        settings={key: settings.value(key) for key in settings.DEFAULTS},
        versions=versions(host=host_version()),
    )


def host_version() -> str:
    """'Forge f2.0.1…' or 'AUTOMATIC1111 v1.10.1' (from git, else the changelog)."""
    try:
        from modules_forge import forge_version

        return f"Forge {forge_version.version}"
    except ImportError:
        pass
    from modules import launch_utils

    tag = launch_utils.git_tag()
    return f"AUTOMATIC1111 {tag}" if tag else "AUTOMATIC1111"

