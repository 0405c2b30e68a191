"""Training losses (train/losses.py): the GAN and L1 losses against their formulas, the perceptual
loss on a torchvision-built VGG19 (an independent oracle for layers and normalisation) and, without
one, the ST-LPIPS VGG16 distance (against the stlpips_pytorch package's own LPIPS networks)."""
from __future__ import annotations

import importlib.util
import io
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from realesrgan_tiled.errors import ModelLoadError, RealESRGANTiledError
from realesrgan_tiled.train import losses
from realesrgan_tiled.train.losses import PerceptualLoss, discriminator_loss, generator_gan_loss, l1_loss
from realesrgan_tiled.train.metrics import stlpips_alexnet

from .conftest import photo

needs_stlpips = pytest.mark.skipif(importlib.util.find_spec("stlpips_pytorch") is None,
                                   reason="the offline perceptual backbone comes from stlpips_pytorch")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def nchw(name: str, size: tuple[int, int]) -> torch.Tensor:
    return photo(name, size).permute(0, 3, 1, 2).contiguous()


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return TF.gaussian_blur(images, 2 * math.ceil(3 * sigma) + 1, sigma)


def noisy(images: torch.Tensor, std: float) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    return (images + std * noise).clamp(0, 1)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray((images[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(buffer, "JPEG", quality=quality)
    return torch.from_numpy(np.array(Image.open(buffer))).float().div(255).permute(2, 0, 1)[None]


# --- L1 and GAN ---------------------------------------------------------------------------------

def logits(seed: int) -> torch.Tensor:
    # per-pixel logits as the U-Net discriminator gives them, some far into saturation
    return torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 6


def test_l1_loss_is_the_mean_absolute_difference():
    a, b = nchw("astronaut", (32, 32)), nchw("coffee", (32, 32))
    assert l1_loss(a, b).item() == pytest.approx((a - b).abs().sum().item() / a.numel(), rel=1e-6)


def test_generator_gan_loss_is_bce_against_real():
    fake = logits(1)
    by_hand = -torch.log(torch.sigmoid(fake.double())).mean()  # -log p(real)
    assert generator_gan_loss(fake).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert generator_gan_loss(fake).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)).item(), rel=1e-6)


def test_discriminator_loss_is_bce_real_one_plus_bce_fake_zero():
    real, fake = logits(2), logits(3)
    by_hand = -torch.log(torch.sigmoid(real.double())).mean() - torch.log(1 - torch.sigmoid(fake.double())).mean()
    assert discriminator_loss(real, fake).item() == pytest.approx(by_hand.item(), rel=1e-5)
    expected = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    assert discriminator_loss(real, fake).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gan_losses_push_the_logits_the_right_way():
    # unsaturated logits: far out, float32's sigmoid reaches exactly 1 and the gradient 0
    real, fake = (logits(4) / 3).requires_grad_(True), (logits(5) / 3).requires_grad_(True)
    discriminator_loss(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()  # raise real logits, lower fake ones
    fake_for_generator = (logits(5) / 3).requires_grad_(True)
    generator_gan_loss(fake_for_generator).backward()
    assert (fake_for_generator.grad < 0).all()  # the generator wants its logits raised


# --- perceptual loss with the user's VGG19 -------------------------------------------------------

VGG19_TAPS = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34}


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory) -> tuple[Path, torch.nn.Sequential]:
    """A torchvision vgg19 state dict (random weights: the real file is a user download). Only
    the conv stack plus one classifier tensor, so that building and saving it stays fast."""
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"]).eval()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # the full file's classifier keys are ignored
    path = tmp_path_factory.mktemp("vgg") / "vgg19-test.pth"
    torch.save(state, path)
    return path, features


def test_vgg19_file_gives_real_esrgans_layers_and_weights(vgg19_file):
    path, features = vgg19_file
    loss = PerceptualLoss(weights_file=path)
    assert loss.layer_names == tuple(VGG19_TAPS)
    assert loss.taps == list(VGG19_TAPS.values())
    assert loss.layer_weights == (0.1, 0.1, 1.0, 1.0, 1.0)
    assert torch.equal(loss.features[34].weight, features[34].weight)
    assert "VGG19" in loss.backbone_name


def test_vgg19_loss_equals_torchvisions_features_by_hand(vgg19_file):
    path, features = vgg19_file
    pred, target = nchw("astronaut", (48, 48)), blurred(nchw("astronaut", (48, 48)), 1.5)
    with torch.no_grad():
        x, y = (pred - IMAGENET_MEAN) / IMAGENET_STD, (target - IMAGENET_MEAN) / IMAGENET_STD
        # each slice ends on the tapped conv, so torchvision's in-place ReLUs cannot touch it
        terms = [w * F.l1_loss(features[: i + 1](x.clone()), features[: i + 1](y.clone()))
                 for w, i in zip((0.1, 0.1, 1, 1, 1), VGG19_TAPS.values())]
        assert PerceptualLoss(weights_file=path)(pred, target).item() == pytest.approx(sum(terms).item(), rel=1e-4)


def test_bad_vgg19_files_are_named_in_the_error(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    unrelated = tmp_path / "unrelated.pth"
    torch.save(torch.nn.Linear(4, 2).state_dict(), unrelated)
    truncated = tmp_path / "truncated.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, truncated)
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    for path, why in [(garbage, "not a weights-only torch file"), (unrelated, "is not a torchvision vgg19"),
                      (truncated, "Missing key"), (not_a_dict, "not a state dict"), (tmp_path / "absent.pth", "no such file")]:
        with pytest.raises(ModelLoadError, match=why) as caught:
            PerceptualLoss(weights_file=path)
        assert str(path) in str(caught.value)


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "was-run"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    hostile = tmp_path / "hostile.pth"
    torch.save({"features.0.weight": Payload()}, hostile)
    with pytest.raises(ModelLoadError, match="not a weights-only torch file"):
        PerceptualLoss(weights_file=hostile)
    assert not marker.exists()


# --- perceptual loss without a weights file: the ST-LPIPS VGG16 distance -------------------------

@pytest.fixture(scope="module")
def stand_in() -> PerceptualLoss:
    return PerceptualLoss()


@pytest.fixture(scope="module")
def stlpips_package():
    """The package's own ``stlpips`` module, the oracle. Its modules import IPython and torchsummary
    (for a debugger hook and a summary printer, neither used here) without declaring them: where
    they are absent, empty stand-ins are put in place for the import and taken out after."""
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as patch:
        for name, attribute in (("IPython", "embed"), ("torchsummary", "summary")):
            if importlib.util.find_spec(name) is None:
                patch.setitem(sys.modules, name, types.SimpleNamespace(**{attribute: None}))
        from stlpips_pytorch import stlpips
    yield stlpips
    for name in set(sys.modules) - before:  # leave no module behind that holds the stand-ins
        if name.startswith("stlpips_pytorch"):
            del sys.modules[name]


def astronaut(size: int = 96) -> torch.Tensor:
    return nchw("astronaut", (512, 512))[..., 40:40 + size, 180:180 + size].contiguous()  # face and suit


@needs_stlpips
def test_default_loss_is_the_stlpips_vgg16_distance_and_says_so(stand_in):
    assert stand_in.backbone_name.startswith("ST-LPIPS VGG16 distance") and "stand-in" in stand_in.backbone_name
    assert stand_in.layer_names == ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
    network = stand_in.distance
    assert network.taps == (3, 9, 17, 25, 33)
    assert all(isinstance(network.features[i], torch.nn.ReLU) for i in network.taps)
    state = torch.load(losses.stlpips_file(losses.STLPIPS_VGG16), map_location="cpu", weights_only=True)
    assert torch.equal(network.features[32].weight, state["net.slice5.32.weight"])
    assert torch.equal(network.features[27].filt, state["net.slice5.27.filt"])  # the file's blur = ours
    assert torch.equal(network.heads[4].weight, state["lin4.model.1.weight"])
    assert torch.equal(network.shift, state["scaling_layer.shift"]) and torch.equal(network.scale, state["scaling_layer.scale"])


@needs_stlpips
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_stlpips_networks_equal_the_packages_own(net, stand_in, stlpips_package):
    """Ours, rebuilt from the weights file, against the package's
    ``LPIPS(net=..., variant="shift_tolerant")(x, y, normalize=True)`` on real damage."""
    ours = stand_in.distance if net == "vgg" else stlpips_alexnet()
    oracle = stlpips_package.LPIPS(net=net, variant="shift_tolerant", verbose=False)
    target = torch.cat([astronaut(), nchw("chelsea", (96, 96))])
    pred = torch.cat([blurred(target[:1], 1.0), noisy(target[1:], 0.05)])
    with torch.no_grad():
        expected = oracle(pred, target, normalize=True).flatten()
        assert ours(pred, target).tolist() == pytest.approx(expected.tolist(), rel=1e-5)
        if net == "vgg":  # the loss: their mean over the batch
            assert stand_in(pred, target).item() == pytest.approx(expected.mean().item(), rel=1e-5)


@needs_stlpips
def test_default_loss_is_zero_for_identical_images_and_grows_with_damage(stand_in):
    target = astronaut()
    with torch.no_grad():
        assert stand_in(target.clone(), target).item() == 0.0
        by_blur = [stand_in(blurred(target, sigma), target).item() for sigma in (0.5, 1.0, 2.0)]
        by_noise = [stand_in(noisy(target, std), target).item() for std in (0.01, 0.05, 0.1)]
        by_jpeg = [stand_in(jpeg(target, quality), target).item() for quality in (90, 30, 10)]
    for values in (by_blur, by_noise, by_jpeg):
        assert 0 < values[0] < values[1] < values[2], (by_blur, by_noise, by_jpeg)


@needs_stlpips
def test_default_loss_is_in_lpips_range_on_real_damage(stand_in):
    """An LPIPS value, 0..~1 (Real-ESRGAN's feature L1 on this trunk gave tens), and above the
    pixel L1 that it is added to in training, so it is not drowned out either."""
    target = astronaut(128)
    with torch.no_grad():
        for pred in (blurred(target, 1.0), noisy(target, 0.05), jpeg(target, 30)):
            value = stand_in(pred, target).item()
            assert l1_loss(pred, target).item() < value < 1.0, value


@needs_stlpips
def test_default_loss_is_frozen_but_passes_gradients_to_the_prediction(stand_in):
    assert not any(p.requires_grad for p in stand_in.parameters())
    stand_in.train()
    assert not stand_in.training and not any(m.training for m in stand_in.modules())
    target = nchw("coffee", (64, 64))
    pred = blurred(target, 1.0).requires_grad_(True)
    before = stand_in(pred, target)
    before.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in stand_in.parameters())
    with torch.no_grad():  # a small step down the gradient brings the prediction closer
        after = stand_in(pred - 0.01 * pred.grad / pred.grad.abs().max(), target)
    assert after.item() < before.item()


@needs_stlpips
def test_shapes_and_layer_weights_are_checked(stand_in):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        stand_in(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 30))
    with pytest.raises(ValueError, match="5"):
        PerceptualLoss(layer_weights=(1.0, 1.0))


def test_missing_stlpips_package_says_how_to_install_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "stlpips_pytorch" else real_find_spec(name, *a))
    with pytest.raises(RealESRGANTiledError, match="pip install stlpips_pytorch"):
        PerceptualLoss()
