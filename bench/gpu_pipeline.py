"""bench/gpu_check.py's sections for the GPU pipeline (engine/frames.py, engine/stream.py): a
video-sized IMAGE batch host to host against the network alone, a batch-size sweep, fp32 /
fp16 / uint8 output, host syncs per frame, and the network's achieved TFLOP/s against the
card's dense fp16 peak. Each takes the Checker (device, toy sizes on a dry run)."""
from __future__ import annotations

import copy
import time
import warnings

import torch

# dense fp16 tensor-core TFLOP/s (fp32 accumulate), from the vendors' data sheets
DENSE_FP16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0,
                     "RTX 4090": 165.0}


def card_peak(name: str) -> float | None:
    for key in sorted(DENSE_FP16_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key.lower() in name.lower():
            return DENSE_FP16_TFLOPS[key]
    return None


def conv_flops(net: torch.nn.Module, height: int, width: int) -> float:
    """Multiply-adds x 2 of every convolution of one forward at this input size (the network's
    useful work; activations and adds are noise beside it)."""
    total = [0.0]

    def count(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        total[0] += 2.0 * module.in_channels // module.groups * module.out_channels * k * output.shape[-2] * output.shape[-1]

    shapes = copy.deepcopy(net).to("meta")  # shapes only: no memory, no arithmetic
    for m in shapes.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(count)
    with torch.inference_mode():
        shapes(torch.empty(1, shapes.num_in_ch if hasattr(shapes, "num_in_ch") else 3, height, width, device="meta"))
    return total[0]


def _frames(checker, side_h: int, side_w: int, n: int) -> torch.Tensor:
    from gpu_check import photo

    big = photo(max(side_h, side_w))[0]
    return big[:side_h, :side_w].unsqueeze(0).expand(n, -1, -1, -1).contiguous()


def video_batch(checker) -> dict:
    """animevideov3 1080p -> 4K, a 64-frame IMAGE batch host to host, fp16 compute: fps per output
    dtype and per batch size, against the network alone on the same frames."""
    from realesrgan_tiled.engine import Choices, Host, upscale

    model = checker.models["realesr-animevideov3-x4"]
    h, w, n = checker.size(1080, 24), checker.size(1920, 32), checker.size(64, 4)
    images = _frames(checker, h, w, n)
    rows = {}

    def engine_fps(batch_size, out_dtype):
        host = Host(device=checker.device, output_dtype=out_dtype)
        seconds, result = checker.timed(lambda: upscale(images, model, Choices(batch_size=batch_size), host))
        return n / seconds, result.ran

    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("uint8", torch.uint8)):
        fps, ran = engine_fps(None, dtype)
        rows[f"engine_auto_batch_{name}_fps"] = round(fps, 2)
    rows["precision"] = ran.precision
    rows["sweep_uint8_fps"] = {str(b): round(engine_fps(b, torch.uint8)[0], 2) for b in (1, 2, 4, 8, 16) if b <= n}
    k = max(int(b) for b in rows["sweep_uint8_fps"])
    x = images[:k].movedim(-1, 1).to(checker.device)
    half = checker.device.type == "cuda"
    with torch.inference_mode(), torch.autocast(checker.device.type, dtype=torch.float16, enabled=half):
        model.to(checker.device)
        net_s, _ = checker.timed(model, x)
    rows["network_alone_fps"] = round(k / net_s, 2)
    best = max(rows["sweep_uint8_fps"].values())
    rows["engine_vs_network"] = round(best / rows["network_alone_fps"], 3)
    flops = conv_flops(model.network, h, w) * k
    rows["network_tflops"] = round(flops / net_s / 1e12, 2)
    name = torch.cuda.get_device_name(checker.device) if checker.device.type == "cuda" else "cpu"
    peak = card_peak(name)
    rows.update(card=name, dense_fp16_peak_tflops=peak,
                percent_of_peak=round(100 * rows["network_tflops"] / peak, 1) if peak else None,
                goals={"engine >= 0.85x network": rows["engine_vs_network"] >= 0.85, "fps >= 60": best >= 60})
    return {"passed": True, "frames": f"{n} x {w}x{h}", **rows}


def syncs_per_frame(checker) -> dict:
    if checker.device.type != "cuda":
        return {"passed": True, "skipped": "needs CUDA"}
    from realesrgan_tiled.engine import Choices, Host, upscale

    model = checker.models["realesr-animevideov3-x4"]
    images = _frames(checker, 540, 960, 16)
    t = time.perf_counter()
    syncs, result = count_syncs(
        lambda: upscale(images, model, Choices(batch_size=8), Host(device=checker.device, output_dtype=torch.uint8)))
    seconds, ran = time.perf_counter() - t, result.ran
    return {"passed": True, "syncs": syncs, "frames": 16, "per_frame": round(syncs / 16, 2), "tiles": ran.tiles,
            "seconds": round(seconds, 3)}


def compiled_network(checker) -> dict:
    """The network alone, eager channels-last fp16 (the engine's default) against torch.compile
    (inductor, fused LeakyReLU/adds) and against CUDA graphs ("reduce-overhead"): seconds per
    forward, compile time, and how close the compiled output is (PSNR against eager, >= 60 dB
    to be kept). It decides whether a ``compile`` choice earns its place in the engine."""
    if checker.device.type != "cuda":
        return {"passed": True, "skipped": "needs CUDA (inductor on these CPUs takes minutes per shape)"}
    rows = {}
    for name, (h, w) in (("RealESRGAN_x4plus", (1024, 1024)), ("realesr-animevideov3-x4", (1080, 1920))):
        net = checker.models[name].network.to(checker.device).eval()
        x = _frames(checker, h, w, 1).movedim(-1, 1).to(checker.device).to(memory_format=torch.channels_last)
        net = net.to(memory_format=torch.channels_last)
        row = {}
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            eager_s, eager = checker.timed(net, x)
            row["eager_s"] = round(eager_s, 4)
            for mode in ("default", "reduce-overhead"):  # max-autotune: minutes per shape, past the device budget
                try:
                    compiled = torch.compile(net, mode=mode, fullgraph=True, dynamic=False)
                    t = time.perf_counter()
                    compiled(x)
                    torch.cuda.synchronize()
                    row[f"{mode}_compile_s"] = round(time.perf_counter() - t, 1)
                    seconds, out = checker.timed(compiled, x)
                    mse = torch.mean((out.float().clamp(0, 1) - eager.float().clamp(0, 1)) ** 2).item()
                    row[f"{mode}_s"] = round(seconds, 4)
                    row[f"{mode}_speedup"] = round(eager_s / seconds, 3)
                    row[f"{mode}_psnr_vs_eager_db"] = round(10 * torch.log10(torch.tensor(1 / max(mse, 1e-12))).item(), 1)
                except Exception as e:  # noqa: BLE001 - a compile failure is a finding, not a crash of the check
                    row[f"{mode}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows[name] = row
    return {"passed": True, **rows}


def overlap(checker) -> dict:
    """The pipeline's copy lanes (engine/lanes.py) on and off: animevideov3 1080p -> 4K, uint8
    out, fps and whether both give the same bytes. Off CUDA both sides are the plain lanes."""
    from realesrgan_tiled.engine import Choices, Host, lanes, upscale

    model = checker.models["realesr-animevideov3-x4"]
    n = checker.size(32, 4)
    images = _frames(checker, checker.size(1080, 24), checker.size(1920, 32), n)
    rows, outs = {}, {}
    for on in (True, False):
        lanes.OVERLAP_ON_CUDA = on
        try:
            host = Host(device=checker.device, output_dtype=torch.uint8)
            seconds, result = checker.timed(lambda h=host: upscale(images, model, Choices(), h))
        finally:
            lanes.OVERLAP_ON_CUDA = True
        rows[f"overlap_{'on' if on else 'off'}_fps"] = round(n / seconds, 2)
        outs[on] = result.images
    same = torch.equal(outs[True], outs[False])
    rows["speedup"] = round(rows["overlap_on_fps"] / max(rows["overlap_off_fps"], 1e-9), 3)
    return {"passed": same, "same_bytes": same, "frames": n, **rows}


def device_accumulation(checker) -> dict:
    """The tile loop's device path (tiles add into a result on the device) against the host
    path: x4plus, a 2048 px photo in 512 px tiles, fp16; seconds, host syncs and PSNR between
    them. The dry run makes the CPU take the device path, so its code runs in CI."""
    from realesrgan_tiled.engine import run as engine_run

    model = checker.models["RealESRGAN_x4plus"]
    side, tile = checker.size(2048, 40), checker.size(512, 16)
    image = _frames(checker, side, side, 1)
    rows, outs = {}, {}
    for label, where in (("device", (checker.device.type,)), ("host", ())):
        engine_run.ACCUMULATE_ON = where
        try:
            seconds, result = checker.timed(checker.upscale, model, image, tile_size=tile)
            rows[f"{label}_s"] = round(seconds, 4)
            if checker.device.type == "cuda":
                rows[f"{label}_syncs"] = count_syncs(lambda: checker.upscale(model, image, tile_size=tile))[0]
        finally:
            engine_run.ACCUMULATE_ON = ("cuda",)
        outs[label] = result.images
    from gpu_check import psnr

    rows["psnr_device_vs_host_db"] = round(psnr(outs["device"], outs["host"]), 1)
    rows["tiles"] = result.ran.tiles
    return {"passed": rows["psnr_device_vs_host_db"] >= 60, **rows}


def count_syncs(fn) -> tuple[int, object]:
    """(host syncs CUDA's sync-debug mode warned about while ``fn`` ran, what ``fn`` returned)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught), result
