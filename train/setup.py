"""What a fine-tuning run starts from: the base model, patch geometry, the networks and
optimisers, and the held-out metrics."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from ..archs.output_resize import OutputResize
from ..engine.settings import native_bf16
from ..errors import ModelLoadError, RealESRGANTiledError
from ..loading import OurModel, load_model, read_state_dict
from ..loading.bundled import model_path
from .steps import Models

ADAM_BETAS = (0.9, 0.99)
DEFAULTS = {"cuda": (256, 8), "cpu": (128, 4)}  # (HR patch side, batch) per device type
DISCRIMINATOR_MULTIPLE = 8  # the U-Net discriminator halves a patch three times


def load_base(name: str) -> OurModel:
    model = load_model(model_path(name))
    if not isinstance(model, OurModel):
        raise RealESRGANTiledError(f"--base {name}: a {model.architecture.name} model; fine-tuning takes Real-ESRGAN's "
                                   "generators (RRDBNet, SRVGGNetCompact)")
    if isinstance(model.model, OutputResize):
        raise RealESRGANTiledError(f"--base {name}: its output is resized after the network ({model.tags[-1]}); "
                                   "fine-tune a model without a fixed resize")
    return model


def patch_geometry(base: OurModel, patch: int | None, batch: int | None, device: torch.device) -> tuple[int, int]:
    """The HR patch side (a multiple of what both the generator's input and the discriminator
    need) and the batch size."""
    default_patch, default_batch = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    scale = int(base.scale)
    multiple = math.lcm(DISCRIMINATOR_MULTIPLE, scale * int(base.size_requirements.multiple_of))
    side = (patch or default_patch) // multiple * multiple
    if side < 2 * multiple:
        raise RealESRGANTiledError(f"--patch-size {patch} is too small for this x{scale} model: use at least {2 * multiple} "
                                   f"(a multiple of {multiple})")
    batch = batch or default_batch
    if batch < 1:
        raise RealESRGANTiledError(f"--batch-size {batch}: must be at least 1")
    return side, batch


def build_models(base: OurModel, loss: str, lr: float, vgg19: str | None, device: torch.device,
                 discriminator_file: str | None = None) -> tuple[Models, OurModel]:
    """The trained generator (from the base's weights), a descriptor around its EMA (what the
    evaluation upscales with), and the losses' networks; the discriminator from
    ``discriminator_file`` (e.g. Real-ESRGAN's ``RealESRGAN_x4plus_netD.pth``) or new."""
    generator = copy.deepcopy(base.network).to(device).train().requires_grad_(True)
    ema_model = copy.deepcopy(base)
    ema_model.model.to(device)
    perceptual = discriminator = d_optimizer = None
    if loss in ("perceptual", "gan"):
        from .losses import PerceptualLoss

        perceptual = PerceptualLoss(weights_file=vgg19).to(device)
    if loss == "gan":
        discriminator = _discriminator(base, discriminator_file).to(device).train()
        d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=ADAM_BETAS)
    if device.type == "cuda":
        for net in (generator, discriminator):
            if net is not None:
                net.to(memory_format=torch.channels_last)
    models = Models(generator=generator, ema=ema_model.network,
                    optimizer=torch.optim.Adam(generator.parameters(), lr=lr, betas=ADAM_BETAS),
                    perceptual=perceptual, discriminator=discriminator, d_optimizer=d_optimizer,
                    autocast_dtype=torch.bfloat16 if device.type == "cuda" and native_bf16(device) else None)
    return models, ema_model


def _discriminator(base: OurModel, path: str | None):
    from ..archs.unet_discriminator import UNetDiscriminatorSN
    from ..loading.discriminator import load_discriminator

    if path is None:
        return UNetDiscriminatorSN(num_in_ch=base.output_channels)
    try:
        net = load_discriminator(read_state_dict(Path(path)))
    except (ModelLoadError, OSError) as e:
        raise ModelLoadError(f"--discriminator {path}: {e}") from None
    if net.num_in_ch != base.output_channels:
        raise ModelLoadError(f"--discriminator {path}: it judges {net.num_in_ch}-channel images; "
                             f"the base makes {base.output_channels}-channel ones")
    return net


def metric_functions() -> tuple[dict, str]:
    """Report key -> fn(output [H, W, 3], target [H, W, 3], scale) on the held-out images, and
    the perceptual metric's name (not the network the perceptual loss trains with)."""
    from .losses import stlpips_file
    from .metrics import PERCEPTUAL_METRIC, STLPIPS_ALEXNET, perceptual_distance, psnr_y, ssim_y

    stlpips_file(STLPIPS_ALEXNET)  # missing: say so now, not after the data is read and the base scored
    return {
        "psnr_y": lambda out, target, scale: psnr_y(out, target, crop=scale),
        "ssim_y": lambda out, target, scale: ssim_y(out, target, crop=scale),
        "perceptual": lambda out, target, scale: perceptual_distance(out, target),
    }, PERCEPTUAL_METRIC
