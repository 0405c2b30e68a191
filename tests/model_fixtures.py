"""Random-weight model fixtures, key-layout converters and independent functional oracles.

Nothing here imports the package's networks: state dicts are written key by key from the
published ESRGAN / Real-ESRGAN layouts, and the oracles run ``F.conv2d`` straight on the
raw state dict, so a bug in ``archs/`` or ``loading/sniff.py`` cannot hide behind itself.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

# ---- random weights ----------------------------------------------------------------------


def _conv(gen: torch.Generator, out_ch: int, in_ch: int, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaiming-uniform-like conv weights so activations stay O(1) through deep stacks."""
    bound = 1 / math.sqrt(in_ch * k * k)
    w = (torch.rand(out_ch, in_ch, k, k, generator=gen) * 2 - 1) * bound
    b = (torch.rand(out_ch, generator=gen) * 2 - 1) * bound
    return w, b


def rrdbnet_state(num_feat=16, num_block=1, num_grow_ch=32, num_upsample=2, unshuffle=1,
                  in_ch=3, out_ch=3, seed=0) -> dict:
    """A basicsr-layout RRDBNet state dict (conv_first, body.N.rdbM.convK, conv_body, conv_upN, conv_hr, conv_last)."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict = {}

    def put(name, o, i):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = _conv(gen, o, i)

    put("conv_first", num_feat, in_ch * unshuffle**2)
    for b in range(num_block):
        for r in (1, 2, 3):
            for c in (1, 2, 3, 4):
                put(f"body.{b}.rdb{r}.conv{c}", num_grow_ch, num_feat + (c - 1) * num_grow_ch)
            put(f"body.{b}.rdb{r}.conv5", num_feat, num_feat + 4 * num_grow_ch)
    put("conv_body", num_feat, num_feat)
    for i in range(1, num_upsample + 1):
        put(f"conv_up{i}", num_feat, num_feat)
    put("conv_hr", num_feat, num_feat)
    put("conv_last", out_ch, num_feat)
    return sd


def srvgg_state(num_feat=16, num_conv=2, upscale=4, prelu=True, in_ch=3, out_ch=3, seed=0) -> dict:
    """A ``body.N`` SRVGGNetCompact state dict: convs at even indices, PReLU slopes (if any) at odd ones."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict = {}
    idx = 0
    for i in range(num_conv + 1):
        sd[f"body.{idx}.weight"], sd[f"body.{idx}.bias"] = _conv(gen, num_feat, in_ch if i == 0 else num_feat)
        if prelu:  # slopes around 0.25 with some spread, so the activation matters
            sd[f"body.{idx + 1}.weight"] = torch.rand(num_feat, generator=gen) * 0.5
        idx += 2
    sd[f"body.{idx}.weight"], sd[f"body.{idx}.bias"] = _conv(gen, out_ch * upscale**2, num_feat)
    return sd


# ---- key layouts ------------------------------------------------------------------------------


def to_old_esrgan(sd: dict) -> dict:
    """basicsr -> original ESRGAN ``model.N`` layout (flattened Sequential: conv, shortcut,
    [upsample, conv, lrelu] per stage, HR conv, lrelu, last conv)."""
    num_block = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    num_up = sum(1 for k in sd if k.startswith("conv_up") and k.endswith(".weight"))
    out: dict = {}
    for key, v in sd.items():
        name, kind = key.rsplit(".", 1)
        parts = name.split(".")
        if parts[0] == "body":
            out[f"model.1.sub.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.0.{kind}"] = v
        elif name == "conv_first":
            out[f"model.0.{kind}"] = v
        elif name == "conv_body":
            out[f"model.1.sub.{num_block}.{kind}"] = v
        elif name.startswith("conv_up"):
            out[f"model.{3 * int(name[7:])}.{kind}"] = v
        elif name == "conv_hr":
            out[f"model.{3 * num_up + 2}.{kind}"] = v
        elif name == "conv_last":
            out[f"model.{3 * num_up + 4}.{kind}"] = v
    return out


def to_bsrgan(sd: dict) -> dict:
    """basicsr -> BSRGAN / RealSR layout (RRDB_trunk, trunk_conv, upconvN, HRconv, conv_last)."""
    rename = {"conv_body": "trunk_conv", "conv_hr": "HRconv"}
    out: dict = {}
    for key, v in sd.items():
        head, _, tail = key.partition(".")
        if head == "body":
            out["RRDB_trunk." + tail.replace(".rdb", ".RDB")] = v
        elif head.startswith("conv_up"):
            out[f"upconv{head[7:]}.{tail}"] = v
        else:
            out[f"{rename.get(head, head)}.{tail}"] = v
    return out


# name -> (function(state) -> object to save, usable with safetensors?)
LAYOUTS = {
    "basicsr": (lambda sd: dict(sd), True),
    "esrgan-old": (to_old_esrgan, True),
    "bsrgan": (to_bsrgan, True),
    "params_ema": (lambda sd: {"params_ema": dict(sd)}, False),
    "params": (lambda sd: {"params": dict(sd)}, False),
    "state_dict": (lambda sd: {"state_dict": dict(sd), "epoch": 3}, False),
    "model": (lambda sd: {"model": dict(sd)}, False),
    "net": (lambda sd: {"net": dict(sd), "iter": 1000}, False),
    "module.": (lambda sd: {f"module.{k}": v for k, v in sd.items()}, True),
    "netG.": (lambda sd: {f"netG.{k}": v for k, v in sd.items()}, True),
}
EXPECTED_KEY_FORMAT = {"esrgan-old": "esrgan-old", "bsrgan": "bsrgan"}  # everything else is basicsr


def save(obj, path: Path) -> Path:
    """Write ``obj`` as .safetensors (flat tensor dicts only) or as a torch pickle."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, str(path))
    return path


# ---- functional oracles -----------------------------------------------------------------------


def pad_like_spandrel(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Bottom/right padding to a multiple: reflect as far as the image allows, then replicate
    (what spandrel's descriptor does, so tiny inputs are defined too)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    rh, rw = min(ph, h - 1), min(pw, w - 1)
    if rh or rw:
        x = F.pad(x, (0, rw, 0, rh), mode="reflect")
    if ph - rh or pw - rw:
        x = F.pad(x, (0, pw - rw, 0, ph - rh), mode="replicate")
    return x


def rrdbnet_oracle(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The ESRGAN generator written out from the paper's equations, on a basicsr state dict."""

    def conv(name, t):
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    def lrelu(t):
        return F.leaky_relu(t, 0.2)

    in_ch = sd["conv_first.weight"].shape[1]
    out_ch = sd["conv_last.weight"].shape[0]
    shuffle = int(round(math.sqrt(in_ch / out_ch))) if in_ch in (4 * out_ch, 16 * out_ch) else 1
    num_block = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    num_up = sum(1 for k in sd if k.startswith("conv_up") and k.endswith(".weight"))
    h, w = x.shape[-2:]
    if shuffle > 1:
        x = F.pixel_unshuffle(pad_like_spandrel(x, shuffle), shuffle)
    fea = conv("conv_first", x)
    t = fea
    for b in range(num_block):
        rrdb_in = t
        for r in (1, 2, 3):
            feats = [t]
            for c in (1, 2, 3, 4):
                feats.append(lrelu(conv(f"body.{b}.rdb{r}.conv{c}", torch.cat(feats, 1))))
            t = conv(f"body.{b}.rdb{r}.conv5", torch.cat(feats, 1)) * 0.2 + feats[0]
        t = t * 0.2 + rrdb_in
    fea = fea + conv("conv_body", t)
    for i in range(1, num_up + 1):
        fea = lrelu(conv(f"conv_up{i}", F.interpolate(fea, scale_factor=2, mode="nearest")))
    out = conv("conv_last", lrelu(conv("conv_hr", fea)))
    scale = 2**num_up // shuffle
    return out[..., : h * scale, : w * scale]


def srvgg_oracle(sd: dict, x: torch.Tensor, act: str, upscale: int) -> torch.Tensor:
    """Conv / activation chain, pixel shuffle, plus a nearest upscale of the input."""
    n = max(int(k.split(".")[1]) for k in sd)
    t = x
    for i in range(0, n + 1, 2):
        t = F.conv2d(t, sd[f"body.{i}.weight"], sd[f"body.{i}.bias"], padding=1)
        if i == n:
            break
        if act == "prelu":
            t = F.prelu(t, sd[f"body.{i + 1}.weight"])
        elif act == "relu":
            t = F.relu(t)
        else:
            t = F.leaky_relu(t, 0.1)
    return F.pixel_shuffle(t, upscale) + F.interpolate(x, scale_factor=upscale, mode="nearest")


def image(h: int, w: int, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(seed))


class OverflowsInHalf(torch.nn.Module):
    """An x4 "model" that is finite in fp32 and inf in fp16: the first conv scales by 1e5
    (> fp16's 65504), the second scales back down. For the NaN guard (tests, bench/gpu_check.py)."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Conv2d(3, 3, 1, bias=False)
        self.down = torch.nn.Conv2d(3, 48, 1, bias=False)
        self.up.weight.data = torch.eye(3).view(3, 3, 1, 1) * 1e5
        self.down.weight.data = torch.eye(3).repeat(16, 1).view(48, 3, 1, 1) * 1e-5
        self.hyperparameters = {}

    def forward(self, x):
        return F.pixel_shuffle(self.down(self.up(x)), 4)


def as_descriptor(net: torch.nn.Module, scale: int = 4):
    """Any 3-channel network as a spandrel ImageModelDescriptor that supports fp16 and bf16."""
    from spandrel import ImageModelDescriptor, SizeRequirements

    from realesrgan_tiled.archs import ARCHITECTURES

    return ImageModelDescriptor(net, net.state_dict(), architecture=ARCHITECTURES["RRDBNet"], purpose="SR",
                                tags=[], supports_half=True, supports_bfloat16=True, scale=scale,
                                input_channels=3, output_channels=3, size_requirements=SizeRequirements())
