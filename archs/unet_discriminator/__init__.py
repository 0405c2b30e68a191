"""UNetDiscriminatorSN, Real-ESRGAN's U-Net discriminator with spectral norm: the network the
GAN fine-tuning trains against a generator, and the loading of its checkpoints. Not an
upscaler: it is not listed in ``archs.ARCHITECTURES`` and no loader offers it as a model."""
from __future__ import annotations

from .keys import EXPECTED_KEYS, NAME, discriminator_state, is_unet_discriminator, load_discriminator
from .network import SIZE_MULTIPLE, UNetDiscriminatorSN

__all__ = ["EXPECTED_KEYS", "NAME", "SIZE_MULTIPLE", "UNetDiscriminatorSN", "discriminator_state",
           "is_unet_discriminator", "load_discriminator"]
