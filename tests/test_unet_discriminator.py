"""UNetDiscriminatorSN (archs/unet_discriminator): shapes, where spectral norm sits, detection and
loading, a training step, and Real-ESRGAN's own definition as the oracle: its
``realesrgan/archs/discriminator_arch.py`` (the PyPI wheel, ``pip install --no-deps
realesrgan==0.3.0``) loaded with a stand-in for basicsr's registry, which no longer imports."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, remove_spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm

from realesrgan_tiled.archs import RRDBNet, SRVGGNetCompact
from realesrgan_tiled.archs.unet_discriminator import EXPECTED_KEYS, UNetDiscriminatorSN
from realesrgan_tiled.errors import ModelLoadError
from realesrgan_tiled.loading.discriminator import is_unet_discriminator, load_discriminator

from .conftest import photo

TOL = 1e-5
ORACLE_INSTALL = "pip install --no-deps realesrgan==0.3.0"


def astronaut(size: int = 128) -> torch.Tensor:
    return photo("astronaut", (size, size)).permute(0, 3, 1, 2).contiguous()


def trained_u(net: nn.Module, steps: int = 3, size: int = 32) -> nn.Module:
    """A few train-mode forwards, so u / v hold power-iteration results, not their random start."""
    net.train()
    with torch.no_grad():
        for _ in range(steps):
            net(torch.rand(1, net.conv0.in_channels, size, size))
    return net.eval()


@pytest.fixture(scope="module")
def reference_class():
    """Real-ESRGAN's UNetDiscriminatorSN, their code, run with an identity ARCH_REGISTRY.register()."""
    spec = importlib.util.find_spec("realesrgan")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"the oracle needs Real-ESRGAN's discriminator_arch.py: {ORACLE_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "archs" / "discriminator_arch.py"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the installed realesrgan: {ORACLE_INSTALL}")
    registry = types.ModuleType("basicsr.utils.registry")
    registry.ARCH_REGISTRY = types.SimpleNamespace(register=lambda: lambda cls: cls)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("basicsr", "basicsr.utils"):
            mp.setitem(sys.modules, name, types.ModuleType(name))
        mp.setitem(sys.modules, "basicsr.utils.registry", registry)
        module_spec = importlib.util.spec_from_file_location("_realesrgan_discriminator_arch", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    return module.UNetDiscriminatorSN


# ---- shapes and structure --------------------------------------------------------------------

@pytest.mark.parametrize("h, w", [(64, 64), (96, 96), (128, 128), (64, 96), (8, 8)])
def test_output_is_one_score_per_pixel(h, w):
    net = UNetDiscriminatorSN(num_feat=16).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, h, w))
    assert out.shape == (2, 1, h, w)
    assert torch.isfinite(out).all()


def test_sizes_must_be_divisible_by_8():
    net = UNetDiscriminatorSN(num_feat=16).eval()
    with torch.no_grad(), pytest.raises(RuntimeError):
        net(torch.rand(1, 3, 60, 60))  # 60 -> 30 -> 15 -> 7 -> 14: the skip addition cannot meet 15


def test_spectral_norm_on_conv1_to_conv8_only():
    net = UNetDiscriminatorSN()
    assert set(net.state_dict()) == EXPECTED_KEYS
    for i in range(10):
        conv = getattr(net, f"conv{i}")
        hooks = [h for h in conv._forward_pre_hooks.values() if isinstance(h, SpectralNorm)]
        if i in (0, 9):
            assert not hooks and conv.bias is not None and "weight" in dict(conv.named_parameters())
        else:
            assert len(hooks) == 1 and conv.bias is None
            assert {n for n, _ in conv.named_parameters()} == {"weight_orig"}
            assert {n for n, _ in conv.named_buffers()} == {"weight_u", "weight_v"}
    assert [getattr(net, f"conv{i}").stride for i in (1, 2, 3, 4)] == [(2, 2)] * 3 + [(1, 1)]
    assert [getattr(net, f"conv{i}").out_channels for i in range(10)] == [64, 128, 256, 512, 256, 128, 64, 64, 64, 1]


def test_spectral_norm_brings_every_largest_singular_value_to_one():
    net = trained_u(UNetDiscriminatorSN(num_feat=16), steps=50, size=16)
    with torch.no_grad():
        net(torch.rand(1, 3, 16, 16))  # eval: sets conv.weight from the stored u / v
    for i in range(1, 9):
        conv = getattr(net, f"conv{i}")
        sigma = torch.linalg.matrix_norm(conv.weight.reshape(conv.out_channels, -1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=3e-2), f"conv{i}"
    plain = torch.linalg.matrix_norm(net.conv9.weight.reshape(1, -1), ord=2).item()
    assert plain != pytest.approx(1.0, abs=3e-2)  # conv9 is not normalised


# ---- against Real-ESRGAN's definition --------------------------------------------------------

@pytest.mark.parametrize("skip_connection", [True, False])
def test_matches_reference_both_ways(reference_class, skip_connection):
    x = astronaut(128)
    torch.manual_seed(1)
    ours = trained_u(UNetDiscriminatorSN(3, 64, skip_connection))
    theirs = reference_class(3, 64, skip_connection).eval()
    assert set(theirs.state_dict()) == set(ours.state_dict())
    theirs.load_state_dict(ours.state_dict())
    with torch.no_grad():
        expected = ours(x)
        torch.testing.assert_close(theirs(x), expected, rtol=0, atol=TOL)
        # the tolerance tells networks apart: the other skip setting misses it by far
        other = reference_class(3, 64, not skip_connection).eval()
        other.load_state_dict(ours.state_dict())
        assert (other(x) - expected).abs().max() > 100 * TOL

    torch.manual_seed(2)
    theirs = trained_u(reference_class(3, 64, skip_connection))
    ours = UNetDiscriminatorSN(3, 64, skip_connection).eval()
    ours.load_state_dict(theirs.state_dict())
    loaded = load_discriminator({"params": theirs.state_dict()}, skip_connection=skip_connection).eval()
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=TOL)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=TOL)
        torch.testing.assert_close(theirs(x), expected, rtol=0, atol=0)  # eval left u alone


def test_reference_state_dict_detected_with_other_sizes(reference_class):
    theirs = reference_class(1, 32)
    assert is_unet_discriminator({"params": theirs.state_dict()})
    net = load_discriminator(theirs.state_dict())
    assert (net.num_in_ch, net.num_feat) == (1, 32)


# ---- detection and loading -------------------------------------------------------------------

GENERATORS = {
    "RRDBNet": lambda: RRDBNet(num_feat=16, num_block=1, num_grow_ch=8).state_dict(),
    "SRVGGNetCompact": lambda: SRVGGNetCompact(num_feat=16, num_conv=2).state_dict(),
}


def test_detection_of_ours_and_wrappers():
    sd = UNetDiscriminatorSN(num_feat=16).state_dict()
    assert is_unet_discriminator(sd)
    assert is_unet_discriminator({"params": sd})
    assert is_unet_discriminator({"state_dict": {f"module.{k}": v for k, v in sd.items()}})
    both = {"netG": GENERATORS["RRDBNet"](), "netD": sd}  # a training file with both networks
    assert is_unet_discriminator(both) and load_discriminator(both).num_feat == 16


@pytest.mark.parametrize("name", GENERATORS)
def test_generators_are_not_discriminators(name):
    sd = GENERATORS[name]()
    assert not is_unet_discriminator(sd)
    with pytest.raises(ModelLoadError, match=f"not a UNetDiscriminatorSN: it is a {name} generator"):
        load_discriminator({"params_ema": sd})


def _damaged(change) -> dict:
    sd = dict(UNetDiscriminatorSN(num_feat=16).state_dict())
    change(sd)
    return sd


@pytest.mark.parametrize("checkpoint, message", [
    ({}, "holds no weights"),
    ({"epoch": 3, "optimizer": {"lr": 1e-4}}, "holds no weights"),
    ({"conv_first.weight": torch.zeros(4, 3, 3, 3)}, r"no conv0\.weight.*conv_first\.weight"),
    (_damaged(lambda sd: sd.pop("conv5.weight_u")), r"missing 1 weight\(s\): conv5\.weight_u"),
    (_damaged(lambda sd: sd.update({"conv7.weight_v": torch.zeros(3)})), r"wrong shape: conv7\.weight_v \(3,\)"),
    (_damaged(lambda sd: sd.update({"conv4.bias": torch.zeros(64)})), r"unexpected weight\(s\): conv4\.bias"),
    (_damaged(lambda sd: sd["conv8.weight_orig"].fill_(float("nan"))), "conv8.weight_orig contains NaN"),
    (_damaged(lambda sd: sd.update({"conv0.weight": torch.zeros(16, 3, 5, 5)})), "conv0 is a 5x5 conv"),
    # a huge num_feat claimed by conv0 is refused on shapes without building that network
    ({"conv0.weight": torch.zeros(100_000, 3, 3, 3), "conv9.weight": torch.zeros(1, 16, 3, 3)}, "missing 26"),
], ids=["empty", "no-tensors", "other-net", "missing", "wrong-shape", "extra", "nan", "kernel", "huge"])
def test_wrong_files_give_a_clear_error(checkpoint, message):
    assert not is_unet_discriminator(checkpoint)
    with pytest.raises(ModelLoadError, match=message):
        load_discriminator(checkpoint)


def test_discriminator_without_spectral_norm_is_refused():
    net = UNetDiscriminatorSN(num_feat=16)
    for i in range(1, 9):
        remove_spectral_norm(getattr(net, f"conv{i}"))
    assert not is_unet_discriminator(net.state_dict())
    with pytest.raises(ModelLoadError, match=r"conv1, conv2, conv3 … hold plain weights \(conv1\.weight\)"):
        load_discriminator(net.state_dict())


def test_parametrization_spectral_norm_files_load():
    """torch's newer spectral norm names the same tensors convN.parametrizations.weight.original/.0._u/.0._v."""
    torch.manual_seed(3)
    net = UNetDiscriminatorSN(num_feat=16)
    for i in range(1, 9):
        conv = remove_spectral_norm(getattr(net, f"conv{i}"))
        setattr(net, f"conv{i}", parametrizations.spectral_norm(conv))
    trained_u(net)
    assert {"conv3.parametrizations.weight.original", "conv3.parametrizations.weight.0._u"} <= set(net.state_dict())
    assert is_unet_discriminator(net.state_dict())
    loaded = load_discriminator(net.state_dict()).eval()
    x = astronaut(64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=TOL)


# ---- training ---------------------------------------------------------------------------------

def test_gradient_step_updates_weights_and_power_iteration():
    torch.manual_seed(4)
    net = UNetDiscriminatorSN(num_feat=16).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    real, fake = astronaut(64), torch.rand(1, 3, 64, 64)
    u_before = net.conv4.weight_u.clone()
    w_before = net.conv4.weight_orig.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(net(real), torch.ones(1, 1, 64, 64))
                + F.binary_cross_entropy_with_logits(net(fake), torch.zeros(1, 1, 64, 64)))
        loss.backward()
        assert torch.isfinite(loss)
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        opt.step()
    assert not torch.equal(net.conv4.weight_u, u_before)  # train mode runs the power iteration
    assert not torch.equal(net.conv4.weight_orig, w_before)
    net.eval()
    u_eval = net.conv4.weight_u.clone()
    with torch.no_grad():
        out = net(real)
    assert torch.isfinite(out).all() and out.shape == (1, 1, 64, 64)
    assert torch.equal(net.conv4.weight_u, u_eval)  # eval leaves u alone
