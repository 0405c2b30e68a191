"""Every model file users have: the wrappers trainers save, TorchScript archives, whole pickled
modules, and the ESRGAN variants spandrel handles. Real animevideov3 / x4plus weights where the
format is the point; each loaded model is checked against the plain state dict's model (the
oracle) on a real photo."""
from __future__ import annotations

import warnings

import pytest
import torch

from realesrgan_tiled.archs.srvgg.network import SRVGGNetCompact
from realesrgan_tiled.errors import ModelLoadError
from realesrgan_tiled.loading import load_model
from realesrgan_tiled.loading.bundled import bundled_model_path

from .conftest import photo, upscaled
from .model_fixtures import save
from .test_hostile_files import SystemPayload


@pytest.fixture(scope="module")
def compact_weights() -> dict:
    """The real realesr-animevideov3 x4 weights as a plain state dict."""
    network = load_model(bundled_model_path("realesr-animevideov3-x4")).network
    return {k: v.clone() for k, v in network.state_dict().items()}


@pytest.fixture(scope="module")
def reference(compact_weights, tmp_path_factory):
    """Output of the plain .pth on a real photo crop: what every other format must reproduce."""
    path = save(compact_weights, tmp_path_factory.mktemp("ref") / "plain.pth")
    return upscaled(load_model(path), photo("astronaut", (24, 32)))


def _traced(weights: dict) -> torch.jit.ScriptModule:
    net = SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4).eval()
    net.load_state_dict(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated, but users' files exist
        return torch.jit.trace(net, torch.rand(1, 3, 16, 16))


WRITERS = {
    "legacy pickle": lambda sd, p: torch.save(sd, str(p), _use_new_zipfile_serialization=False),
    "model_state_dict": lambda sd, p: torch.save({"model_state_dict": sd, "epoch": 7}, str(p)),
    "params-ema": lambda sd, p: torch.save({"params-ema": sd}, str(p)),
    "single-key wrapper": lambda sd, p: torch.save({"anything": sd}, str(p)),
    "nested wrappers and module. prefix": lambda sd, p: torch.save(
        {"checkpoint": {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, "optimizer": {"lr": 0.1}}, str(p)),
    "weights beside other entries": lambda sd, p: torch.save({"weights": sd, "config": {"scale": 4}, "step": 3}, str(p)),
    "TorchScript (jit.trace)": lambda sd, p: _traced(sd).save(str(p)),
}


@pytest.mark.parametrize("how", list(WRITERS))
def test_every_format_loads_and_gives_the_plain_models_output(how, compact_weights, reference, tmp_path):
    path = tmp_path / "model.pt"
    WRITERS[how](compact_weights, path)
    model = load_model(path)
    assert model.scale == 4
    assert torch.equal(upscaled(model, photo("astronaut", (24, 32))), reference)


def test_torchscript_is_read_without_running_it(compact_weights, tmp_path):
    """A TorchScript archive whose data pickle names another global is refused, and the
    global never runs (the archive is otherwise valid)."""
    import zipfile

    good = tmp_path / "good.pt"
    _traced(compact_weights).save(str(good))
    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                import pickle

                data = pickle.dumps(SystemPayload(marker), protocol=2)
            dst.writestr(item, data)
    with pytest.raises(ModelLoadError, match=r"evil\.pt: refused to load — this TorchScript archive's data asks for "
                                             r"code beyond tensors \(.*posix\.system"):
        load_model(evil)
    assert not marker.exists()


def test_a_whole_pickled_module_is_refused_with_how_to_resave(compact_weights, tmp_path):
    net = SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4)
    net.load_state_dict(compact_weights)
    path = tmp_path / "whole.pth"
    torch.save(net, str(path))
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    message = str(e.value)
    assert message.startswith("whole.pth: holds a whole pickled model (")
    assert "torch.save(model.state_dict(), 'model.pth')" in message and "may be malicious" not in message


def test_a_hostile_pickle_posing_as_a_module_is_still_called_hostile(tmp_path):
    """torch.nn globals next to os.system: the warning about malice wins."""
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "posing.pth"
    torch.save({"layer": torch.nn.Conv2d(3, 3, 3), "evil": SystemPayload(marker)}, str(path))
    with pytest.raises(ModelLoadError, match="it may be malicious"):
        load_model(path)
    assert not marker.exists()
