#!/usr/bin/env bash
# The engine's GPU check (bench/gpu_check.py) in one call of the device tool, and its CPU dry run.
#   here, once:       bench/gpu_check.sh prepare   -> .gpu_check/: the spandrel wheel the device image lacks,
#                                                     the weights as .safetensors (x4plus in fp16: the 64 MiB carry limit)
#   the device tool:  run(command="bench/gpu_check.sh run", carry=[".gpu_check"], timeout_s=540)
#                     -> $OUT/gpu_check.json (about 8 min on an H100)
#   any CPU (CI):     bench/gpu_check.sh dry-run   -> every section at toy sizes
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
  prepare)
    mkdir -p .gpu_check/whl .gpu_check/models
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .gpu_check/whl "spandrel==0.4.2" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python - <<'PY'
import torch
from safetensors.torch import save_file
from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.loading import load_model
for name, dtype in (("RealESRGAN_x4plus", torch.float16), ("RealESRGAN_x4plus_anime_6B", torch.float16),
                    ("realesr-animevideov3-x4", torch.float32)):
    sd = load_model(bundled_model_path(name)).network.state_dict()
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, f".gpu_check/models/{name}.safetensors")
PY
    du -sh .gpu_check ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu_check/whl/*.whl
    mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/realesrgan_tiled  # the repository root is the package
    export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    python3 bench/gpu_check.py --models .gpu_check/models --out "${OUT:-/tmp}/gpu_check.json" ;;
  dry-run)
    .venv/bin/python bench/gpu_check.py --dry-run ;;
  *) echo "usage: bench/gpu_check.sh prepare|run|dry-run" >&2; exit 2 ;;
esac
