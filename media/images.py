"""Reading and writing image files for the CLI: PNG / JPEG / WebP (anything Pillow opens) in,
PNG out. 16-bit PNGs go through pypng because Pillow truncates 16-bit RGB to 8 bits. Also the
PIL <-> pixels steps of hosts that hand us PIL images (the WebUI)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
Image.MAX_IMAGE_PIXELS = None  # huge inputs are a use case; memory is bounded by the engine


@dataclass
class LoadedImage:
    pixels: torch.Tensor  # [1, H, W, C] float32 0..1, C in (1, 3, 4)
    bit_depth: int  # 8 or 16: the PNG we write keeps it


def read_image(path: Path, data: bytes | None = None) -> LoadedImage:
    """The image file at ``path``, or the file's ``data`` already read (errors still name ``path``)."""
    source = path if data is None else io.BytesIO(data)
    try:
        if _png_bit_depth(path, data) == 16:
            return _read_png16(path, data)
        with Image.open(source) as im:
            im = ImageOps.exif_transpose(im)  # camera photos: upright, as viewers show them
            return LoadedImage(_to_tensor(np.asarray(_normalise_mode(im))), 8)
    except InputImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        said = str(e).replace(repr(source), repr(str(path)))  # Pillow names the buffer it got: name the file
        raise InputImageError(f"{path}: not a readable image ({type(e).__name__}: {said})") from None


def pil_to_pixels(im: Image.Image) -> torch.Tensor:
    """[1, H, W, C] float32 0..1 from a PIL image of any mode; C is 1 (gray), 3 or 4 (alpha kept)."""
    return _to_tensor(np.asarray(_normalise_mode(im)))


def pixels_to_pil(pixels: torch.Tensor) -> Image.Image:
    """8-bit PIL image (L, RGB or RGBA) from [H, W, C] float 0..1, rounded to nearest."""
    arr = np.rint(pixels.clamp(0, 1).numpy().astype(np.float64) * 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Everything becomes L, RGB or RGBA: palette keeps its transparency, CMYK turns RGB."""
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("L", "RGB", "RGBA"):
        return im
    if im.mode in ("LA", "PA", "RGBa", "La"):
        return im.convert("RGBA")
    if im.mode in ("1", "I", "F") or im.mode.startswith("I;"):
        return im.convert("L") if im.mode == "1" else Image.fromarray(_wide_gray_to_8bit(im))
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def _wide_gray_to_8bit(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im).astype(np.float64)
    top = 65535.0 if arr.max() > 255 else 255.0
    return np.clip(arr / top * 255 + 0.5, 0, 255).astype(np.uint8)


def _to_tensor(arr: np.ndarray, top: float = 255.0) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputImageError(f"image is empty ({arr.shape[1]}x{arr.shape[0]} px)")
    pixels = arr.astype(np.float32)
    pixels /= top  # in place: one float copy of the image, not two
    return torch.from_numpy(pixels).unsqueeze(0)


def _png_bit_depth(path: Path, data: bytes | None = None) -> int | None:
    if data is not None:
        head = data[:26]
    else:
        with open(path, "rb") as f:
            head = f.read(26)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 26:
        return None
    return head[24]


def _read_png16(path: Path, data: bytes | None = None) -> LoadedImage:
    import png

    reader = png.Reader(filename=str(path)) if data is None else png.Reader(bytes=data)
    width, height, rows, info = reader.asDirect()
    planes = info["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, planes)
    if planes == 2:  # gray + alpha -> RGBA
        arr = np.concatenate([arr[..., :1].repeat(3, -1), arr[..., 1:]], -1)
    return LoadedImage(_to_tensor(arr, 65535.0), 16)


def write_png(path: Path, pixels: torch.Tensor, bit_depth: int = 8) -> None:
    """``pixels``: [H, W, C] float 0..1. Written atomically, so a crash never leaves half a file."""
    write_png_array(path, png_array(pixels, bit_depth))


PNG_ROWS_PER_BAND = 64  # rows converted at a time: float64 temporaries of ~6 MB for a 4096 px wide RGB row band


def png_array(pixels: torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """[H, W, C] float 0..1 -> uint8 (uint16 for ``bit_depth`` 16) [H, W, C], rounded to nearest.
    Converted a band of rows at a time, so that besides the result only a band's float64
    temporaries exist (whole-image ones were 2 x 8 bytes a value: 800 MB for a 4096 px RGB image)."""
    top = 65535 if bit_depth == 16 else 255
    out = np.empty(tuple(pixels.shape), dtype=np.uint16 if bit_depth == 16 else np.uint8)
    for y in range(0, out.shape[0], PNG_ROWS_PER_BAND):
        band = pixels[y : y + PNG_ROWS_PER_BAND].clamp(0, 1).numpy().astype(np.float64)
        band *= top
        np.rint(band, out=band)
        out[y : y + PNG_ROWS_PER_BAND] = band  # whole numbers within the range: the cast is exact
    return out


def write_png_array(path: Path, arr: np.ndarray) -> None:
    """``arr``: [H, W, C] uint8 or uint16 (a 16-bit PNG) from ``png_array``. Written atomically."""
    channels = arr.shape[-1]
    tmp = path.with_name(path.name + ".part")
    if arr.dtype == np.uint16:
        import png

        mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
        png.from_array(arr.reshape(arr.shape[0], -1), f"{mode};16").save(str(tmp))
    else:
        Image.fromarray(arr[..., 0] if channels == 1 else arr).save(tmp, format="PNG")
    tmp.replace(path)


def collect_inputs(inputs: list[str], suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Files as given, folders expanded to their files with these suffixes (images by default;
    sorted, not recursive)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in suffixes and q.is_file())
        else:
            paths.append(p)
    return paths
