#!/usr/bin/env bash
# The fine-tuning evidence run on a lent GPU, in one call of the device tool.
#   here, once:       bench/finetune_gpu.sh prepare  -> .finetune_gpu/: the spandrel wheel, the ST-LPIPS weights in
#                                                       fp16 (the 64 MiB carry limit), animevideov3's weights, and
#                                                       the opencv-doc architecture photos split by scene
#   the device tool:  run(command="bench/finetune_gpu.sh run ITERATIONS", carry=[".finetune_gpu"])
#                     -> $OUT/finetune_report.json, $OUT/finetune_log.txt
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.finetune_gpu
case "${1:-run}" in
  prepare)
    mkdir -p $DIR/whl $DIR/site/stlpips_pytorch/weights/vST0.0 $DIR/models $DIR/photos/train $DIR/photos/val
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d $DIR/whl "spandrel==0.4.2" 2>&1 | grep -v "^WARNING: Location" || true
    touch $DIR/site/stlpips_pytorch/__init__.py
    .venv/bin/python - <<'PY'
import importlib.util
from pathlib import Path

import torch
from safetensors.torch import save_file

from realesrgan_tiled.loading.bundled import bundled_model_path
from realesrgan_tiled.loading import load_model

source = Path(list(importlib.util.find_spec("stlpips_pytorch").submodule_search_locations)[0]) / "weights/vST0.0"
for name in ("vgg_shift_tolerant.pth", "alex_shift_tolerant.pth"):
    state = torch.load(source / name, map_location="cpu", weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
               f".finetune_gpu/site/stlpips_pytorch/weights/vST0.0/{name}")
sd = load_model(bundled_model_path("realesr-animevideov3-x4")).network.state_dict()
save_file({k: v.contiguous() for k, v in sd.items()}, ".finetune_gpu/models/realesr-animevideov3-x4.safetensors")
PY
    deb=$(mktemp -d)
    (cd "$deb" && apt-get download -q opencv-doc >/dev/null && dpkg -x opencv-doc_*.deb x)
    photos="$deb/x/usr/share/doc/opencv-doc/examples/data"
    cp "$photos"/{leuvenA,leuvenB,aero1,aero3}.jpg $DIR/photos/train/   # two scenes to train on
    cp "$photos"/{building,home}.jpg $DIR/photos/val/                    # two other scenes held out
    rm -rf "$deb"
    du -sh $DIR ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $DIR/whl/*.whl
    mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/realesrgan_tiled
    export PYTHONPATH=/tmp/pkg:/tmp/site:$PWD/$DIR/site PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total --format=csv || true
    timeout -s INT 270 python3 -m realesrgan_tiled finetune --data $DIR/photos/train --val $DIR/photos/val \
      --base $DIR/models/realesr-animevideov3-x4.safetensors -o /tmp/tuned.safetensors --iterations "${2:-1000}" \
      --device cuda --report "${OUT:-/tmp}/finetune_report.json" --quiet 2>&1 | tee "${OUT:-/tmp}/finetune_log.txt" ;;
  *) echo "usage: bench/finetune_gpu.sh prepare|run [ITERATIONS]" >&2; exit 2 ;;
esac
