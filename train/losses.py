"""Training losses of Real-ESRGAN's recipe: L1, the perceptual loss on VGG features, and the
vanilla GAN loss (BCE with logits on the U-Net discriminator's per-pixel logits).

The perceptual loss is Real-ESRGAN's when the user gives torchvision's ImageNet ``vgg19`` weights
(``vgg19-dcbb9e9d.pth``, downloaded by themselves: this package fetches nothing). Without them it
runs on the VGG16 that the ``stlpips_pytorch`` wheel ships (ST-LPIPS, BSD-2). That network was
trained from scratch on human similarity judgements (BAPPS), not on ImageNet, and its weights sit
close to their random start: a much weaker teacher than ImageNet VGG19, so runs that care about
texture should pass the VGG19 file.

Every weights file is read with ``torch.load(..., weights_only=True)``: never a full unpickle.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError, RealESRGANTiledError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# conv1_2, conv2_2, then the last conv of blocks 3-5 (Real-ESRGAN's perceptual_opt)
REAL_ESRGAN_LAYER_WEIGHTS = (0.1, 0.1, 1.0, 1.0, 1.0)

VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
VGG16_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
VGG19_LAYERS = ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4")

STLPIPS_PACKAGE = "stlpips_pytorch"
STLPIPS_VGG16 = "weights/vST0.0/vgg_shift_tolerant.pth"
STLPIPS_ALEXNET = "weights/vST0.0/alex_shift_tolerant.pth"


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling as ST-LPIPS builds it (Zhang 2019, "Making convolutional
    networks shift-invariant again"): reflect-pad 2 px, blur with the 3x3 binomial filter, keep
    every second pixel. Its filter is a buffer because the ST-LPIPS files store it."""

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("filt", (kernel / kernel.sum()).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


def vgg_features(config: Sequence, antialiased: bool) -> nn.Sequential:
    """VGG's conv stack laid out as torchvision's ``vgg*.features`` (same indices, so its state
    dict loads as is); ``antialiased`` swaps each max-pool for ST-LPIPS's stride-1 max-pool plus
    ``BlurPool``. The ReLUs are not in place: they would overwrite the pre-ReLU features we tap."""
    layers: list[nn.Module] = []
    channels = 3
    for item in config:
        if item == "M":
            layers += [nn.MaxPool2d(2, stride=1), BlurPool(channels)] if antialiased else [nn.MaxPool2d(2, stride=2)]
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers[:-1])  # ends on the last conv: nothing after it is tapped


def block_ends(features: nn.Sequential) -> list[int]:
    """Indices of the last conv of each block (the one before a pool, and the final one)."""
    ends, last_conv = [], None
    for index, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            last_conv = index
        elif isinstance(layer, nn.MaxPool2d):
            ends.append(last_conv)
    return ends + [last_conv]


def stlpips_file(relative: str) -> Path:
    """A weights file inside the installed ``stlpips_pytorch`` wheel, found without importing the
    package (its modules import IPython and torchsummary, which it does not declare)."""
    spec = importlib.util.find_spec(STLPIPS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RealESRGANTiledError(f"the offline perceptual networks need the {STLPIPS_PACKAGE} package: "
                                   f"pip install {STLPIPS_PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise RealESRGANTiledError(f"{path} is missing from the installed {STLPIPS_PACKAGE}: "
                                   f"reinstall it (pip install --force-reinstall {STLPIPS_PACKAGE})")
    return path


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a torch file, read weights-only on the CPU (the ST-LPIPS
    files were saved from CUDA tensors)."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file (expected {what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or a pickle that needs more than tensors
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"{path}: not a weights-only torch file ({first_line}); expected {what}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors; expected {what}")
    return state


def load_exactly(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """``load_state_dict(strict=True)`` with the mismatch told as the file's fault."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:400]
        raise ModelLoadError(f"{path}: is not {what}: {detail}") from e


def vgg19_imagenet(weights_file: Path) -> nn.Sequential:
    """torchvision's vgg19 conv stack with the user's weights (its ``features.*`` keys; the
    classifier's are ignored, so a full ``vgg19-dcbb9e9d.pth`` and a features-only file both do)."""
    what = "a torchvision vgg19 state dict such as vgg19-dcbb9e9d.pth"
    state = read_state_dict(weights_file, what)
    features = vgg_features(VGG19_CONFIG, antialiased=False)
    # torchvision's stack goes on past conv5_4 only with a ReLU and a pool, which hold no weights
    found = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    load_exactly(features, found, weights_file, what)
    return features


def stlpips_vgg16() -> nn.Sequential:
    """ST-LPIPS's anti-aliased VGG16 trunk (its linear heads are left out). Its keys are
    ``net.slice{1-5}.<index>.*`` with the indices of one flat stack, so they map straight on."""
    path = stlpips_file(STLPIPS_VGG16)
    what = "ST-LPIPS's shift-tolerant VGG16"
    state = read_state_dict(path, what)
    features = vgg_features(VGG16_CONFIG, antialiased=True)
    trunk = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("net.slice")}
    load_exactly(features, trunk, path, what)
    return features


class PerceptualLoss(nn.Module):
    """Weighted L1 between VGG features of prediction and target, taken before the ReLU, on
    ImageNet-normalised inputs. ``pred``, ``target``: [B, 3, H, W], 0..1.

    ``weights_file``: torchvision ``vgg19`` weights -> Real-ESRGAN's loss exactly (conv1_2, conv2_2,
    conv3_4, conv4_4, conv5_4). Without it: ST-LPIPS's VGG16 (conv1_2, conv2_2, conv3_3, conv4_3,
    conv5_3), a stand-in for VGG19, trained from scratch on BAPPS rather than on ImageNet.
    ``layer_weights`` go to the five layers in that order. The network is frozen and stays in eval."""

    def __init__(self, weights_file: str | Path | None = None, layer_weights: Sequence[float] = REAL_ESRGAN_LAYER_WEIGHTS,
                 device: str | torch.device | None = None):
        super().__init__()
        if len(layer_weights) != 5:
            raise ValueError(f"layer_weights: one weight per tapped layer (5), got {len(layer_weights)}")
        if weights_file is not None:
            features, self.layer_names = vgg19_imagenet(Path(weights_file)), VGG19_LAYERS
            self.backbone_name = f"VGG19 (ImageNet, {Path(weights_file).name})"
        else:
            features, self.layer_names = stlpips_vgg16(), VGG16_LAYERS
            self.backbone_name = "ST-LPIPS VGG16 (stand-in for VGG19; trained on BAPPS, not ImageNet)"
        self.features = features.requires_grad_(False).eval()
        self.taps = block_ends(features)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        if device is not None:
            self.to(device)

    def train(self, mode: bool = True) -> PerceptualLoss:
        # a fixed measuring stick: a parent's .train() must not switch it
        return super().train(False)

    def tapped_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.mean) / self.std
        taps, found = set(self.taps), []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in taps:
                found.append(x)
        return found

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"PerceptualLoss: pred and target must both be [B, 3, H, W], got {tuple(pred.shape)} "
                             f"and {tuple(target.shape)}")
        pred_features = self.tapped_features(pred)
        with torch.no_grad():  # the target is data, not something to optimise
            target_features = self.tapped_features(target)
        return sum(w * F.l1_loss(p, t) for w, p, t in zip(self.layer_weights, pred_features, target_features))


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error: Real-ESRGAN's pixel loss (weight 1.0)."""
    return F.l1_loss(pred, target)


def generator_gan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator wants the discriminator to call its output real: BCE with logits against 1
    at every pixel. Unweighted (Real-ESRGAN weighs it 0.1 in the total)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE with logits: real images labelled 1, generated ones 0, the two terms summed (BasicSR
    backpropagates them one after the other, which gives the same gradient)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake
