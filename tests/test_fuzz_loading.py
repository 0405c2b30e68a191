"""Hypothesis fuzzing of the loading path: state dicts drawn from the real key layouts with
mutations (dropped / renamed / extra keys, odd shapes and dtypes, NaN, wrappers, prefixes),
and damaged or random bytes on disk. Only the project's own errors may escape."""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from realesrgan_tiled.errors import ModelLoadError, RealESRGANTiledError
from realesrgan_tiled.loading import build_descriptor, load_model
from realesrgan_tiled.loading.sniff import ModelSpec, sniff, unwrap_state_dict

from .model_fixtures import rrdbnet_state, save, srvgg_state, to_bsrgan, to_old_esrgan

# the dtype mutation casts complex tensors to real on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Casting complex values to real")

# bounded so the file stays fast; FUZZ_EXAMPLES=2000 for a deeper run;
# --hypothesis-show-statistics shows how often each path (refused / built) was reached
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.uint8,
          torch.bool, torch.complex64]
JUNK_NAMES = ["conv_up3.weight", "conv_up1.bias", "body.7.rdb2.conv3.weight", "body.0.weight", "body.1.weight",
              "body.99.bias", "model.5.weight", "model.1.sub.3.weight", "trunk_conv.bias", "HRconv.weight",
              "conv_first.weight", "params_ema", "weight", "", "module.x", "body.0.rdb1.conv1x1.weight"]


@st.composite
def base_states(draw) -> dict:
    """A small, valid state dict in one of the real layouts."""
    kind = draw(st.sampled_from(["basicsr", "esrgan-old", "bsrgan", "srvgg-prelu", "srvgg-plain"]))
    seed = draw(st.integers(0, 2**16))
    if kind.startswith("srvgg"):
        ch = draw(st.sampled_from([1, 3, 4]))
        return srvgg_state(num_feat=draw(st.integers(1, 6)), num_conv=draw(st.integers(0, 3)),
                           upscale=draw(st.integers(1, 4)), prelu=kind == "srvgg-prelu",
                           in_ch=ch, out_ch=ch, seed=seed)
    unshuffle = draw(st.sampled_from([1, 2, 4]))
    num_up = draw(st.integers(2 if unshuffle == 4 else 1 if unshuffle == 2 else 0, 3))
    sd = rrdbnet_state(num_feat=draw(st.integers(1, 6)), num_block=draw(st.integers(1, 2)),
                       num_grow_ch=draw(st.integers(1, 4)), num_upsample=num_up, unshuffle=unshuffle,
                       in_ch=3, out_ch=3, seed=seed)
    return {"basicsr": sd, "esrgan-old": to_old_esrgan(sd), "bsrgan": to_bsrgan(sd)}[kind]


def random_tensor(draw) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=5))
    dtype = draw(st.sampled_from(DTYPES))
    t = torch.randn(shape) if shape else torch.randn(())
    return t.to(dtype)


@st.composite
def mutated_objects(draw) -> object:
    """A base state dict after a few random mutations, possibly wrapped like a checkpoint."""
    sd = dict(draw(base_states()))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 4]))):  # often intact: the build path needs hits too
        keys = sorted(sd)
        op = draw(st.sampled_from(["drop", "add", "reshape", "dtype", "nan", "rename", "non_tensor"]))
        key = draw(st.sampled_from(keys)) if keys else "x"
        is_tensor = isinstance(sd.get(key), torch.Tensor)
        if op == "drop" and keys:
            del sd[key]
        elif op == "add":
            sd[draw(st.sampled_from(JUNK_NAMES) | st.text(max_size=12))] = random_tensor(draw)
        elif op == "reshape":
            sd[key] = random_tensor(draw)
        elif op == "dtype" and is_tensor:
            sd[key] = sd[key].to(draw(st.sampled_from(DTYPES)))
        elif op == "nan" and is_tensor and sd[key].is_floating_point() and sd[key].numel():
            sd[key] = sd[key].clone().view(-1).index_fill(0, torch.tensor([0]), float("nan")).view(sd[key].shape)
        elif op == "rename" and key in sd:
            sd[key.replace("1", "2", 1).replace("body", "Body", draw(st.integers(0, 1)))] = sd.pop(key)
        elif op == "non_tensor":
            sd[key] = draw(st.sampled_from([1, 2.5, "text", None, [1, 2], {"a": 1}]))
    prefix = draw(st.sampled_from(["", "", "module.", "netG.", "generator.", "model.module."]))
    obj: object = {prefix + k: v for k, v in sd.items()}
    for _ in range(draw(st.integers(0, 2))):
        wrapper = draw(st.sampled_from(["params_ema", "params", "state_dict", "model", "net", "netG", "other"]))
        obj = {wrapper: obj, "epoch": 1}
    return obj


def _check_call(fn, *args):
    """Call fn; a ModelLoadError is fine, any other exception fails the test."""
    try:
        return fn(*args)
    except ModelLoadError:
        event(f"{fn.__name__}: ModelLoadError")
        return None


def _check_built(descriptor, finite: bool = True) -> None:
    """A model that did build must run and give the promised shape."""
    x = torch.rand(1, descriptor.input_channels, 3, 5)
    with torch.no_grad():
        y = descriptor.model(x)
    assert y.shape == (1, descriptor.output_channels, 3 * descriptor.scale, 5 * descriptor.scale)
    if finite:
        assert torch.isfinite(y).all()


@FUZZ
@given(obj=mutated_objects(), act=st.sampled_from([None, None, "prelu", "relu", "leakyrelu", "gelu"]))
def test_fuzz_sniff_and_build(obj, act):
    state = unwrap_state_dict(obj)  # must never raise
    assert isinstance(state, dict)
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    spec = _check_call(sniff, state, act)
    if spec is None:
        event("sniff: not ours")
        return
    assert isinstance(spec, ModelSpec)
    assert spec.architecture in ("RRDBNet", "SRVGGNetCompact")
    assert spec.scale >= 1
    descriptor = _check_call(build_descriptor, spec)
    if descriptor is not None:
        event(f"built {spec.architecture}")
        _check_built(descriptor)


def _load_only_own_errors(path: Path, act=None):
    try:
        return load_model(path, act_type=act)
    except RealESRGANTiledError as e:
        assert path.name in str(e), f"error does not name the file: {e}"
        return None


@FUZZ
@given(obj=mutated_objects(), suffix=st.sampled_from([".pth", ".safetensors"]))
def test_fuzz_load_model_from_disk(obj, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz{suffix}"
        if suffix == ".safetensors":
            state = unwrap_state_dict(obj)  # safetensors holds only a flat tensor dict
            try:
                save(state, path)
            except Exception:  # e.g. complex dtypes safetensors cannot store: nothing to test
                return
        else:
            torch.save(obj, str(path))
        descriptor = _load_only_own_errors(path)
        if descriptor is not None and descriptor.architecture.name in ("RRDBNet", "SRVGGNetCompact"):
            _check_built(descriptor)


_VALID: dict = {}


def valid_file_bytes(suffix: str) -> bytes:
    """Bytes of a small valid model file (cached; a module-level helper rather than a
    fixture so hypothesis does not print kilobytes of it on failure)."""
    if not _VALID:
        sd = rrdbnet_state(num_feat=4, num_grow_ch=2)
        with tempfile.TemporaryDirectory() as d:
            _VALID[".pth"] = save({"params_ema": sd}, Path(d) / "v.pth").read_bytes()
            _VALID[".safetensors"] = save(sd, Path(d) / "v.safetensors").read_bytes()
            torch.save(sd, str(Path(d) / "v.ckpt"), _use_new_zipfile_serialization=False)  # legacy format
            _VALID[".ckpt"] = (Path(d) / "v.ckpt").read_bytes()
    return _VALID[suffix]


@FUZZ
@given(suffix=st.sampled_from([".pth", ".safetensors", ".ckpt"]),
       how=st.sampled_from(["random", "truncate", "flip", "splice"]),
       data=st.data())
def test_fuzz_damaged_bytes(suffix, how, data):
    good = valid_file_bytes(suffix)
    if how == "random":
        raw = data.draw(st.binary(max_size=4096))
    elif how == "truncate":
        raw = good[: data.draw(st.integers(0, len(good) - 1))]
    elif how == "flip":  # damage a few bytes, often in the header where parsers are most exposed
        raw = bytearray(good)
        rng = random.Random(data.draw(st.integers(0, 2**32)))
        limit = data.draw(st.sampled_from([200, len(good)]))
        for _ in range(data.draw(st.integers(1, 8))):
            raw[rng.randrange(min(limit, len(raw)))] = rng.randrange(256)
        raw = bytes(raw)
    else:  # valid start, random rest
        cut = data.draw(st.integers(0, len(good)))
        raw = good[:cut] + data.draw(st.binary(max_size=512))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"damaged{suffix}"
        path.write_bytes(raw)
        descriptor = _load_only_own_errors(path)
        if descriptor is not None:  # damage in padding, names or weight values can leave a loadable model
            _check_built(descriptor, finite=False)  # (a flipped exponent bit makes a finite but huge weight)
