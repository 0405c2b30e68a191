"""spandrel_import.py: our modules import spandrel without loading torchvision (~165 MB of
resident memory in the CLI), and the torchvision names spandrel binds still work when called."""
from __future__ import annotations

import subprocess
import sys

CHECK = r"""
import sys
{first}
import realesrgan_tiled.loading
print("torchvision loaded after our import:", "torchvision" in sys.modules)
import torch
from spandrel.architectures.RestoreFormer import tv_normalize
x = torch.arange(12.0).reshape(3, 2, 2)
assert torch.equal(tv_normalize(x, [1.0] * 3, [2.0] * 3), (x - 1) / 2)
import torchvision
import torchvision.transforms.functional as F
assert hasattr(torchvision, "__version__") and F.normalize.__module__.startswith("torchvision")
print("ok")
"""


def _run(first: str) -> str:
    done = subprocess.run([sys.executable, "-c", CHECK.format(first=first)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_spandrel_without_torchvision_until_its_names_are_used():
    out = _run("")
    assert "torchvision loaded after our import: False" in out and out.rstrip().endswith("ok")


def test_a_host_that_loaded_torchvision_first_gets_a_plain_import():
    out = _run("import torchvision")
    assert "torchvision loaded after our import: True" in out and out.rstrip().endswith("ok")
