"""Reading UNetDiscriminatorSN checkpoints (Real-ESRGAN's ``RealESRGAN_x4plus_netD.pth``,
basicsr's ``net_d_*.pth``, any trainer's wrapper around one) for the GAN fine-tuning."""
from __future__ import annotations

from ..archs.unet_discriminator import NAME, UNetDiscriminatorSN
from ..archs.unet_discriminator.keys import DISCRIMINATOR_WRAPPERS, EXPECTED_KEYS, canonical_keys, check_fit, read_hyperparameters
from ..errors import ModelLoadError
from .sniff import describe_contents, sniff, unwrap_state_dict


def discriminator_state(checkpoint: object) -> dict:
    """The discriminator's tensors in the canonical layout, out of whatever wraps them."""
    if isinstance(checkpoint, dict):
        inner = next((checkpoint[k] for k in DISCRIMINATOR_WRAPPERS if isinstance(checkpoint.get(k), dict)), None)
        checkpoint = inner if inner is not None else checkpoint
    return canonical_keys(unwrap_state_dict(checkpoint))


def load_discriminator(checkpoint: object, skip_connection: bool = True) -> UNetDiscriminatorSN:
    """A UNetDiscriminatorSN with the checkpoint's weights (a state dict or a training file's
    dict around one), in train mode as ``nn.Module`` leaves it. ModelLoadError when it is not."""
    state = discriminator_state(checkpoint)
    if not state:
        raise ModelLoadError(f"not a {NAME}: the file holds no weights, only {describe_contents(checkpoint)}")
    if "conv0.weight" not in state or "conv9.weight" not in state:
        raise ModelLoadError(f"not a {NAME}: {_what_it_is(state)}")
    hp = read_hyperparameters(state)
    check_fit(state, hp)
    net = UNetDiscriminatorSN(**hp, skip_connection=skip_connection)
    net.load_state_dict(state, strict=True)
    return net


def is_unet_discriminator(checkpoint: object) -> bool:
    """Whether ``load_discriminator`` reads the checkpoint: the key layout and every shape fit."""
    try:
        state = discriminator_state(checkpoint)
        if set(state) != EXPECTED_KEYS:
            return False
        check_fit(state, read_hyperparameters(state))
    except ModelLoadError:
        return False
    return True


def _what_it_is(state: dict) -> str:
    """For the error: the generator it is, if it is one of ours, else a few of its keys."""
    try:
        spec = sniff(state)
    except ModelLoadError:
        spec = None
    if spec is not None:
        return f"it is a {spec.architecture} generator (x{spec.scale}), not a discriminator"
    keys = sorted(state)
    more = f" … ({len(keys)} keys)" if len(keys) > 4 else ""
    return f"it has no conv0.weight / conv9.weight; its keys are {', '.join(keys[:4])}{more}"
