"""One training step of the generator (and the discriminator), and the EMA of the generator.

Real-ESRGAN's recipe: L1 and perceptual losses against the USM-sharpened ground truth (the
caller passes the plain one instead with ``--sharpen-gt off``), the GAN loss against the plain
one; the discriminator is frozen during the generator's step. A loss that is not finite skips
the whole step and is reported by name.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .losses import discriminator_loss, generator_gan_loss, l1_loss

L1_WEIGHT, PERCEPTUAL_WEIGHT, GAN_WEIGHT = 1.0, 1.0, 0.1
EMA_DECAY = 0.999


@dataclass
class Models:
    generator: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    perceptual: nn.Module | None = None
    discriminator: nn.Module | None = None
    d_optimizer: torch.optim.Optimizer | None = None
    autocast_dtype: torch.dtype | None = None  # bf16 where the device runs it natively


def train_step(m: Models, lr: torch.Tensor, gt: torch.Tensor, gt_sharp: torch.Tensor, gan_on: bool) -> dict[str, float] | str:
    """One step; returns the losses, or the name of the loss that was not finite (nothing updated)."""
    with _autocast(m, lr):
        sr = m.generator(lr)
    losses = {"l1": L1_WEIGHT * l1_loss(sr.float(), gt_sharp)}
    if m.perceptual is not None:
        with _autocast(m, lr):
            losses["perceptual"] = PERCEPTUAL_WEIGHT * m.perceptual(sr, gt_sharp).float()
    if m.discriminator is not None and gan_on:
        m.discriminator.requires_grad_(False)
        with _autocast(m, lr):
            losses["gan"] = GAN_WEIGHT * generator_gan_loss(m.discriminator(sr).float())
    bad = _first_not_finite(losses)
    if bad is not None:
        return bad
    m.optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    m.optimizer.step()
    values = {k: float(v.detach()) for k, v in losses.items()}
    if m.discriminator is not None:
        d_loss = _discriminator_step(m, sr.detach(), gt)
        if d_loss is None:
            return "discriminator"
        values["discriminator"] = d_loss
    return values


def _discriminator_step(m: Models, fake: torch.Tensor, real: torch.Tensor) -> float | None:
    m.discriminator.requires_grad_(True)
    with _autocast(m, real):
        loss = discriminator_loss(m.discriminator(real).float(), m.discriminator(fake).float())
    m.d_optimizer.zero_grad(set_to_none=True)
    if not bool(torch.isfinite(loss)):
        return None
    loss.backward()
    m.d_optimizer.step()
    return float(loss.detach())


def ema_decay(step: int, enabled: bool = True) -> float:
    """The EMA's decay after ``step`` steps: min(0.999, (1 + step) / (10 + step)), the warm-up of
    TensorFlow's ExponentialMovingAverage(num_updates). Real-ESRGAN's 0.999 is tuned for
    400k-iteration runs; from the first step it would leave a 120-step fine-tune's EMA 89 % base
    (0.999 ** 120). Warming up, the EMA spans roughly the last ninth of the steps so far, and
    the decay is 0.999 from step 8990 on. ``enabled=False`` (``--ema off``): 0, the EMA is the
    generator itself."""
    return min(EMA_DECAY, (1 + step) / (10 + step)) if enabled else 0.0


def update_ema(ema: nn.Module, generator: nn.Module, step: int, enabled: bool = True) -> None:
    """ema = d * ema + (1 - d) * generator, d = ``ema_decay(step, enabled)``; buffers are copied."""
    decay = ema_decay(step, enabled)
    with torch.no_grad():
        for e, g in zip(ema.parameters(), generator.parameters()):
            if decay == 0:  # --ema off: exactly the weights, not a lerp's rounding of them
                e.copy_(g)
            else:
                e.lerp_(g.detach(), 1 - decay)
        for e, g in zip(ema.buffers(), generator.buffers()):
            e.copy_(g)


def _first_not_finite(losses: dict[str, torch.Tensor]) -> str | None:
    for name, value in losses.items():
        if not bool(torch.isfinite(value)):
            return name
    return None


def _autocast(m: Models, like: torch.Tensor):
    if m.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(like.device.type, dtype=m.autocast_dtype)
