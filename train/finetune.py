"""Fine-tune a Real-ESRGAN generator on a folder of photos, and prove the gain on held-out images.

``finetune(Settings(...))`` runs the whole job: split the data, score the base model, train
(checkpointing at every evaluation, on Ctrl-C and on cancel), keep the best EMA weights, then
export them only if they beat the base on the held-out images (or ``force``). The gate scores
what the recipe optimises (``evaluate.GATE_METRIC``) against the targets it trains towards:
USM-sharpened with ``sharpen_gt`` (the default of the perceptual and GAN recipes, as
Real-ESRGAN's), plain without (the default of ``l1``, a fidelity fine-tune).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..engine.settings import resolve_device
from ..errors import RealESRGANTiledError, UpscaleCancelled
from . import data as datasets
from .checkpoint import checkpoint_path, export_model, load_checkpoint, save_checkpoint
from .evaluate import GATE_METRIC, SELECTION, TARGETS, better, evaluate, held_out_set
from .setup import build_models, load_base, metric_functions, patch_geometry
from .steps import train_step, update_ema

log = logging.getLogger(__name__)

LOSSES = ("l1", "perceptual", "gan")
DEGRADATIONS = ("realesrgan", "bicubic", "paired")
MAX_SKIPPED_IN_A_ROW = 20  # non-finite steps in a row before the run is called diverged
DEFAULT_ITERATIONS = 1000
GATE_NAMES = {"psnr_y": "PSNR-Y", "perceptual": "ST-LPIPS (AlexNet)"}
RESUME_OVERRIDES = ("iterations", "report", "device", "force")  # a resumed run takes these from the command line when given


class FinetuneError(RealESRGANTiledError):
    """The run cannot go on, or its result is not exported."""


@dataclass
class Settings:
    data: str
    base: str
    out: str
    val: str | None = None
    iterations: int | None = None  # None: DEFAULT_ITERATIONS, or a resumed run's own
    batch_size: int | None = None  # None: 8 on CUDA, 4 on CPU
    patch_size: int | None = None  # HR patch side; None: 256 on CUDA, 128 on CPU
    loss: str = "gan"
    degradation: str = "realesrgan"
    lq: str | None = None
    lr: float = 1e-4
    seed: int = 0
    device: str | None = "auto"
    report: str | None = None
    force: bool | None = None  # export even without a gain
    vgg19: str | None = None  # a torchvision vgg19 weights file for the perceptual loss
    eval_every: int | None = None  # None: a tenth of the run (at least 50 iterations)
    eval_crop: int | None = 512  # held-out images are centre-cropped to this many px a side (None: whole)
    discriminator: str | None = None  # a pretrained UNetDiscriminatorSN to start the GAN from (no warm-up then)
    sharpen_gt: bool | None = None  # USM-sharpened targets; None: on for perceptual/gan (Real-ESRGAN's), off for l1
    ema: bool = True  # keep (and export) an EMA of the generator, with a warm-up; False: the generator itself


def default_sharpen_gt(loss: str) -> bool:
    """Real-ESRGAN sharpens the targets of its L1 and perceptual losses; a plain L1 fine-tune
    aims at the photos themselves, the fidelity a PSNR gate measures."""
    return loss != "l1"


def finetune(settings: Settings, resume: str | None = None, progress=None, should_stop=None) -> dict:
    """Run (or resume) the job; returns the report. ``progress(iteration, total, losses)`` and
    ``should_stop()`` (true: checkpoint and stop) are for hosts."""
    state = load_checkpoint(Path(resume)) if resume else None
    if state is not None:  # the run's own settings, except what may change between sittings
        given = {k: v for k, v in asdict(settings).items() if k in RESUME_OVERRIDES and v is not None}
        settings = Settings(**{**state["settings"], **given})
    settings.iterations = settings.iterations or DEFAULT_ITERATIONS
    settings.device = settings.device or "auto"
    if settings.sharpen_gt is None:  # a run, or a checkpoint from before the choice existed
        settings.sharpen_gt = default_sharpen_gt(settings.loss)
    job = _Job(settings, state)
    try:
        job.train(progress, should_stop)
    except (KeyboardInterrupt, UpscaleCancelled):
        job.save()
        log.warning("stopped at iteration %d; continue with --resume %s", job.iteration, job.checkpoint)
        raise
    return job.finish()


class _Job:
    def __init__(self, s: Settings, state: dict | None):
        self.s, self.started = s, time.monotonic()
        self.device = resolve_device(s.device)
        self.metrics, self.perceptual_metric = metric_functions()
        self.base = load_base(s.base)
        self.scale = int(self.base.scale)
        if s.degradation not in DEGRADATIONS or s.loss not in LOSSES:
            raise FinetuneError(f"--degradation must be one of {DEGRADATIONS} and --loss one of {LOSSES}")
        if s.discriminator is not None and s.loss != "gan":
            raise FinetuneError("--discriminator goes with --loss gan")
        if (s.degradation == "paired") != (s.lq is not None):
            raise FinetuneError("--degradation paired goes with --lq LQ_DIR (and --lq only with paired)")
        if Path(s.out).suffix.lower() != ".safetensors":
            raise FinetuneError(f"-o {s.out}: the fine-tuned model is written as .safetensors; name it so")
        Path(s.out).parent.mkdir(parents=True, exist_ok=True)
        self.patch, self.batch = patch_geometry(self.base, s.patch_size, s.batch_size, self.device)
        self.split = datasets.split(Path(s.data), Path(s.val) if s.val else None, self.patch, s.seed)
        self.fingerprint = datasets.fingerprint(self.split.train)
        lq = Path(s.lq) if s.lq else None
        self.sampler = datasets.PatchSampler(self.split.train, self.patch, self.scale, lq)
        self.degrade = None
        if s.degradation != "paired":
            from .degradation import make_degradation

            self.degrade = make_degradation(s.degradation, self.scale)
        lq_files = {p.stem: p for p in datasets.image_files(lq, "--lq")} if lq else None
        self.held_out = held_out_set(self.split.held_out, self.degrade, self.scale, s.eval_crop, s.seed, lq_files,
                                     sharpen=s.sharpen_gt)
        self.selection, self.target = GATE_METRIC[s.loss], TARGETS[s.sharpen_gt]
        log.info("gate: held-out %s against the %s photos (--loss %s, --sharpen-gt %s, --ema %s)", self.selection,
                 self.target, s.loss, _on_off(s.sharpen_gt), _on_off(s.ema))
        self.eval_every = s.eval_every or max(50, s.iterations // 10)
        # a new discriminator learns alone first; a pretrained one is ready
        self.warmup = min(1000, s.iterations // 5) if s.loss == "gan" and s.discriminator is None else 0
        self.checkpoint = checkpoint_path(Path(s.out))
        torch.manual_seed(s.seed)
        self.m, self.ema_model = build_models(self.base, s.loss, s.lr, s.vgg19, self.device, s.discriminator)
        self.data_rng, self.degrade_rng = torch.Generator().manual_seed(s.seed), torch.Generator().manual_seed(s.seed + 1)
        self.pool = datasets.PairPool(max(self.batch * 8, 32))
        self.iteration, self.history, self.skipped, self.best = 0, [], [], None
        self.latest = None  # the last evaluation of the EMA in this sitting
        self.base_metrics = None
        if state is not None:
            self._restore(state)
        else:
            self.base_metrics = self._evaluate(self.base)
            self.best = {"iteration": 0, "score": self.base_metrics["mean"][self.selection], "ema": None}

    # ---- the loop ---------------------------------------------------------------------------

    def train(self, progress, should_stop) -> None:
        in_a_row = 0
        while self.iteration < self.s.iterations:
            if should_stop is not None and should_stop():
                raise UpscaleCancelled("fine-tuning cancelled")
            lr, gt = self._batch()
            target = _sharpen(gt) if self.s.sharpen_gt else gt
            result = train_step(self.m, lr, gt, target, gan_on=self.iteration >= self.warmup)
            self.iteration += 1
            if isinstance(result, str):
                in_a_row += 1
                self.skipped.append({"iteration": self.iteration, "loss": result})
                log.warning("iteration %d skipped: the %s loss is not finite", self.iteration, result)
                if in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    raise FinetuneError(f"{in_a_row} steps in a row had a non-finite {result} loss: the run diverged; "
                                        "try a lower --lr")
                continue
            in_a_row = 0
            update_ema(self.m.ema, self.m.generator, self.iteration, self.s.ema)
            if progress is not None:
                progress(self.iteration, self.s.iterations, result)
            if self.iteration % self.eval_every == 0 or self.iteration == self.s.iterations:
                self._checkpoint_evaluation()

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        hr, lr = self.sampler.batch(self.batch, self.data_rng)
        hr = hr.to(self.device)
        lr = lr.to(self.device) if lr is not None else self.degrade(hr, self.degrade_rng)
        hr, lr = self.pool.mix(hr, lr, self.data_rng)
        if self.device.type == "cuda":
            lr, hr = (t.contiguous(memory_format=torch.channels_last) for t in (lr, hr))
        return lr, hr

    def _checkpoint_evaluation(self) -> None:
        result = self.latest = self._evaluate(self.ema_model)
        score = result["mean"][self.selection]
        self.history.append({"iteration": self.iteration, "mean": result["mean"]})
        log.info("iteration %d: held-out %s %.4f against the %s photos (base %.4f)%s", self.iteration, self.selection,
                 score, self.target, self.base_metrics["mean"][self.selection], self._beside(result))
        if better(score, self.best["score"], self.selection):
            self.best = {"iteration": self.iteration, "score": score, "metrics": result,
                         "ema": {k: v.detach().cpu().clone() for k, v in self.m.ema.state_dict().items()}}
        self.save()

    def _beside(self, result: dict) -> str:
        """With sharpened targets, the fidelity to the photos themselves, for the log."""
        if "against_plain" not in result:
            return ""
        plain, base = result["against_plain"]["mean"]["psnr_y"], self.base_metrics["against_plain"]["mean"]["psnr_y"]
        return f"; psnr_y against the plain photos {plain:.4f} (base {base:.4f})"

    def _evaluate(self, model) -> dict:
        self.m.generator.eval()
        try:
            return evaluate(model, self.held_out, self.device, self.metrics)
        finally:
            self.m.generator.train()

    # ---- state --------------------------------------------------------------------------------

    def save(self) -> None:
        m = self.m
        save_checkpoint(self.checkpoint, {
            "settings": asdict(self.s), "iteration": self.iteration, "fingerprint": self.fingerprint,
            "generator": m.generator.state_dict(), "ema": m.ema.state_dict(), "optimizer": m.optimizer.state_dict(),
            "discriminator": m.discriminator.state_dict() if m.discriminator is not None else None,
            "d_optimizer": m.d_optimizer.state_dict() if m.d_optimizer is not None else None,
            "rng": {"data": self.data_rng.get_state(), "degrade": self.degrade_rng.get_state()},
            "history": self.history, "skipped": self.skipped, "best": self.best, "base_metrics": self.base_metrics,
            "pool": {"hr": self.pool.hr, "lr": self.pool.lr},
        })

    def _restore(self, state: dict) -> None:
        if state["fingerprint"] != self.fingerprint:
            log.warning("the training images changed since the checkpoint was written; continuing on the new ones")
        m = self.m
        m.generator.load_state_dict(state["generator"])
        m.ema.load_state_dict(state["ema"])
        m.optimizer.load_state_dict(state["optimizer"])
        if m.discriminator is not None:
            m.discriminator.load_state_dict(state["discriminator"])
            m.d_optimizer.load_state_dict(state["d_optimizer"])
        self.data_rng.set_state(state["rng"]["data"])
        self.degrade_rng.set_state(state["rng"]["degrade"])
        self.iteration, self.history, self.skipped = state["iteration"], state["history"], state["skipped"]
        self.best, self.base_metrics = state["best"], state["base_metrics"]
        self.pool.hr, self.pool.lr = (t.to(self.device) if t is not None else None for t in (state["pool"]["hr"], state["pool"]["lr"]))

    # ---- the result ---------------------------------------------------------------------------

    def finish(self) -> dict:
        best, base_score = self.best, self.base_metrics["mean"][self.selection]
        improved = best["ema"] is not None
        report = self._report(improved)
        if improved or self.s.force:
            weights = best["ema"] if improved else self.m.ema.state_dict()
            export_model(Path(self.s.out), weights, self._metadata(report))
            report["exported"] = self.s.out
        else:
            report["exported"] = None
            report["refused"] = (f"no evaluation beat the base model on the held-out images ({self.selection} against the "
                                 f"{self.target} photos: base {base_score:.4f}); nothing exported (--force exports the "
                                 "last EMA weights anyway)")
        if self.s.report:
            Path(self.s.report).write_text(json.dumps(report, indent=1))
        if report["exported"] is None:
            raise FinetuneError(report["refused"])
        return report

    def _report(self, improved: bool) -> dict:
        final = self.best["metrics"] if improved else (self.latest or self._evaluate(self.ema_model))
        return {
            "settings": asdict(self.s), "device": str(self.device),
            "base": {"model": self.s.base, "architecture": self.base.architecture.name, "scale": self.scale},
            "data": {"train": [p.name for p in self.split.train], "held_out": [p.name for p in self.split.held_out],
                     "skipped": self.split.skipped, "fingerprint": self.fingerprint},
            "patch_size": self.patch, "batch_size": self.batch, "discriminator_warmup": self.warmup,
            "gate": self._gate(),
            "metrics": {"selection": self.selection, "selection_higher_is_better": SELECTION[self.selection],
                        "selection_target": self.target,
                        "perceptual_metric": self.perceptual_metric, "eval_crop": self.s.eval_crop,
                        "base": self.base_metrics, "finetuned": final, "best_iteration": self.best["iteration"]},
            "history": self.history, "skipped_steps": self.skipped, "iterations": self.iteration,
            "seconds": round(time.monotonic() - self.started, 1),
        }

    def _gate(self) -> dict:
        s = self.s
        return {"metric": self.selection, "target": self.target, "higher_is_better": SELECTION[self.selection],
                "sharpen_gt": s.sharpen_gt, "ema": s.ema,
                "says": f"{GATE_NAMES[self.selection]} against the {self.target} held-out photos, the targets "
                        f"--loss {s.loss} --sharpen-gt {_on_off(s.sharpen_gt)} trains towards"}

    def _metadata(self, report: dict) -> dict:
        return {"realesrgan_tiled.finetune": "1", "base_model": self.s.base, "architecture": report["base"]["architecture"],
                "iterations": str(self.best["iteration"] or self.iteration), "data_fingerprint": self.fingerprint,
                "loss": self.s.loss, "degradation": self.s.degradation, "seed": str(self.s.seed),
                "sharpen_gt": _on_off(self.s.sharpen_gt), "ema": _on_off(self.s.ema), "gate": report["gate"],
                "metrics": {"base": report["metrics"]["base"]["mean"], "finetuned": report["metrics"]["finetuned"]["mean"],
                            "selection": self.selection, "held_out": report["data"]["held_out"]}}


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _sharpen(gt: torch.Tensor) -> torch.Tensor:
    from .degradation import usm_sharp

    return usm_sharp(gt)

