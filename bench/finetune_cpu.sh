#!/usr/bin/env bash
# README's fine-tune table on this CPU: the commands README shows, on real photos held out whole.
#   bench/finetune_cpu.sh prepare   -> /tmp/finetune_cpu/photos: scikit-image's astronaut, chelsea, rocket, coffee and
#                                      motorcycle_left to train on, brick, camera and hubble_deep_field held out;
#                                      Debian opencv-doc's architecture photos split by scene (leuvenA/B + aero1/3
#                                      to train on, building + home held out)
#   bench/finetune_cpu.sh l1|gan    -> bench/results/finetune_{l1,gan}_cpu_DATE.json, the report, and .log, with
#                                      /usr/bin/time's CPU seconds
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${FINETUNE_DATA:-/tmp/finetune_cpu}  # outside the tree: nothing to ignore
DATE=$(date -u +%F)
case "${1:-}" in
  prepare)
    mkdir -p $DIR/photos/train $DIR/photos/val $DIR/arch/train $DIR/arch/val
    .venv/bin/python - "$DIR" <<'PY'
import sys

import skimage.data as d
from PIL import Image

train = {"astronaut": d.astronaut(), "chelsea": d.chelsea(), "rocket": d.rocket(), "coffee": d.coffee(),
         "motorcycle_left": d.stereo_motorcycle()[0]}
root = sys.argv[1]
val = {"brick": d.brick(), "camera": d.camera(), "hubble_deep_field": d.hubble_deep_field()}
for split, images in (("train", train), ("val", val)):
    for name, pixels in images.items():
        Image.fromarray(pixels).save(f"{root}/photos/{split}/{name}.png")
PY
    deb=$(mktemp -d)
    (cd "$deb" && apt-get download -q opencv-doc >/dev/null && dpkg -x opencv-doc_*.deb x)
    photos="$deb/x/usr/share/doc/opencv-doc/examples/data"
    cp "$photos"/{leuvenA,leuvenB,aero1,aero3}.jpg $DIR/arch/train/
    cp "$photos"/{building,home}.jpg $DIR/arch/val/
    rm -rf "$deb" ;;
  l1)  # issue 28's command: the fidelity fine-tune
    lscpu | grep "Model name"
    /usr/bin/time -f "cpu seconds: %U user + %S sys, %e s wall" .venv/bin/python -m realesrgan_tiled finetune \
      --data $DIR/photos/train --val $DIR/photos/val --base realesr-animevideov3-x4 -o /tmp/finetune_l1.safetensors \
      --iterations 120 --batch-size 4 --patch-size 128 --loss l1 --degradation bicubic --seed 0 --device cpu \
      --report bench/results/finetune_l1_cpu_$DATE.json --quiet 2>&1 | tee bench/results/finetune_l1_cpu_$DATE.log ;;
  gan)  # the default recipe (realesrgan degradation, gan loss, sharpened targets) at README's CPU count
    lscpu | grep "Model name"
    /usr/bin/time -f "cpu seconds: %U user + %S sys, %e s wall" .venv/bin/python -m realesrgan_tiled finetune \
      --data $DIR/arch/train --val $DIR/arch/val --base realesr-animevideov3-x4 -o /tmp/finetune_gan.safetensors \
      --iterations 100 --device cpu --report bench/results/finetune_gan_cpu_$DATE.json --quiet 2>&1 \
      | tee bench/results/finetune_gan_cpu_$DATE.log ;;
  *) echo "usage: bench/finetune_cpu.sh prepare|l1|gan" >&2; exit 2 ;;
esac
