"""One-shot GPU check of the engine (issue 14), run by bench/gpu_check.sh in one call of the
device tool; ``--dry-run`` runs every section on the CPU at toy sizes (CI runs it, so it cannot
rot). Prints one JSON report; each section says what it measured and whether it passed.

    python bench/gpu_check.py [--dry-run] [--models DIR] [--out REPORT.json]

DIR holds the weights as .safetensors (bench/gpu_check.sh prepare writes them); without it the
bundled models are loaded. Sections: environment; fidelity of every model on the device (fp32,
fp16, bf16) against the CPU in fp32; tiled vs whole; automatic tile and peak memory against the
engine's estimate (at 1024 px and past 2**31 elements); throughput, engine vs the network alone,
cudnn.benchmark off/on; layout (our buffer trunk vs spandrel's torch.cat,
NCHW vs channels-last); against core's fp32 tiled path; a real OOM under a memory cap; the NaN
guard; cancel inside a tile; host syncs per tile.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
import traceback
from pathlib import Path

import gpu_pipeline  # bench/, beside this script
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # model_fixtures: test models shared with the tests


def photo(side: int) -> torch.Tensor:
    import numpy as np
    import skimage.data

    arr = skimage.data.astronaut()[..., :3]
    reps = math.ceil(side / arr.shape[0])
    arr = np.tile(arr, (reps, reps, 1))[:side, :side]
    return torch.from_numpy(arr.copy()).float().div(255).unsqueeze(0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)


class Checker:
    def __init__(self, device: torch.device, dry: bool, models: dict):
        self.device, self.dry, self.models = device, dry, models
        self.sections: dict[str, dict] = {}

    def size(self, real: int, toy: int) -> int:
        return toy if self.dry else real

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn, *args, **kwargs):
        """(seconds, result) of a second call ``fn(*args, **kwargs)`` (the first warms up),
        synchronised with the device."""
        fn(*args, **kwargs)
        self.sync()
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        self.sync()
        return time.perf_counter() - t, result

    def run(self, name: str, fn) -> None:
        t = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # one failed section must not hide the others
            result = {"passed": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
        result["seconds"] = round(time.perf_counter() - t, 2)
        self.sections[name] = result
        print(json.dumps({name: result})[:600], file=sys.stderr, flush=True)

    def upscale(self, model, images, device=None, **choices):
        from realesrgan_tiled.engine import Choices, Host, upscale

        host = Host(device=device or self.device, **choices.pop("host", {}))
        return upscale(images, model, Choices(**choices), host)

    # ---------------------------------------------------------------- sections
    def environment(self) -> dict:
        from realesrgan_tiled.engine.settings import native_bf16

        env = {"torch": torch.__version__, "device": str(self.device), "dry_run": self.dry}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            env.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                       capability=list(torch.cuda.get_device_capability(self.device)), cuda=torch.version.cuda,
                       cudnn=torch.backends.cudnn.version(), native_bf16=native_bf16(self.device),
                       cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
        return {"passed": True, **env}

    def fidelity(self) -> dict:
        side, rows, ok = self.size(128, 24), {}, True
        image = photo(side)
        for name, model in self.models.items():
            reference = self.upscale(model, image, device="cpu", precision="fp32").images
            row = {}
            for precision in ("fp32_no_tf32", "fp32", "fp16", "bf16"):
                if self.dry and precision != "fp32":
                    continue  # half precision on the CPU says nothing about the GPU
                # "fp32" keeps torch's default, which lets cuDNN convs use TF32 on Ampere and later
                with torch.backends.cudnn.flags(enabled=True, allow_tf32=precision != "fp32_no_tf32"):
                    out = self.upscale(model, image, precision=precision[:4]).images
                diff = float((out - reference).abs().max())
                good = {"fp32_no_tf32": diff <= 1e-4, "fp32": psnr(out, reference) >= 60}.get(precision, psnr(out, reference) >= 45)
                row[precision] = {"max_abs_diff": diff, "psnr_db": round(psnr(out, reference), 2), "passed": good}
                ok &= good
            rows[name] = row
        return {"passed": ok, "input": f"{side}x{side}", "models": rows}

    def tiled_vs_whole(self) -> dict:
        model = self.models["RealESRGAN_x4plus"]
        side = self.size(256, 96)
        image = photo(side)
        precision = "fp32" if self.dry else "fp16"
        whole = self.upscale(model, image, tile_size=side, precision=precision).images
        tiled = self.upscale(model, image, tile_size=side * 2 // 3, precision=precision).images
        value = psnr(tiled, whole)
        return {"passed": value >= 50, "psnr_db": round(value, 2), "precision": precision}

    def auto_tile_and_memory(self) -> dict:
        from realesrgan_tiled.engine.device import call_model
        from realesrgan_tiled.engine.memory import model_cost
        from realesrgan_tiled.engine.run import HOME_BYTES_PER_OUTPUT_PIXEL

        model, rows, ok = self.models["RealESRGAN_x4plus"], {}, True
        for side in (self.size(1024, 32), self.size(2048, 48)):  # 2048 x4: 64 x 8192^2 > 2**31 elements
            image = photo(side)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
                before = torch.cuda.memory_allocated(self.device)
            ran = self.upscale(model, image).ran
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(ran.precision, torch.float32)
            cost = model_cost(model, self.device, dtype, call_model)
            estimate = cost.fixed + (cost.per_pixel + HOME_BYTES_PER_OUTPUT_PIXEL * 16) * ran.tile_size**2
            row = {"tile": ran.tile_size, "tiles": ran.tiles, "estimate_gib": round(estimate / 2**30, 2)}
            if self.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(self.device) - before
                row["peak_gib"] = round(peak / 2**30, 2)
                row["passed"] = peak <= estimate * 1.1
                ok &= row["passed"]
            rows[f"{side}px"] = row
        return {"passed": ok, "runs": rows}

    def throughput(self) -> dict:
        rows = {}
        cases = [("RealESRGAN_x4plus", self.size(1024, 32)), ("realesr-animevideov3-x4", self.size(1080, 24))]
        for name, side in cases:
            model = self.models[name]
            image = photo(side)
            row = {}
            for benchmark in (False, True):
                torch.backends.cudnn.benchmark = benchmark  # with it on, the warm-up call autotunes
                engine_s, result = self.timed(self.upscale, model, image)
                row[f"engine_s_benchmark_{'on' if benchmark else 'off'}"] = round(engine_s, 4)
            torch.backends.cudnn.benchmark = False
            ran = result.ran
            x = image.movedim(-1, 1).to(self.device)
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(ran.precision, torch.float32)
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
                model.to(self.device)
                net_s, _ = self.timed(model, x)
                model.to("cpu")
            row.update(network_alone_s=round(net_s, 4), busy_percent=round(100 * net_s / max(engine_s, 1e-9), 1),
                       precision=ran.precision, tiles=ran.tiles, input=f"{side}x{side}")
            rows[name] = row
        return {"passed": True, "runs": rows}

    def engine_profile(self) -> dict:
        """Where an engine call's time goes (cProfile, top functions by own time; device work
        shows up at the sync that waits for it), and a bare device-to-host copy of the result's size."""
        import cProfile
        import io
        import pstats

        rows = {}
        for name, side in (("RealESRGAN_x4plus", self.size(1024, 32)), ("realesr-animevideov3-x4", self.size(1080, 24))):
            model, image = self.models[name], photo(side)
            self.upscale(model, image)  # warm
            self.sync()
            profiler = cProfile.Profile()
            profiler.enable()
            self.upscale(model, image)
            self.sync()
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
            lines = [line.strip() for line in text.getvalue().splitlines() if line.strip()]
            result = torch.empty((3, side * 4, side * 4), device=self.device)
            copy_s, _ = self.timed(result.cpu)
            pinned = torch.empty(result.shape, pin_memory=self.device.type == "cuda")
            pinned_s, _ = self.timed(pinned.copy_, result)
            row = {"top": lines[-16:], "plain_copy_home_s": round(copy_s, 4), "copy_into_pinned_s": round(pinned_s, 4)}
            if self.device.type == "cuda":
                from realesrgan_tiled.engine.device import _copy_home_pinned

                row["engine_copy_home_s"] = round(self.timed(_copy_home_pinned, result)[0], 4)
            rows[name] = row
        return {"passed": True, "runs": rows}

    def layout(self) -> dict:
        """Issue 14 item 7, the network alone in fp16 (fp32 in the dry run): our plans (the shared
        dense buffer in NCHW, the old GPU default; the device's default plan, channels-last)
        against spandrel's network (torch.cat) in NCHW and channels-last, same weights; time and
        peak memory."""
        import spandrel

        from realesrgan_tiled.engine.memory import peak_bytes

        dtype = torch.float32 if self.dry else torch.float16
        rows = {}
        for name, side in (("RealESRGAN_x4plus", self.size(512, 32)), ("realesr-animevideov3-x4", self.size(1080, 24))):
            ours = self.models[name]
            theirs = spandrel.ModelLoader().load_from_state_dict(ours.network.state_dict())
            x = photo(side).movedim(-1, 1).to(self.device, dtype)
            nchw_plan = dataclasses.replace(ours.our_architecture.plan_for(self.device), channels_last=False)
            variants = [("ours_nchw", ours, nchw_plan, torch.contiguous_format),
                        ("ours_default_plan", ours, None, torch.contiguous_format),
                        ("spandrel_cat_nchw", theirs, None, torch.contiguous_format),
                        ("spandrel_cat_channels_last", theirs, None, torch.channels_last)]
            row, reference = {}, None
            for label, net, plan, memory_format in variants:
                net.model.to(self.device, dtype, memory_format=memory_format)
                if net is ours:
                    ours.plan = plan
                with torch.inference_mode():
                    seconds, out = self.timed(net, x.contiguous(memory_format=memory_format))
                    peak = peak_bytes(lambda n=net, f=memory_format, t=x: n(t.contiguous(memory_format=f)), self.device)
                reference = out if reference is None else reference
                row[label] = {"s": round(seconds, 4), "peak_mib": round(peak / 2**20),
                              "psnr_vs_first": round(psnr(out.clamp(0, 1), reference.clamp(0, 1)), 1)}
                net.model.to("cpu", torch.float32, memory_format=torch.contiguous_format)
            ours.plan = None
            rows[f"{name}_{side}px"] = row
        return {"passed": True, "dtype": str(dtype), "runs": rows}

    def against_core(self) -> dict:
        from bench import core_tiled_scale

        model = self.models["RealESRGAN_x4plus"]
        side = self.size(1024, 32)
        image = photo(side)
        x = image.movedim(-1, 1)

        def core_run():
            with torch.inference_mode():
                model.to(self.device)
                # as core's tiled_scale: the image stays home, each tile goes to the device and back
                out = core_tiled_scale(x, lambda t: model(t.to(self.device)).float().cpu(), scale=4)
                self.sync()
                model.to("cpu")
            return out

        core_s, _ = self.timed(core_run)
        ours_s, _ = self.timed(self.upscale, model, image)
        x2, x2_in = self._x2_rrdbnet(), photo(self.size(768, 16))
        x2_s, _ = self.timed(self.upscale, x2, x2_in)
        # a host that keeps the model on the device between calls (a batch, or a model manager)
        x2_kept_s, _ = self.timed(self.upscale, x2, x2_in, host={"offload_device": self.device})
        speedup = core_s / ours_s
        goal = self.dry or (speedup >= 4 and min(x2_s, x2_kept_s) <= 0.1)
        return {"passed": goal, "core_fp32_s": round(core_s, 4), "ours_s": round(ours_s, 4), "speedup": round(speedup, 2),
                "x2_rrdbnet_768_to_1536_s": round(x2_s, 4),
                "x2_model_kept_on_device_s": round(x2_kept_s, 4), "goals": "speedup >= 4, x2 <= 0.1 s (on an H100)"}

    def _x2_rrdbnet(self):
        """RealESRGAN_x2plus's shapes (random weights: only the time matters)."""
        from realesrgan_tiled.archs.rrdbnet.network import RRDBNet
        from realesrgan_tiled.loading import build_descriptor
        from realesrgan_tiled.loading.sniff import sniff

        torch.manual_seed(0)
        return build_descriptor(sniff(RRDBNet(num_upsample=2, unshuffle=2).state_dict()))

    def real_oom(self) -> dict:
        if self.device.type != "cuda":
            return {"passed": True, "skipped": "needs CUDA: a memory cap is what makes the OOM real"}
        model = self.models["RealESRGAN_x4plus"]
        image = photo(1024)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(self.device)
        fraction = 1 * 2**30 / torch.cuda.get_device_properties(self.device).total_memory  # a 1024 px fp32 tile needs ~2.4 GiB
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(fraction, index)
        try:
            ran = self.upscale(model, image, tile_size=1024, precision="fp32").ran
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, index)
        torch.cuda.empty_cache()
        after = torch.cuda.memory_allocated(self.device)
        return {"passed": ran.oom_retries >= 1 and after - before < 64 << 20, "oom_retries": ran.oom_retries,
                "tiles": ran.tiles, "allocated_after_mib": round((after - before) / 2**20, 1), "cap_gib": 1}

    def nan_guard(self) -> dict:
        from model_fixtures import OverflowsInHalf, as_descriptor  # tests/model_fixtures.py

        model = as_descriptor(OverflowsInHalf())
        image = photo(self.size(64, 24))
        result = self.upscale(model, image, tile_size=image.shape[1] // 2, overlap=4, precision="fp16")
        finite = bool(torch.isfinite(result.images).all())
        return {"passed": finite and result.ran.fp32_reruns >= 1, "fp32_reruns": result.ran.fp32_reruns,
                "precision": result.ran.precision}

    def cancel_in_a_tile(self) -> dict:
        from realesrgan_tiled.errors import UpscaleCancelled

        model = self.models["RealESRGAN_x4plus"]
        image = photo(self.size(1024, 224))
        # on the CPU our network checks between its windows, inside one tile; on a GPU it runs a
        # tile's map whole, so the checks come between tiles
        tile = image.shape[1] if self.device.type == "cpu" else image.shape[1] // 4
        checks = {"n": 0}

        def check():
            checks["n"] += 1
            if checks["n"] > 3:
                raise UpscaleCancelled("cancelled by the check")

        t = time.perf_counter()
        try:
            self.upscale(model, image, tile_size=tile, host={"check_cancel": check})
            cancelled = False
        except UpscaleCancelled:
            cancelled = True
        return {"passed": cancelled, "cancel_checks": checks["n"], "tile": tile,
                "seconds_to_stop": round(time.perf_counter() - t, 3)}

    def syncs_per_tile(self) -> dict:
        if self.device.type != "cuda":
            return {"passed": True, "skipped": "needs CUDA"}
        model = self.models["realesr-animevideov3-x4"]
        image = photo(512)
        syncs, result = gpu_pipeline.count_syncs(lambda: self.upscale(model, image, tile_size=128))
        ran = result.ran
        return {"passed": True, "syncs": syncs, "tiles": ran.tiles, "per_tile": round(syncs / max(1, ran.tiles), 2)}


def load_models(folder: Path | None) -> dict:
    from realesrgan_tiled.loading import load_model
    from realesrgan_tiled.loading.bundled import BUNDLED, bundled_model_path

    if folder is not None:
        return {p.stem: load_model(p).float() for p in sorted(folder.glob("*.safetensors"))}
    return {name: load_model(bundled_model_path(name)) for name in BUNDLED}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="every section on the CPU at toy sizes")
    ap.add_argument("--models", type=Path, help="folder of .safetensors weights (default: the bundled models)")
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    checker = Checker(device, args.dry_run or device.type == "cpu", load_models(args.models))
    for name in ("environment", "fidelity", "tiled_vs_whole", "auto_tile_and_memory", "throughput", "engine_profile",
                 "layout", "against_core", "real_oom", "nan_guard", "cancel_in_a_tile", "syncs_per_tile"):
        checker.run(name, getattr(checker, name))
    for name in ("video_batch", "overlap", "syncs_per_frame", "device_accumulation", "compiled_network"):  # the GPU pipeline's sections
        checker.run(name, functools.partial(getattr(gpu_pipeline, name), checker))
    report = {"passed": all(s.get("passed") for s in checker.sections.values()), "sections": checker.sections}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
