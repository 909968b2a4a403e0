"""The one preprocessing path used by training, evaluation, the CLI and the app.

decode_image()  any PNG/JPG/DICOM (8/16-bit, L/RGB/RGBA/P, EXIF orientation) -> 8-bit grayscale PIL image
letterbox()     keep the aspect ratio, resize the longer side, pad to a square (black)
normalize()     uint8 square(s) -> float tensor with 3 identical channels, normalised
preprocess()    all three for one image, driven by the spec stored inside the model file

Image size, mean and std are never defined here: they come from the model file's metadata.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse images above this many pixels (a 20000 x 20000 upload is 400 MP); radiographs are <= ~30 MP.
MAX_PIXELS = 80_000_000
PREPROCESS_VERSION = "1"  # bump when decode/letterbox change, so caches rebuild

Source = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class ImageError(ValueError):
    """An input that cannot be used as an image; the message is meant for the user."""


@dataclass(frozen=True)
class Letterbox:
    """Where the original image sits inside the square model input."""

    orig_w: int
    orig_h: int
    size: int
    scale: float
    pad_x: int
    pad_y: int
    new_w: int
    new_h: int


def _is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _dicom_to_array(data: bytes) -> np.ndarray:
    """Pixel data with modality and VOI LUTs applied, MONOCHROME1 inverted. Tags are never logged."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from pydicom.pixels import pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(str(ds.get("NumberOfFrames") or 1).strip() or 1)
    except Exception as exc:  # noqa: BLE001 - any pydicom failure is a bad upload
        raise ImageError(f"could not read the DICOM header ({type(exc).__name__})") from None
    if rows <= 0 or cols <= 0:
        raise ImageError("the DICOM file holds no image (no rows/columns)")
    _check_size(cols, rows)  # from the header, before any pixel data is decoded
    try:  # only the middle frame of a multi-frame file is decoded
        arr = pixel_array(ds, index=frames // 2 if frames > 1 else None)
    except Exception as exc:  # noqa: BLE001 - any pydicom failure is a bad upload
        raise ImageError(f"could not read the DICOM pixel data ({type(exc).__name__})") from None
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1)
        return arr.astype(np.float64)
    arr = apply_modality_lut(arr, ds)
    try:
        arr = apply_voi_lut(arr, ds, index=0)
    except Exception:  # noqa: BLE001 - no usable window: fall back to the full range
        pass
    arr = np.asarray(arr, dtype=np.float64)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr
    return arr


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Stretch any numeric array to 0..255 (used for 16-bit, float and DICOM data)."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        raise ImageError("the image holds no finite pixel values")
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (np.where(finite, arr, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _check_size(w: int, h: int) -> None:
    if w < 8 or h < 8:
        raise ImageError(f"the image is only {w}x{h} pixels; an X-ray needs at least 8x8")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"the image is {w}x{h} ({w * h / 1e6:.0f} MP); the limit is {MAX_PIXELS / 1e6:.0f} MP"
        )


def _pil_to_gray(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "L":
        return img
    if mode in ("1",):
        return img.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img)))
    if mode in ("LA", "RGBA", "PA") or (mode == "P" and "transparency" in img.info):
        return on_black(img).convert("L")
    return img.convert("L")  # RGB, P, CMYK, YCbCr, ...


def on_black(img: Image.Image) -> Image.Image:
    """Composite an image with transparency onto black (transparent areas become black), as RGBA."""
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)


def decode_image(source: Source) -> Image.Image:
    """Decode a file path, raw bytes, a PIL image or an array into an 8-bit grayscale PIL image.

    Raises ImageError with a short user-facing message for anything unusable.
    """
    if isinstance(source, Image.Image):
        _check_size(*source.size)
        return _pil_to_gray(source)
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3].astype(np.float64).mean(axis=-1)
        if arr.ndim != 2:
            raise ImageError(f"expected a 2-D image array, got shape {source.shape}")
        _check_size(arr.shape[1], arr.shape[0])
        return Image.fromarray(arr if arr.dtype == np.uint8 else _to_uint8(arr))
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"no such file: {path.name}")
        data = path.read_bytes()
    if not data:
        raise ImageError("the file is empty")
    if _is_dicom(data[:132]):
        arr = _dicom_to_array(data)
        _check_size(arr.shape[1], arr.shape[0])
        return Image.fromarray(_to_uint8(arr))
    try:
        img = Image.open(io.BytesIO(data))
        _check_size(*img.size)  # before decoding the pixels: huge images are refused cheaply
        img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError("the image is too large to decode safely") from None
    except UnidentifiedImageError:
        raise ImageError("the file is not an image this tool can read (PNG, JPEG or DICOM)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"the image file is damaged or truncated ({exc.__class__.__name__})") from None
    return _pil_to_gray(img)


def letterbox(img: Image.Image, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize the longer side to `size` (aspect kept) and centre it on a black square."""
    lb = letterbox_geometry(*img.size, size)
    resized = img.resize((lb.new_w, lb.new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    canvas = np.zeros((size, size), dtype=np.uint8)
    canvas[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = np.asarray(resized, dtype=np.uint8)
    return canvas, lb


def letterbox_geometry(w: int, h: int, size: int) -> Letterbox:
    """Where a w x h image lands inside the size x size square (the geometry letterbox() uses)."""
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    return Letterbox(w, h, size, scale, (size - new_w) // 2, (size - new_h) // 2, new_w, new_h)


def to_square_xy(xy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Original-image pixel coordinates (..., 2k) -> letterboxed-square coordinates."""
    xy = np.asarray(xy, dtype=np.float64).copy()
    xy[..., 0::2] = xy[..., 0::2] * (lb.new_w / lb.orig_w) + lb.pad_x
    xy[..., 1::2] = xy[..., 1::2] * (lb.new_h / lb.orig_h) + lb.pad_y
    return xy


def to_original_xy(xy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Letterboxed-square coordinates (..., 2k) -> original-image pixel coordinates (the inverse)."""
    xy = np.asarray(xy, dtype=np.float64).copy()
    xy[..., 0::2] = (xy[..., 0::2] - lb.pad_x) * (lb.orig_w / lb.new_w)
    xy[..., 1::2] = (xy[..., 1::2] - lb.pad_y) * (lb.orig_h / lb.new_h)
    return xy


def unletterbox(square_map: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map a (size x size) float map back onto the original image geometry (padding removed)."""
    m = np.asarray(square_map, dtype=np.float32)
    if m.shape != (lb.size, lb.size):
        m = np.asarray(Image.fromarray(m, mode="F").resize((lb.size, lb.size), Image.Resampling.BILINEAR))
    crop = m[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    out = Image.fromarray(np.ascontiguousarray(crop), mode="F").resize(
        (lb.orig_w, lb.orig_h), Image.Resampling.BILINEAR
    )
    return np.asarray(out, dtype=np.float32)


def normalize(squares: np.ndarray | torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (H,W) -> float (3,H,W); a batch (N,H,W) or (N,1,H,W) -> (N,3,H,W). Grey replicated."""
    t = torch.as_tensor(squares)
    if t.ndim == 2:
        t = t.unsqueeze(0)
    elif t.ndim == 3:  # always a batch, also when N == 1
        t = t.unsqueeze(1)
    x = (t.float() / 255.0 - mean) / std
    return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()


def preprocess(source: Source, spec: dict) -> tuple[torch.Tensor, Letterbox, Image.Image]:
    """decode -> letterbox -> normalise with the model's own spec (img_size, mean, std).

    Returns the (3, S, S) input tensor, the letterbox geometry and the decoded grayscale image.
    """
    gray = decode_image(source)
    square, lb = letterbox(gray, int(spec["img_size"]))
    return normalize(square, float(spec["mean"]), float(spec["std"])), lb, gray


def train_augment():
    """Augmentations for the training split only, on uint8 (1, S, S) tv_tensors.Image. Called with an image
    alone or with (tv_tensors.Image, tv_tensors.Mask): flips and affine moves apply to both (nearest
    for the mask), brightness/contrast/gamma to the image only."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.85, 1.15))], p=0.8),
            v2.RandomApply([v2.ColorJitter(brightness=0.25, contrast=0.25)], p=0.8),
            v2.RandomApply([v2.Lambda(_random_gamma, tv_tensors.Image)], p=0.5),
        ]
    )


def _random_gamma(x: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    gamma = float(torch.empty(1).uniform_(0.7, 1.4))
    return F.adjust_gamma(x, gamma)
