"""Hardening: malicious pickles never run, and damaged files end in a ModelLoadError whose
message names the file and what is wrong, never a raw torch / safetensors exception."""
from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch

from realesrgan_tiled.errors import ModelLoadError
from realesrgan_tiled.loading import load_model

from .model_fixtures import rrdbnet_state, save, srvgg_state, to_old_esrgan

# ---- malicious pickles ---------------------------------------------------------------------------


class OpenPayload:
    """Unpickling calls builtins.open(marker, 'w'): creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class SystemPayload(OpenPayload):
    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class ExecPayload(OpenPayload):
    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


PAYLOADS = {"open": (OpenPayload, "open"), "os.system": (SystemPayload, "system"), "exec": (ExecPayload, "exec")}


def _write_malicious(path: Path, payload, how: str, nested: bool) -> None:
    tensors = rrdbnet_state(num_feat=4, num_grow_ch=4)
    obj = {"params_ema": dict(tensors, evil=payload)} if nested else {"evil": payload, **tensors}
    if how == "zip":
        torch.save(obj, str(path))
    elif how == "legacy":
        torch.save(obj, str(path), _use_new_zipfile_serialization=False)
    else:  # a bare pickle stream, as an attacker would hand-craft it
        path.write_bytes(pickle.dumps(payload, protocol=2))


@pytest.mark.parametrize("suffix", [".pth", ".ckpt", ".pt", ".bin"])
@pytest.mark.parametrize("how", ["zip", "legacy", "raw"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("nested", [False, True], ids=["top", "in-params_ema"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, suffix, how, payload, nested):
    marker = tmp_path / "PWNED"
    cls, global_name = PAYLOADS[payload]
    path = tmp_path / f"evil{suffix}"
    _write_malicious(path, cls(marker), how, nested)
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    msg = str(err.value)
    assert f"evil{suffix}" in msg
    assert "refused" in msg and "malicious" in msg
    assert global_name in msg  # names the global it would have called
    assert not marker.exists()


# ---- damaged files -----------------------------------------------------------------------------


def _rrdb() -> dict:
    return rrdbnet_state(num_feat=8, num_block=1, num_grow_ch=4)


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def truncated_pth(d):
    good = save(_rrdb(), d / "full.pth").read_bytes()
    return _write(d / "cut.pth", good[: len(good) // 2]), r"cut\.pth: not a readable PyTorch checkpoint"


def truncated_safetensors(d):
    good = save(_rrdb(), d / "full.safetensors").read_bytes()
    return _write(d / "cut.safetensors", good[:-100]), r"cut\.safetensors: not a valid \.safetensors file"


def empty_pth(d):
    return _write(d / "empty.pth", b""), r"empty\.pth: the file is empty \(0 bytes\)"


def empty_safetensors(d):
    return _write(d / "empty.safetensors", b""), r"empty\.safetensors: the file is empty \(0 bytes\)"


def random_pth(d):
    return _write(d / "noise.pth", os.urandom(4096)), r"noise\.pth: not a readable PyTorch checkpoint"


def pickle_garbage_pth(d):
    # starts like a pickle, then opcodes the restricted unpickler does not know: corrupt, not malicious
    return _write(d / "garbage.pth", b"\x80\x02garbage" * 10), r"garbage\.pth: not a readable PyTorch checkpoint"


def random_safetensors(d):
    return _write(d / "noise.safetensors", os.urandom(4096)), r"noise\.safetensors: not a valid \.safetensors file"


def safetensors_offsets_past_end(d):
    header = {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}
    return _write(d / "lying.safetensors", _safetensors_bytes(header, b"\0" * 16)), r"lying\.safetensors: not a valid"


def safetensors_bad_json(d):
    raw = b"{not json"
    return _write(d / "json.safetensors", struct.pack("<Q", len(raw)) + raw + b"\0" * 8), r"json\.safetensors: not a valid"


def safetensors_huge_header(d):
    return _write(d / "huge.safetensors", struct.pack("<Q", 2**62) + b"{}"), r"huge\.safetensors: not a valid"


def safetensors_header_longer_than_file(d):
    return _write(d / "long.safetensors", struct.pack("<Q", 1000) + b"{}"), r"long\.safetensors: not a valid"


def safetensors_bad_dtype(d):
    header = {"w": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}
    return _write(d / "dtype.safetensors", _safetensors_bytes(header, b"\0" * 8)), r"dtype\.safetensors: not a valid"


def non_image_model(d):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    return save(dict(net.state_dict()), d / "classifier.safetensors"), \
        r"classifier\.safetensors: not a supported upscale model.*first keys: .*0\.weight"


def wrong_shape(d):
    sd = _rrdb()
    sd["body.0.rdb1.conv2.weight"] = torch.zeros(4, 11, 3, 3)
    return save(sd, d / "shape.pth"), \
        r"shape\.pth: weights do not fit RRDBNet: wrong shape: body\.0\.rdb1\.conv2\.weight \(4, 11, 3, 3\) \(expected \(4, 12, 3, 3\)\)"


def wrong_shape_srvgg(d):
    sd = srvgg_state(num_feat=8, num_conv=2)
    sd["body.2.weight"] = torch.zeros(8, 8, 5, 5)
    return save(sd, d / "vgg.safetensors"), r"vgg\.safetensors: weights do not fit SRVGGNetCompact: wrong shape: body\.2\.weight"


def one_dimensional_conv_first(d):
    sd = _rrdb()
    sd["conv_first.weight"] = torch.zeros(8)
    return save(sd, d / "flat.pth"), r"flat\.pth: looks like RRDBNet but conv_first\.weight has shape \(8,\)"


def missing_keys(d):
    sd = _rrdb()
    del sd["conv_hr.weight"], sd["body.0.rdb2.conv5.bias"]
    return save(sd, d / "missing.pth"), \
        r"missing\.pth: weights do not fit RRDBNet: missing 2 weight\(s\): body\.0\.rdb2\.conv5\.bias, conv_hr\.weight"


def missing_conv_last(d):
    sd = _rrdb()
    del sd["conv_last.weight"]
    return save(sd, d / "nolast.pth"), r"nolast\.pth: looks like RRDBNet but the weight conv_last\.weight is missing"


def missing_old_esrgan_tail(d):
    sd = to_old_esrgan(_rrdb())
    for k in [k for k in sd if k.startswith(("model.8.", "model.10."))]:
        del sd[k]
    return save(sd, d / "old.pth"), \
        r"old\.pth: looks like RRDBNet but its layers after the trunk \(model\.3, model\.6\) are not the original ESRGAN"


def extra_keys(d):
    sd = dict(_rrdb(), **{"foo.weight": torch.zeros(3), "conv_up3.weight": torch.zeros(8, 8, 3, 3)})
    return save(sd, d / "extra.safetensors"), r"extra\.safetensors: weights do not fit RRDBNet: .*unexpected weight\(s\): .*foo\.weight"


def nan_weights(d):
    sd = _rrdb()
    sd["body.0.rdb3.conv4.weight"][0, 0, 1, 1] = float("nan")
    return save(sd, d / "nan.safetensors"), r"nan\.safetensors: weight body\.0\.rdb3\.conv4\.weight contains NaN or Inf"


def inf_weights_in_spandrel_model(d):
    from spandrel.architectures.SPAN import SPAN

    sd = dict(SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8).state_dict())
    sd["conv_1.sk.weight"][0] = float("inf")
    return save(sd, d / "span.pth"), r"span\.pth: weight conv_1\.sk\.weight contains NaN or Inf"


def integer_weights(d):
    sd = _rrdb()
    sd["conv_body.weight"] = torch.ones(8, 8, 3, 3, dtype=torch.int64)
    return save(sd, d / "int.safetensors"), r"int\.safetensors: weight conv_body\.weight has dtype torch\.int64, expected floating point"


def bool_weights_srvgg(d):
    sd = srvgg_state(num_feat=8, num_conv=1)
    sd["body.1.weight"] = torch.ones(8, dtype=torch.bool)
    return save(sd, d / "bool.pth"), r"bool\.pth: weight body\.1\.weight has dtype torch\.bool"


def zero_sized_weights(d):
    sd = srvgg_state(num_feat=8, num_conv=1)
    sd["body.0.weight"] = torch.zeros(8, 0, 3, 3)
    return save(sd, d / "zero.pth"), r"zero\.pth: looks like SRVGGNetCompact but body\.0\.weight has shape \(8, 0, 3, 3\)"


def no_tensors(d):
    path = save({"epoch": 10, "lr": 1e-4, "note": "just metadata"}, d / "meta.ckpt")
    return path, r"meta\.ckpt: no model weights found: the file holds a dict with keys epoch \(int\)"


CASES = [truncated_pth, truncated_safetensors, empty_pth, empty_safetensors, random_pth, pickle_garbage_pth,
         random_safetensors, safetensors_offsets_past_end, safetensors_bad_json, safetensors_huge_header,
         safetensors_header_longer_than_file, safetensors_bad_dtype, non_image_model, wrong_shape,
         wrong_shape_srvgg, one_dimensional_conv_first, missing_keys, missing_conv_last, missing_old_esrgan_tail,
         extra_keys, nan_weights, inf_weights_in_spandrel_model, integer_weights, bool_weights_srvgg,
         zero_sized_weights, no_tensors]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_damaged_file_gives_clear_error(tmp_path, case):
    path, expected = case(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    assert err.type is ModelLoadError
    import re

    assert re.search(expected, str(err.value)), str(err.value)
    assert "Traceback" not in str(err.value)
    assert err.value.__cause__ is None or isinstance(err.value.__cause__, ModelLoadError)
