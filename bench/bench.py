"""Side-by-side CPU benchmark: our engine (each backend) vs ComfyUI core's path vs the other CPU
engines (bench/peers.py: ncnn with and without Winograd, OpenVINO, ONNX Runtime), same weights,
same photo, alternating, in one command.

    .venv/bin/python bench/bench.py            # x4plus 256x192, animevideov3 768x512, CLI peak RSS at 1024^2, 16 frames
    .venv/bin/python bench/bench.py --quick    # small photos, one round: a smoke check

"Core's path" is spandrel's own network (loaded from the same converted state dict) driven
by ComfyUI's ``comfy.utils.tiled_scale`` (tile 512, overlap 32, fp32) when COMFYUI_DIR is
set, else by ``core_tiled_scale`` below, a restatement of that algorithm. Every row runs in
its own fresh process (its time is that process's first upscale, its peak RSS its own), and
the sides alternate round by round, each keeping its fastest round. Peers that are not
installed are skipped with a note (pip install openvino onnxruntime onnx onnxscript).
Not a test: figures go into README.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


# ---- the competitor ------------------------------------------------------------------------

def core_tiled_scale(samples, function, tile=512, overlap=32, scale=4):
    """ComfyUI's tiled_scale (comfy/utils.py, 2025): tiles at range(0, L - overlap, tile - overlap),
    a linear feather of `overlap * scale` px on every tile side, normalised by the mask sum."""
    b, c, h, w = samples.shape
    out = torch.zeros((b, 3, h * scale, w * scale))
    div = torch.zeros_like(out)
    ys = range(0, h - overlap, tile - overlap) if h > tile else [0]
    xs = range(0, w - overlap, tile - overlap) if w > tile else [0]
    for y in ys:
        for x in xs:
            y0, x0 = max(0, min(h - overlap, y)), max(0, min(w - overlap, x))
            piece = samples[:, :, y0 : y0 + tile, x0 : x0 + tile]
            ps = function(piece)
            mask = torch.ones_like(ps)
            feather = overlap * scale
            for d in (2, 3):
                if feather >= mask.shape[d]:
                    continue
                for t in range(feather):
                    a = (t + 1) / feather
                    mask.narrow(d, t, 1).mul_(a)
                    mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(a)
            out[:, :, y0 * scale : y0 * scale + ps.shape[2], x0 * scale : x0 * scale + ps.shape[3]] += ps * mask
            div[:, :, y0 * scale : y0 * scale + ps.shape[2], x0 * scale : x0 * scale + ps.shape[3]] += mask
    return out / div


def _core_scaler():
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if comfy_dir:
        sys.path.insert(0, comfy_dir)
        try:
            import comfy.utils

            def run(samples, function, scale):
                return comfy.utils.tiled_scale(samples, function, tile_x=512, tile_y=512, overlap=32, upscale_amount=scale)

            return run, "comfy.utils.tiled_scale"
        except Exception as e:  # fall back to the restatement, and say so
            print(f"# could not import comfy.utils ({e}); using the restatement", file=sys.stderr)
    return (lambda samples, function, scale: core_tiled_scale(samples, function, scale=scale)), "restated tiled_scale"


# ---- inputs, models, FLOPs -----------------------------------------------------------------

def real_photo(height, width, frames=1):
    import skimage.data

    arr = skimage.data.rocket() if height <= 427 and width <= 640 else skimage.data.hubble_deep_field()
    if arr.shape[0] < height or arr.shape[1] < width:
        raise SystemExit(f"no bundled photo is {width}x{height} or larger")
    arr = arr[:height, :width, :3]
    t = torch.from_numpy(np.ascontiguousarray(arr)).float().div(255).unsqueeze(0)
    return t.repeat(frames, 1, 1, 1)


def load(name):
    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import bundled_model_path

    return load_model(bundled_model_path(name))


def spandrel_twin(ours):
    """spandrel's own network with the same weights (the model core ComfyUI would run)."""
    from spandrel import ModelLoader

    net = ours.model.net if hasattr(ours.model, "net") else ours.model
    return ModelLoader().load_from_state_dict(net.state_dict()).eval()


def flops_per_pixel(descriptor) -> float:
    """Multiply-adds x 2 of every convolution, per input pixel (measured on a 32x32 input)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total += 2 * out.numel() * (mod.in_channels // mod.groups) * k

    handles = [m.register_forward_hook(hook) for m in descriptor.model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        descriptor.model(torch.rand(1, 3, 32, 32))
    for h in handles:
        h.remove()
    return total / (32 * 32)


def gemm_peak_gflops(n=2048, repeats=10) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# ---- one row (run in a subprocess) ---------------------------------------------------------

def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """This process's resident high-water mark (VmHWM starts afresh at exec; ru_maxrss carries
    the forking parent's size over)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def run_row(model_name, who, height, width, frames, backend=None, output=None, precision=None):
    images = real_photo(height, width, frames)
    ours = load(model_name)
    fpp = flops_per_pixel(ours)
    baseline = current_rss()  # torch runtime, libraries, model and input, before any upscaling
    if who == "ours":
        from realesrgan_tiled.engine import Choices, upscale

        t = time.perf_counter()
        result = upscale(images, ours, Choices(backend=backend, precision=precision))
        seconds = time.perf_counter() - t
        out, ran = result.images, result.ran
        detail = f"{ran.backend}, tile {ran.tile_size} overlap {ran.overlap} {ran.precision}"
    elif who.startswith("plain"):  # the plain whole-map torch forward: core's path for an image under one tile
        dtype = torch.bfloat16 if who == "plain-bf16" else torch.float32
        model = spandrel_twin(ours)
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = model(images.movedim(-1, 1).contiguous()).float().clamp(0, 1).movedim(1, -1)
        seconds = time.perf_counter() - t
        detail = f"spandrel's network, whole image, {'bf16 autocast' if dtype != torch.float32 else 'fp32'}"
    else:
        core, detail = _core_scaler()
        model = spandrel_twin(ours)
        t = time.perf_counter()
        with torch.inference_mode():
            x = images.movedim(-1, 1)
            out = torch.cat([core(x[i : i + 1], lambda a: model(a), model.scale) for i in range(len(x))])
            out = out.clamp(0, 1).movedim(1, -1)
        seconds = time.perf_counter() - t
    rss = peak_rss()
    if output is not None:
        np.save(output, out[0].movedim(-1, 0).unsqueeze(0).float().numpy())
    pixels = frames * height * width
    return {
        "model": model_name, "who": who, "size": f"{frames}x{width}x{height}", "seconds": seconds,
        "px_per_s": pixels / seconds, "gflops": fpp * pixels / seconds / 1e9, "peak_rss": rss, "baseline_rss": baseline,
        "output_bytes": out.numel() * out.element_size(), "detail": detail,
        "checksum": float(out.double().mean()),
    }


def torch_import_rss() -> int:
    code = ("import torch\nwith open('/proc/self/status') as f:\n"
            "    print(next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmHWM:')))")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def _subprocess_row(*args):
    cmd = [sys.executable, __file__, "--row", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- peak RSS of the whole CLI job: ours vs core's path, file in, PNG out -------------------

CLI_WITH_PEAK = """
import atexit, runpy, sys
def report():
    with open("/proc/self/status") as f:
        print("PEAK_RSS", next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:")), file=sys.stderr)
atexit.register(report)
sys.argv = ["realesrgan_tiled", *sys.argv[1:]]
runpy.run_module("realesrgan_tiled", run_name="__main__")
"""


def core_file_job(model_name, source, target):
    """ComfyUI core's path for one file: LoadImage (PIL -> float32), Load Upscale Model (spandrel),
    Upscale Image (using Model) (tiled_scale 512/32, fp32), SaveImage (x255, clip, uint8, PNG)."""
    import spandrel  # noqa: F401  (first, the plain way, as ComfyUI has it: torchvision and all)
    from PIL import Image

    core, _ = _core_scaler()
    model = spandrel_twin(load(model_name))
    image = torch.from_numpy(np.array(Image.open(source).convert("RGB")).astype(np.float32) / 255.0)[None]
    with torch.inference_mode():
        s = core(image.movedim(-1, -3), lambda a: model(a), model.scale)
        s = torch.clamp(s.movedim(-3, -1), min=0, max=1.0)
    for i in s:
        Image.fromarray(np.clip(255.0 * i.cpu().numpy(), 0, 255).astype(np.uint8)).save(target, compress_level=4)
    print(json.dumps({"peak_rss": peak_rss()}))


def cli_peak_rss(who, model_name, source, workdir):
    """(peak RSS, seconds) of one whole job in its own process."""
    if who == "ours":
        cmd = [sys.executable, "-c", CLI_WITH_PEAK, "upscale", str(source), "-o", str(workdir), "--model", model_name, "--quiet"]
    else:
        cmd = [sys.executable, __file__, "--core-file", json.dumps([model_name, str(source), str(workdir / "core.png")])]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t
    if who == "ours":
        return int(done.stderr.rsplit("PEAK_RSS", 1)[1].split()[0]), seconds
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss"], seconds


def rss_rows(model_name, side, rounds):
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        workdir = Path(tmp)
        source = workdir / "photo.png"
        import skimage.data

        Image.fromarray(skimage.data.astronaut()).resize((side, side), Image.LANCZOS).save(source)
        best = {}
        for _ in range(rounds):
            for who in ("core", "ours"):
                rss, seconds = cli_peak_rss(who, model_name, source, workdir)
                best[who] = min(best.get(who, (rss, seconds)), (rss, seconds))
        return best


# ---- the side-by-side table ------------------------------------------------------------------

# side -> (who, backend, precision); then the peers
OUR_SIDES = {"core": ("core", None, None), "plain-fp32": ("plain-fp32", None, None), "plain-bf16": ("plain-bf16", None, None),
             "ours": ("ours", None, None), "ours-fp32": ("ours", None, "fp32"), "ours-bf16": ("ours", None, "bf16"),
             "ours-torch": ("ours", "torch", "fp32")}
LABELS = {"core": "ComfyUI core's path", "plain-fp32": "plain torch forward, whole image, fp32",
          "plain-bf16": "plain torch forward, whole image, bf16 autocast", "ours": "ours (auto backend, auto precision)",
          "ours-fp32": "ours (auto backend), --precision fp32", "ours-bf16": "ours (auto backend), --precision bf16",
          "ours-torch": "ours, --backend torch --precision fp32"}
SIDES = tuple(OUR_SIDES)


def side_row(side, model_name, h, w, output):
    who, backend, precision = OUR_SIDES[side]
    return _subprocess_row(model_name, who, h, w, 1, backend, output, precision)


def compare_rows(model_name, h, w, rounds, threads, peer_names, sides=SIDES):
    """Every side of one model on one photo, alternating for ``rounds``; each keeps its fastest."""
    import tempfile

    import peers

    photo = real_photo(h, w)
    best = {}
    with peers.Peers(model_name, photo, threads, repeats=1, peers=peer_names) as prepared, \
            tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        reference = np.clip(prepared.reference, 0, 1) if hasattr(prepared, "reference") else None
        for n in range(rounds):
            order = [*sides, *prepared.names]
            for side in order if n % 2 == 0 else order[::-1]:
                if side in SIDES:
                    output = Path(tmp) / f"{side}.npy"
                    row = side_row(side, model_name, h, w, str(output))
                    if reference is not None:
                        result = np.load(output)
                        row["max_abs_diff"] = float(np.abs(result.astype(np.float64) - reference).max())
                        row["psnr_db"] = peers.psnr(result, reference)
                    if side not in best or row["seconds"] < best[side]["seconds"]:
                        best[side] = row
                else:
                    best[side] = peers.keep_best(best.get(side), prepared.row(side))
    return best


def print_compare(model_name, w, h, best, rounds):
    ours = best["ours"]["seconds"]
    gib = 2**30
    print(f"\n| {model_name}, {w}x{h} photo | s (fastest of {rounds}) | ours' speed-up over it | peak RSS "
          "| max abs diff vs fp32 whole-image | PSNR vs fp32 | what ran |")
    print("|---|---|---|---|---|---|---|")
    for side, row in best.items():
        psnr = f"{row['psnr_db']:.1f} dB" if row.get("psnr_db") not in (None, float("inf")) else "-"
        if side in SIDES:
            print(f"| {LABELS[side]} | {row['seconds']:.2f} | {row['seconds'] / ours:.2f}x | {row['peak_rss'] / gib:.2f} GiB | "
                  f"{row.get('max_abs_diff', float('nan')):.1e} | {psnr} | {row['detail']} |")
        elif row.get("first_seconds") is None:
            print(f"| {side} | - | - | - | - | - | skipped: {row['skipped_reason']} |")
        else:
            note = row["detail"] + (f"; DOES NOT COUNT: {row['skipped_reason']}" if row["skipped_reason"] else "")
            print(f"| {side} | {row['first_seconds']:.2f} | {row['first_seconds'] / ours:.2f}x | "
                  f"{row['peak_rss_bytes'] / gib:.2f} GiB | {row['max_abs_diff']:.1e} | {psnr} | {note} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--core-file", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small photos, one round")
    parser.add_argument("--rounds", type=int, help="alternating rounds per side (default 3; --quick: 1)")
    parser.add_argument("--models", help="comma-separated subset of the two models")
    parser.add_argument("--tables-only", action="store_true", help="only the side-by-side tables (no RSS job, no batch)")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ", ".join(SIDES))
    parser.add_argument("--peers", default="ncnn-winograd,openvino,openvino-default,onnxruntime,ncnn-direct",
                        help="comma-separated peers (bench/peers.py), or '' for none")
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(*json.loads(args.row))))
        return
    if args.core_file:
        core_file_job(*json.loads(args.core_file))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    rounds = args.rounds or (1 if args.quick else 3)
    threads = torch.get_num_threads()
    peer_names = [p for p in args.peers.split(",") if p]
    sizes = {"RealESRGAN_x4plus": (64, 96) if args.quick else (192, 256),
             "realesr-animevideov3-x4": (128, 192) if args.quick else (512, 768)}
    peak_before = gemm_peak_gflops()
    _, core_detail = _core_scaler()
    from realesrgan_tiled.runtimes.backend import cpu_flags, cpu_name

    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "sve") if f in cpu_flags()]
    print(f"# {cpu_name()} ({', '.join(isa) or platform.machine()}), {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{threads} threads; core's path: {core_detail}; every row is a fresh process's first run", flush=True)
    gflops = {}
    if args.models:
        sizes = {n: sizes[n] for n in args.models.split(",")}
    for name, (h, w) in sizes.items():  # each table as soon as it is measured
        table = compare_rows(name, h, w, rounds, threads, peer_names, [x for x in args.sides.split(",") if x])
        print_compare(name, w, h, table, rounds)
        gflops[name] = table["ours"]
        sys.stdout.flush()
    if args.tables_only:
        return
    rss_side = 256 if args.quick else 1024
    rss = rss_rows("realesr-animevideov3-x4", rss_side, 1 if args.quick else 2)
    gib = 2**30
    (core_rss, core_s), (ours_rss, ours_s) = rss["core"], rss["ours"]
    print(f"\nWhole job, the {rss_side}x{rss_side} astronaut PNG -> x4 PNG (realesr-animevideov3-x4), peak RSS of "
          f"the process: core's path {core_rss / gib:.2f} GiB ({core_s:.1f} s), ours (CLI) {ours_rss / gib:.2f} GiB "
          f"({ours_s:.1f} s): {ours_rss / core_rss:.2f}x core's", flush=True)
    batch_model = "realesr-animevideov3-x4"
    frames = _subprocess_row(batch_model, "ours", 128 if args.quick else 512, 128 if args.quick else 512, 16)
    model_bytes = sum(p.numel() * 4 for p in load(batch_model).model.parameters())
    budget = frames["output_bytes"] + model_bytes + 0.5 * 2**30
    added = frames["peak_rss"] - frames["baseline_rss"]
    print(f"\n16-frame batch {frames['size']} x4 ({batch_model}, ours, {frames['detail']}): {frames['seconds']:.1f} s, "
          f"peak RSS {frames['peak_rss'] / gib:.2f} GiB vs budget output+model+0.5 GiB = {budget / gib:.2f} GiB "
          f"({'within' if frames['peak_rss'] <= budget else 'OVER'}).\n"
          f"Of that peak, {frames['baseline_rss'] / gib:.2f} GiB was there before upscaling (torch runtime, "
          f"libraries, model, input; `import torch` alone: {torch_import_rss() / gib:.2f} GiB) "
          f"and upscaling added {added / gib:.2f} GiB: the {frames['output_bytes'] / gib:.2f} GiB "
          f"output + {(added - frames['output_bytes']) / 2**20:.0f} MiB working set.")
    # the peak is measured before and after the rows and the higher one kept: on a shared
    # machine a single measurement can land in a slow moment and flatter the % column
    peak = max(peak_before, gemm_peak_gflops())
    print(f"\nfp32 GEMM peak {peak:.1f} GFLOP/s (torch.mm 2048^2, the higher of a measurement before and one after "
          "the rows). Ours, in direct-convolution work per second (Winograd does fewer multiplies, so ncnn can pass "
          "the GEMM peak): " + "; ".join(f"{n} {r['gflops']:.1f} GFLOP/s ({100 * r['gflops'] / peak:.0f} %)"
                                          for n, r in gflops.items()))


if __name__ == "__main__":
    main()
