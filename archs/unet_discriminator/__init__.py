"""UNetDiscriminatorSN, Real-ESRGAN's U-Net discriminator with spectral norm: the network the
GAN fine-tuning trains against a generator (its files are read by ``loading/discriminator.py``).
Not an upscaler: it is not listed in ``archs.ARCHITECTURES`` and no loader offers it as a model."""
from __future__ import annotations

from .keys import EXPECTED_KEYS, NAME
from .network import SIZE_MULTIPLE, UNetDiscriminatorSN

__all__ = ["EXPECTED_KEYS", "NAME", "SIZE_MULTIPLE", "UNetDiscriminatorSN"]
