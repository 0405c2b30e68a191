"""Training losses of Real-ESRGAN's recipe: L1, the perceptual loss, and the vanilla GAN loss
(BCE with logits on the U-Net discriminator's per-pixel logits).

The perceptual loss is Real-ESRGAN's (L1 of VGG19 features) when the user gives torchvision's
ImageNet ``vgg19`` weights (``vgg19-dcbb9e9d.pth``, downloaded by themselves: this package fetches
nothing). Without them it is the ST-LPIPS distance with the VGG16 that the ``stlpips_pytorch``
wheel ships (Ghildyal & Liu, ECCV 2022; BSD-2). That VGG16 was trained from scratch on human
similarity judgements (BAPPS), not on ImageNet, so Real-ESRGAN's raw feature L1 means nothing on
it (tens per step, driven by a near-random conv5_3); the distance it was trained for, with its own
learned heads, is what it measures well, and LPIPS is an established perceptual training loss.

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
VGG16_RELUS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")  # ST-LPIPS's taps
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
    ``BlurPool``. It ends on the last conv's ReLU (the final pool is left out: nothing after it is
    tapped). The ReLUs are not in place: they would overwrite the pre-ReLU features VGG19 taps."""
    layers: list[nn.Module] = []
    channels = 3
    for item in config:
        if item == "M":
            layers += [nn.MaxPool2d(2, stride=1), BlurPool(channels)] if antialiased else [nn.MaxPool2d(2, stride=2)]
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


def block_ends(features: nn.Sequential) -> list[int]:
    """Indices of the last conv of each block (the one before a pool, and the final one)."""
    ends, last_conv = [], None
    for index, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            last_conv = index
        elif isinstance(layer, nn.MaxPool2d):
            ends.append(last_conv)
    return ends + [last_conv]


def run_to_taps(features: nn.Sequential, taps: Sequence[int], x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of the layers at ``taps`` (ascending), running no further than the last."""
    found = []
    for index, layer in enumerate(features[: taps[-1] + 1]):
        x = layer(x)
        if index in taps:
            found.append(x)
    return found


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


class StLpips(nn.Module):
    """An ST-LPIPS distance rebuilt from a weights file that the ``stlpips_pytorch`` wheel ships
    (the package's own modules import IPython and torchsummary, which it does not declare). Same
    computation as its ``LPIPS(net=..., variant="shift_tolerant")(a, b, normalize=True)``: images
    in 0..1 go to -1..1 and through its scaling layer (``shift``, ``scale``); at each tapped ReLU
    the features are unit-normalised over channels, their squared difference weighed by a learned
    1x1 head (``lin<n>``) and averaged over the image; the layers' values are summed. Returns one
    distance per image, [B]. Frozen and always in eval once ``load_package_file`` has filled it."""

    def __init__(self, features: nn.Sequential, taps: Sequence[int], what: str):
        super().__init__()
        self.features, self.taps, self.what = features, tuple(taps), what
        channels, last = [], 3
        for index, layer in enumerate(features):
            last = layer.out_channels if isinstance(layer, nn.Conv2d) else last
            channels += [last] if index in self.taps else []
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))

    def load_package_file(self, relative: str) -> StLpips:
        """Loads the wheel's file at ``relative``: all of it, nothing else."""
        path = stlpips_file(relative)
        renamed = {}
        for key, value in read_state_dict(path, self.what).items():  # the file's layout -> ours
            if key.startswith("net.slice"):  # net.slice<n>.<index>.<param>: indices of one flat stack
                renamed["features." + key.split(".", 2)[2]] = value
            elif key.startswith("lin"):  # lin<n>.model.1.weight (model.0 is an eval-time no-op dropout)
                renamed[f"heads.{key[3:].split('.')[0]}.weight"] = value
            else:  # scaling_layer.shift / .scale
                renamed[key.removeprefix("scaling_layer.")] = value
        load_exactly(self, renamed, path, self.what)
        return self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> StLpips:
        return super().train(False)  # a fixed measuring stick: a parent's .train() must not switch it

    def layer_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The tapped ReLU features of [B, 3, H, W] images in 0..1, unit length over channels. (The
        norm's own gradient is 0 where every channel is 0; the package's sqrt of a sum gives NaN.)"""
        x = (images * 2 - 1 - self.shift) / self.scale
        return [f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + 1e-10)
                for f in run_to_taps(self.features, self.taps, x)]

    def compare(self, features_a: list[torch.Tensor], features_b: list[torch.Tensor]) -> torch.Tensor:
        layers = zip(self.heads, features_a, features_b)
        return sum(head((fa - fb) ** 2).mean(dim=(2, 3)) for head, fa, fb in layers)[:, 0]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.compare(self.layer_features(a), self.layer_features(b))


def stlpips_vgg16() -> StLpips:
    """ST-LPIPS with its anti-aliased VGG16, tapped after relu1_2, relu2_2, relu3_3, relu4_3 and
    relu5_3 (the ReLU after each block's last conv)."""
    features = vgg_features(VGG16_CONFIG, antialiased=True)
    taps = [index + 1 for index in block_ends(features)]
    return StLpips(features, taps, "ST-LPIPS's shift-tolerant VGG16").load_package_file(STLPIPS_VGG16)


class PerceptualLoss(nn.Module):
    """The perceptual loss between a prediction and its target, [B, 3, H, W] in 0..1; a scalar,
    differentiable in ``pred`` (the target is treated as data). The network is frozen, stays in eval.

    ``weights_file``: torchvision ``vgg19`` weights -> Real-ESRGAN's loss exactly: L1 between the
    features before the ReLU of conv1_2, conv2_2, conv3_4, conv4_4 and conv5_4 on
    ImageNet-normalised inputs, weighed by ``layer_weights`` in that order.
    Without it: the ST-LPIPS VGG16 distance (``StLpips``), averaged over the batch: 0 for identical
    images, about 0.1-0.7 for visible damage. ``layer_weights`` are then unused (checked all the
    same): the distance weighs its layers with its own learned heads."""

    def __init__(self, weights_file: str | Path | None = None, layer_weights: Sequence[float] = REAL_ESRGAN_LAYER_WEIGHTS,
                 device: str | torch.device | None = None):
        super().__init__()
        if len(layer_weights) != 5:
            raise ValueError(f"layer_weights: one weight per tapped layer (5), got {len(layer_weights)}")
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.distance: StLpips | None = None
        if weights_file is not None:
            self.features = vgg19_imagenet(Path(weights_file)).requires_grad_(False).eval()
            self.taps, self.layer_names = block_ends(self.features), VGG19_LAYERS
            self.backbone_name = f"VGG19 (ImageNet, {Path(weights_file).name})"
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        else:
            self.distance, self.layer_names = stlpips_vgg16(), VGG16_RELUS
            self.backbone_name = "ST-LPIPS VGG16 distance (offline stand-in for Real-ESRGAN's VGG19 feature loss)"
        if device is not None:
            self.to(device)

    def train(self, mode: bool = True) -> PerceptualLoss:
        # a fixed measuring stick: a parent's .train() must not switch it
        return super().train(False)

    def tapped_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """VGG19: the pre-ReLU features; ST-LPIPS: the unit-normalised ReLU features."""
        if self.distance is not None:
            return self.distance.layer_features(images)
        return run_to_taps(self.features, self.taps, (images - self.mean) / self.std)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"PerceptualLoss: pred and target must both be [B, 3, H, W], got {tuple(pred.shape)} "
                             f"and {tuple(target.shape)}")
        pred_features = self.tapped_features(pred)
        with torch.no_grad():  # the target is data, not something to optimise
            target_features = self.tapped_features(target)
        if self.distance is not None:
            return self.distance.compare(pred_features, target_features).mean()
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
