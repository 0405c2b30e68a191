"""The tiled inference engine: seam-free, memory-bounded, mixed precision with a NaN guard.

Host-neutral: takes a spandrel ``ImageModelDescriptor`` (ours or any spandrel one) and a
ComfyUI-layout batch ``[B, H, W, C]`` (float, 0..1, CPU) and returns ``[B, H*s, W*s, C]``.

How a batch flows:
- each image, and within it each channel group (RGB, alpha, gray: see ``channel_passes``), is
  cut into equal tiles laid out evenly (``tile_starts``); only one tile at a time lives on the
  device, the input and the result stay on the host;
- tiles overlap; in each overlap the tile edges (least context) get weight 0 and the middle is a
  smooth ramp whose weights sum to exactly 1 (``blend_weights``), so the sum needs no
  normalisation buffer and shows no seams;
- a tile that runs out of memory is re-run alone as smaller tiles; a half-precision tile whose
  output is not finite is re-run alone in fp32.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .archs.blocks import cancel_check
from .archs.rrdbnet import pad_bottom_right
from .errors import InputImageError, RealESRGANTiledError
from .resize import resize_images

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_TILE = 16  # below this an OOM is reported instead of splitting further
CPU_WORKING_SET = 2 << 30  # CPU tile budget: x4plus inputs up to ~1.4 Mpx run as one tile


@dataclass
class UpscaleStats:
    """Filled in by ``upscale_images`` when passed: what actually ran."""

    tiles: int = 0
    fp32_reruns: int = 0
    oom_retries: int = 0
    precision: str = ""
    tile_size: int = 0
    overlap: int = 0
    device: str = ""


@dataclass
class _Run:
    """Per-call settings shared by the tile loop."""

    model: object
    device: torch.device
    dtype: torch.dtype
    scale: int
    multiple: int
    overlap: int
    progress: Callable[[int, int], None] | None
    check_cancel: Callable[[], None] | None
    stats: UpscaleStats
    total_tiles: int = 0
    done_tiles: int = 0
    tile_cap: int = 0  # lowered after an OOM so later tiles do not fail the same way


def upscale_images(
    model,
    images: torch.Tensor,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    precision: str = "auto",
    device: torch.device | str | None = None,
    output_size: tuple[int, int] | None = None,
    output_scale: float | None = None,
    resample: str = "lanczos",
    progress: Callable[[int, int], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
    out_device: torch.device | str = "cpu",
    out_dtype: torch.dtype = torch.float32,
    offload_device: torch.device | str = "cpu",
    stats: UpscaleStats | None = None,
) -> torch.Tensor:
    """Upscale a batch of images with ``model``; see the module docstring."""
    _check_images(images)
    device = resolve_device(device)
    stats = stats if stats is not None else UpscaleStats()
    dtype = resolve_precision(precision, model, device)
    batch, height, width, channels = images.shape
    scale = int(model.scale)
    target = _target_size(height, width, scale, output_size, output_scale)
    passes = channel_passes(channels, model.input_channels)
    overlap = auto_overlap(model) if overlap is None else int(overlap)
    if tile_size in (None, 0):
        tile_size = auto_tile_size(model, device, dtype, (height, width))
    multiple = max(1, int(model.size_requirements.multiple_of))
    tile_size = _round_tile(int(tile_size), multiple)
    overlap = min(max(0, overlap), tile_size // 2)
    stats.precision, stats.tile_size, stats.overlap, stats.device = _name(dtype), tile_size, overlap, str(device)
    run = _Run(model, device, dtype, scale, multiple, overlap, progress, check_cancel, stats, tile_cap=tile_size)
    run.total_tiles = batch * len(passes) * _count_tiles(height, width, tile_size, overlap, multiple)
    if progress is not None:
        progress(0, run.total_tiles)  # hosts show the bar before the first (possibly long) tile

    _check_output_fits(batch, target, channels, out_dtype, torch.device(out_device))
    out = torch.empty((batch, *target, channels), dtype=out_dtype, device=out_device)
    model_size = (height * scale, width * scale)
    # tiles accumulate straight into the result unless a resize or a dtype change follows
    direct = target == model_size and out_dtype == torch.float32 and out.device.type == "cpu"
    try:
        model.to(device)
        model.eval()
        with torch.inference_mode():
            for b in range(batch):
                dest = out[b] if direct else torch.empty((*model_size, channels), dtype=torch.float32)
                _upscale_image(run, images[b], passes, dest, tile_size)
                if not direct:
                    out[b] = resize_images(dest.unsqueeze(0), target, resample)[0].to(out_dtype)
    finally:
        model.to(offload_device)  # hand the device back even on error or cancel
    return out


# ---- settings ----------------------------------------------------------------------------

def resolve_device(device: torch.device | str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, model, device: torch.device) -> torch.dtype:
    """auto: fp16 on CUDA when the model supports it (the NaN guard catches overflow),
    else bf16, else fp32; fp32 on CPU. An explicit half precision the model does not
    support falls back to fp32 with a warning."""
    if precision not in PRECISIONS:
        raise InputImageError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        if model.supports_half:
            return torch.float16
        if model.supports_bfloat16 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    dtype = _DTYPES[precision]
    supported = {torch.float16: model.supports_half, torch.bfloat16: model.supports_bfloat16}.get(dtype, True)
    if not supported:
        log.warning("%s does not support %s; running in fp32", model.architecture.name, precision)
        return torch.float32
    return dtype


def _name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


def auto_overlap(model) -> int:
    """Overlap in input pixels: enough context that tiled == whole-image output within
    ~1/255 (measured, see README). SRVGGNetCompact's receptive field is num_conv + 2 px."""
    hp = getattr(model.model, "hyperparameters", {}) or {}
    if "num_conv" in hp:
        return _round_up(int((hp["num_conv"] + 2) * 8 / 3), 8)  # zero-weight margin = 3/8 overlap >= field
    return 48


def auto_tile_size(model, device: torch.device, dtype: torch.dtype, image_hw: tuple[int, int]) -> int:
    """The largest tile whose working set fits the budget (CUDA: 60 % of free VRAM; CPU: 40 % of
    available RAM, at most CPU_WORKING_SET). When the whole image fits, it is one tile: it
    computes no overlap twice and has no seams, and on CPU our networks already walk large maps
    in cache-sized windows themselves (archs/blocks.py), which is what smaller tiles used to buy."""
    element_size = torch.tensor([], dtype=dtype).element_size()
    per_pixel = activation_bytes_per_pixel(model, element_size, device)
    free = _free_memory(device)
    budget = free * 0.6 if device.type == "cuda" else min(free * 0.4, CPU_WORKING_SET)
    budget -= _fixed_working_set(model, device, element_size)
    height, width = image_hw
    if height * width * per_pixel <= budget:
        return _round_up(max(height, width), 8)
    side = int(math.sqrt(max(budget, 0) / per_pixel))
    return max(MIN_TILE, min(side, 4096))


def activation_bytes_per_pixel(model, element_size: int, device: torch.device = torch.device("cpu")) -> float:
    """Peak memory per input pixel of a tile, beyond the fixed per-window working set.

    RRDBNet (ours): on CPU the trunk keeps four nf-channel maps (its input, the RRDB input and
    two dense-block outputs; the dense buffer exists per window only); elsewhere the whole-map
    dense buffer (nf + 4 grow) and about five nf maps. Plus the network output (the upsampling
    tail runs in windows). SRVGG: on CPU it runs window by window, so only its output is
    full-size; elsewhere a few num_feat maps too. Others (spandrel): a conservative figure for
    ~96-channel transformer SR networks at output resolution.
    """
    hp = getattr(model.model, "hyperparameters", {}) or {}
    scale = max(1, int(model.scale))
    cpu = device.type == "cpu"
    if "num_block" in hp:
        nf = hp["num_feat"]
        values = (4 * nf if cpu else 6 * nf + 4 * hp["num_grow_ch"]) / hp["unshuffle"] ** 2
        values += hp["num_out_ch"] * scale * scale
    elif "num_conv" in hp:
        values = (0 if cpu else 3 * hp["num_feat"]) + 3 * hp["num_out_ch"] * hp["upscale"] ** 2
    else:
        values = 4 * 96 * scale * scale
    return values * element_size + 4 * 4 * scale * scale  # + the fp32 tile output on its way home


def _fixed_working_set(model, device: torch.device, element_size: int) -> int:
    """Memory that does not grow with the tile: the networks' per-window buffers."""
    from .archs import rrdbnet, srvgg

    hp = getattr(model.model, "hyperparameters", {}) or {}
    if "num_block" in hp:
        if device.type != "cpu":
            return rrdbnet.TAIL_STRIP_BYTES
        trunk = (rrdbnet.BLOCK + 2 * rrdbnet.RDB_HALO) ** 2 * (2 * hp["num_feat"] + 5 * hp["num_grow_ch"])
        tail = (rrdbnet.TAIL_BLOCK + 2 * rrdbnet.TAIL_HALO) ** 2 * 3 * hp["num_feat"] * 4 ** hp["num_upsample"]
        return max(trunk, tail) * element_size * torch.get_num_threads()  # one window per thread
    if "num_conv" in hp and device.type == "cpu":
        rows, cols = (side + 2 * (hp["num_conv"] + 2) for side in srvgg.BLOCK)
        return 3 * hp["num_feat"] * rows * cols * element_size
    return 0


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 4 << 30  # not Linux: assume 4 GiB free


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _round_tile(tile: int, multiple: int) -> int:
    return max(_round_up(max(tile, MIN_TILE), multiple), multiple)


def _target_size(h: int, w: int, scale: int, size, factor) -> tuple[int, int]:
    if size is not None:
        th, tw = int(size[0]), int(size[1])
        if th < 1 or tw < 1:
            raise InputImageError(f"output size {tw}x{th} is invalid: both sides must be at least 1 px")
        return th, tw
    if factor is not None:
        if not factor > 0 or not math.isfinite(factor):
            raise InputImageError(f"output scale {factor} is invalid: it must be a positive number")
        return max(1, round(h * factor)), max(1, round(w * factor))
    return h * scale, w * scale


def _check_output_fits(batch: int, size: tuple[int, int], channels: int, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse up front a result that cannot fit in memory: Linux would hand out the pages
    lazily and the OOM killer would end the whole host process (ComfyUI) half-way instead."""
    needed = batch * size[0] * size[1] * channels * torch.tensor([], dtype=dtype).element_size()
    free = _free_memory(device)
    if needed > free:
        raise InputImageError(
            f"the result ({batch} x {size[1]}x{size[0]} px, {channels} channels) needs {needed / 2**30:.1f} GiB "
            f"but only {free / 2**30:.1f} GiB of memory is free; upscale fewer frames at once or to a smaller size"
        )


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputImageError(f"image batch must be a [batch, height, width, channels] tensor, got {shape}")
    b, h, w, c = images.shape
    if h < 1 or w < 1:
        raise InputImageError(f"image is empty ({w}x{h} px)")
    if c not in (1, 3, 4):
        raise InputImageError(f"image has {c} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    if not images.is_floating_point():
        raise InputImageError(f"image tensor has dtype {images.dtype}; expected float values in 0..1")


# ---- channels ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ChannelPass:
    """One trip through the model: which image channels feed it (-1 = a constant 1 plane)
    and which image channels its output fills (from the model's first output channels, or
    their mean when one gray/alpha channel is filled from an RGB model)."""

    source: tuple[int, ...]
    dest: tuple[int, ...]


def channel_passes(image_channels: int, model_channels: int) -> list[ChannelPass]:
    """RGB models: RGBA runs RGB then alpha (as gray); gray runs as gray RGB. 1-channel models
    run each channel alone. 4-channel models get an opaque alpha for RGB and gray input."""
    c, m = image_channels, model_channels
    if m == 1:
        return [ChannelPass((i,), (i,)) for i in range(c)]
    if c == m:
        return [ChannelPass(tuple(range(c)), tuple(range(c)))]
    gray = (0,) * min(m, 3) + (-1,) * (m - 3)
    if c == 1:
        return [ChannelPass(gray, (0,))]
    rgb = (0, 1, 2) + (-1,) * (m - 3)
    if c == 3:
        return [ChannelPass(rgb, (0, 1, 2))]
    alpha = (3,) * min(m, 3) + (-1,) * (m - 3)
    return [ChannelPass(rgb, (0, 1, 2)), ChannelPass(alpha, (3,))]


def _gather(image_chw: torch.Tensor, source: tuple[int, ...]) -> torch.Tensor:
    ones = torch.ones_like(image_chw[:1])
    return torch.cat([ones if i < 0 else image_chw[i : i + 1] for i in source])


def _scatter(out_chw: torch.Tensor, n_dest: int) -> torch.Tensor:
    if n_dest == 1 and out_chw.shape[0] > 1:
        return out_chw[:3].mean(0, keepdim=True)
    if out_chw.shape[0] < n_dest:  # 1-channel output for a multi-channel destination
        return out_chw[:1].expand(n_dest, -1, -1)
    return out_chw[:n_dest]


# ---- tiles ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    """A tile's extent along one axis (input pixels) and its blend weights (output pixels)."""

    start: int
    end: int
    weight: torch.Tensor


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Evenly spaced tile starts covering ``length`` with tiles of ``tile`` px (the last one
    runs to the edge): no thin last strip, neighbours overlap by about ``overlap`` or more,
    and starts sit on multiples of ``multiple`` (pixel-unshuffle models must see the same
    2x2 / 4x4 groups as an untiled run)."""
    if length <= tile:
        return [0]
    overlap = min(overlap, tile // 2)  # OOM sub-tiles can be smaller than the planned overlap
    count = math.ceil((length - overlap) / (tile - overlap))
    last = (length - tile) // multiple * multiple
    return sorted({round(i * last / (count - 1) / multiple) * multiple for i in range(count)})


@functools.lru_cache(maxsize=32)  # every frame of a batch and every channel pass shares one layout
def axis_spans(length: int, tile: int, overlap: int, scale: int, multiple: int = 1) -> list[Span]:
    """Tiles along one axis with weights that sum to exactly 1 at every output pixel.

    In the overlap [a, b) of two neighbours, the outer 3/8 on each side goes wholly to the
    tile that is not near its own edge (tile edges lack context), the middle quarter is a
    raised-cosine cross-fade. Normalising per axis makes the 2-D products sum to 1 too.
    """
    starts = tile_starts(length, tile, overlap, multiple)
    ends = [s + tile for s in starts[:-1]] + [length]
    coords = (torch.arange(length * scale, dtype=torch.float64) + 0.5) / scale
    weights = []
    for i, (start, end) in enumerate(zip(starts, ends)):
        w = ((coords >= start) & (coords < end)).double()
        if i > 0:
            w *= _ramp(coords, start, ends[i - 1])
        if i + 1 < len(starts):
            w *= 1 - _ramp(coords, starts[i + 1], end)
        weights.append(w)
    total = torch.stack(weights).sum(0)
    assert bool((total > 0).all()), "tile layout leaves a gap"  # a bug, not a user error
    return [Span(s, e, (w / total)[s * scale : e * scale].float()) for s, e, w in zip(starts, ends, weights)]


def _ramp(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """0 up to a + 3/8 (b - a), 1 from b - 3/8 (b - a), raised cosine between."""
    lo, hi = a + 0.375 * (b - a), b - 0.375 * (b - a)
    t = ((x - lo) / max(hi - lo, 1e-9)).clamp(0, 1)
    return 0.5 - 0.5 * torch.cos(math.pi * t)


def _count_tiles(h: int, w: int, tile: int, overlap: int, multiple: int) -> int:
    return len(tile_starts(h, tile, overlap, multiple)) * len(tile_starts(w, tile, overlap, multiple))


def _upscale_image(run: _Run, image_hwc: torch.Tensor, passes: list[ChannelPass], dest: torch.Tensor, tile: int) -> None:
    dest.zero_()
    image_chw = image_hwc.movedim(-1, 0)
    for p in passes:
        source = _gather(image_chw, p.source)
        if p.dest == (3,) and _is_constant(source):  # opaque (or uniform) alpha: no model pass
            dest[..., 3] = source[0, 0, 0].clamp(0, 1)
            _advance(run, _count_tiles(*source.shape[1:], tile, run.overlap, run.multiple))
            continue

        def emit(y0: int, x0: int, out: torch.Tensor, channels=p.dest) -> None:
            _accumulate(dest, channels, y0, x0, out)

        _tiled(run, source, tile, emit, report=True)


def _is_constant(x: torch.Tensor) -> bool:
    return bool((x == x.flatten()[0]).all())


def _accumulate(dest: torch.Tensor, channels: tuple[int, ...], y0: int, x0: int, tile_out: torch.Tensor) -> None:
    h, w = tile_out.shape[-2:]
    region = dest[y0 : y0 + h, x0 : x0 + w]
    values = _scatter(tile_out, len(channels)).movedim(0, -1)
    if channels == tuple(range(dest.shape[-1])):
        region += values
    else:
        for k, c in enumerate(channels):
            region[..., c] += values[..., k]


def _tiled(run: _Run, source: torch.Tensor, tile: int, emit, report: bool) -> None:
    """Run ``source`` ([c, H, W], host) tile by tile and ``emit(y0, x0, weighted_output)`` in
    output coordinates; the emitted parts sum to the blended result. ``report``: count the
    tiles for progress (sub-tiles of an OOM split are not tiles of the plan)."""
    _, height, width = source.shape
    s = run.scale
    rows = axis_spans(height, tile, run.overlap, s, run.multiple)
    cols = axis_spans(width, tile, run.overlap, s, run.multiple)
    for row in rows:
        for col in cols:
            if run.check_cancel is not None:
                run.check_cancel()
            out = _run_tile(run, source[:, row.start : row.end, col.start : col.end])
            emit(row.start * s, col.start * s, out * (row.weight[:, None] * col.weight[None, :]))
            if report:
                _advance(run, 1)


def _advance(run: _Run, tiles: int) -> None:
    run.done_tiles += tiles
    if run.progress is not None:
        run.progress(min(run.done_tiles, run.total_tiles), run.total_tiles)


def _run_tile(run: _Run, tile_in: torch.Tensor) -> torch.Tensor:
    """One tile on the device; returns its fp32 output on the host. Too big for memory: the
    same region again as smaller tiles. Half-precision output not finite: fp32 again."""
    if max(tile_in.shape[-2:]) >= run.tile_cap + run.multiple:  # last tiles may run multiple - 1 over
        return _split(run, tile_in, run.tile_cap)
    try:
        out = _forward(run, tile_in, run.dtype)
        if run.dtype != torch.float32 and not bool(torch.isfinite(out).all()):
            run.stats.fp32_reruns += 1
            log.info("non-finite %s output in a tile; re-running it in fp32", _name(run.dtype))
            if run.check_cancel is not None:
                run.check_cancel()
            out = _forward(run, tile_in, torch.float32)
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(e):
            raise
        return _retry_smaller(run, tile_in)
    run.stats.tiles += 1
    return torch.nan_to_num_(out, nan=0.0).clamp_(0, 1)


def _retry_smaller(run: _Run, tile_in: torch.Tensor) -> torch.Tensor:
    longest = max(tile_in.shape[-2:])
    smaller = _round_tile(longest // 2, run.multiple)
    if smaller >= longest or smaller <= MIN_TILE // 2:
        raise RealESRGANTiledError(
            f"out of memory on {run.device} even with {longest} px tiles; "
            "free memory, use a smaller tile_size, or run on the CPU"
        ) from None
    _release_cached(run.device)
    run.stats.oom_retries += 1
    run.tile_cap = min(run.tile_cap, smaller)  # later tiles go straight to the size that fits
    log.warning("out of memory on a %dx%d tile; retrying just that tile as %d px tiles", *tile_in.shape[-2:], smaller)
    return _split(run, tile_in, smaller)


def _split(run: _Run, tile_in: torch.Tensor, tile: int) -> torch.Tensor:
    """Upscale one region as smaller blended tiles; returns the region's result on the host."""
    _, h, w = tile_in.shape
    out = torch.zeros((run.model.output_channels, h * run.scale, w * run.scale))

    def emit(y0: int, x0: int, part: torch.Tensor) -> None:
        out[:, y0 : y0 + part.shape[1], x0 : x0 + part.shape[2]] += part

    _tiled(run, tile_in, tile, emit, report=False)
    return out


def _forward(run: _Run, tile_in: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The raw (unclamped) model output for one tile, fp32 on the host."""
    x = tile_in.to(run.device, non_blocking=True).unsqueeze(0).float()
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0, 1)  # bad pixels never reach the net
    with cancel_check(run.check_cancel):  # our networks check between their windows too
        if dtype == torch.float32:
            y = call_model(run.model, x)
        else:
            with torch.autocast(device_type=run.device.type, dtype=dtype):
                y = call_model(run.model, x)
    return y[0].float().cpu()


def call_model(descriptor, x: torch.Tensor) -> torch.Tensor:
    """Like the descriptor's own call (pad to its size requirements, crop back) but without
    its clamp, which would turn an fp16 overflow (inf) into plausible white pixels."""
    h, w = x.shape[-2:]
    pad_w, pad_h = descriptor.size_requirements.get_padding(w, h)
    x = pad_bottom_right(x, pad_h, pad_w)
    call = getattr(descriptor, "_call_fn", None) or (lambda model, image: model(image))
    y = call(descriptor.model, x)
    s = descriptor.scale
    return y[..., : h * s, : w * s]


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _release_cached(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
