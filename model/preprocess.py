"""The one preprocessing path used by training, evaluation, the CLI and the app.

decode_image()  any PNG/JPG/DICOM (8/16-bit, L/RGB/RGBA/P, EXIF orientation) -> 8-bit grayscale PIL image
                (its info["chroma"]: the upload's colourfulness, measured before it was made grey;
                info["modality"]: a DICOM's Modality tag, read with its header)
letterbox()     keep the aspect ratio, resize the longer side, pad to a square (black)
normalize()     uint8 square(s) -> float tensor with 3 identical channels, normalised
prepare()       a decoded image -> the network's input (negative, canonical pose, letterbox, normalise)
preprocess()    decode + prepare for one image, driven by the spec stored inside the model file

Image size, mean and std are never defined here: they come from the model file's metadata.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

# Refuse images above this many pixels (a 20000 x 20000 upload is 400 MP). Radiographs are <= ~30 MP
# (a 43 x 43 cm detector at 0.1 mm is 18.5 MP); at 40 MP the largest decode (an RGBA PNG) stays within
# the 300 MB per upload that tests/test_memory.py holds the app to.
MAX_PIXELS = 40_000_000
# PIL warns (DecompressionBombWarning) when an image it opens has more than its own limit (~89 MP) and
# refuses one above twice that; this path refuses anything above MAX_PIXELS with its own one-line message
# before decoding, so PIL's warning would only add a second, traceback-like log line for the same upload.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
PREPROCESS_VERSION = "1"  # bump when decode/letterbox change, so caches rebuild
# Grey-level windowing (a model file with `window`): the film's darkest and brightest WINDOW_CUTOFF percent
# of pixels clipped and the rest stretched over 0..255 (PIL's ImageOps.autocontrast), so that a washed-out
# or low-contrast export reaches the network (and the canonical pose, which weighs grey levels) as a film of
# full contrast. A film that already spans the range is almost unchanged.
WINDOW_CUTOFF = 0.5

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


def _dicom_to_uint8(data: bytes) -> tuple[np.ndarray, str | None]:
    """8-bit pixels of a DICOM file: modality and VOI LUTs applied, MONOCHROME1 inverted, mapped to
    0..255 by the file's display range (_display_span: its window, or an 8-bit file's values as they
    are), else stretched from the image's minimum to its maximum. Tags are never logged. Memory: Rows x
    Columns is checked from the header before any pixel data is decoded (a deflated file is inflated
    only after that check), only the middle frame of a multi-frame file is decoded, and for integer
    pixel data the LUTs are applied to the range of stored values (at most 2^17 entries), not to a
    float copy of the image."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        head, deflated = _dicom_header(data)
        rows, cols = int(head.get("Rows") or 0), int(head.get("Columns") or 0)
        frames = int(str(head.get("NumberOfFrames") or 1).strip() or 1)
        bytes_per_sample = max(8, int(head.get("BitsAllocated") or 16)) // 8
        declared = rows * cols * frames * int(head.get("SamplesPerPixel") or 1) * bytes_per_sample
    except Exception as exc:  # noqa: BLE001 - any pydicom failure is a bad upload
        raise ImageError(f"could not read the DICOM header ({type(exc).__name__})") from None
    modality = str(head.get("Modality") or "").strip().upper() or None  # kept for the X-ray check; never logged
    if rows <= 0 or cols <= 0:
        raise ImageError("the DICOM file holds no image (no rows/columns)")
    _check_size(cols, rows)  # from the header, before any pixel data is decoded
    if deflated and declared > 2 * MAX_PIXELS:  # pydicom inflates every frame of a deflated file at once
        raise ImageError(f"the deflated DICOM file holds {declared / 1e6:.0f} MB of pixel data ({frames} frames); "
                         f"the limit is {2 * MAX_PIXELS / 1e6:.0f} MB")
    del head
    try:  # only the middle frame of a multi-frame file is decoded
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        arr = pixel_array(ds, index=frames // 2 if frames > 1 else None)
    except Exception as exc:  # noqa: BLE001 - any pydicom failure is a bad upload
        raise ImageError(f"could not read the DICOM pixel data ({type(exc).__name__})") from None
    if "PixelData" in ds:
        del ds.PixelData  # the raw bytes are not needed any more (the decoded frame is `arr`)
    if arr.ndim == 3:  # colour: the mean of R, G and B
        return (_stretch_rows(lambda a, b: arr[a:b, :, :3], arr.shape, lambda a: a.astype(np.float64).mean(axis=-1)),
                modality)
    invert = str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1"

    def transform(values: np.ndarray) -> np.ndarray:
        v = apply_modality_lut(values, ds)
        try:
            v = apply_voi_lut(v, ds, index=0)
        except Exception:  # noqa: BLE001 - no usable window: the full range
            pass
        return np.asarray(v, dtype=np.float64)

    if _lut_sized(arr):
        lo, hi = int(arr.min()), int(arr.max())
        span, table = _display_span(ds, transform)
        if table is not None and table[0] <= lo and hi < table[0] + len(table[1]):  # the LUTs evaluated once
            base, values = table
            transform = lambda v: values[v - base]  # noqa: E731 - a lookup in the table computed above
        return _lut_to_uint8(lambda a, b: arr[a:b], arr.shape, lo, hi, transform, invert, span), modality
    a = transform(arr)
    return _to_uint8(a.max() - a if invert else a), modality


def _display_span(ds, transform) -> tuple[tuple[float, float] | None, tuple[int, np.ndarray] | None]:
    """(span, table): span is the range of (modality- and VOI-transformed) values that a DICOM itself says
    is black to white, or None to stretch the image's own minimum to its maximum; table is (lowest stored
    value, transform of every stored value from there) when it was computed, so the caller's lookup table
    reuses it instead of evaluating the LUTs a second time.

    With a VOI window or LUT, the span is what the window maps the whole stored range to, so the image is
    shown as a viewer shows it; without one, an 8-bit file's full stored range (its values are display
    values already: the same pixels as an 8-bit PNG decode to the same grey levels). Other data without
    a window (12 or 16 bits stored, often using a fraction of their range) are stretched."""
    try:
        bits = int(ds.get("BitsStored") or 0)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
    except (TypeError, ValueError):
        return None, None
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if not 1 <= bits <= 16 or not (has_voi or bits <= 8):
        return None, None
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    table = transform(np.arange(lo, hi + 1, dtype=np.int64))
    t = table[np.isfinite(table)]
    if not t.size or float(t.max()) <= float(t.min()):
        return None, (lo, table)
    return (float(t.min()), float(t.max())), (lo, table)


DEFLATED_HEAD = 1 << 20  # bytes of a deflated data set inflated to read its header


def _dicom_header(data: bytes):
    """(the data set up to, not including, the pixel data; whether the file is deflated). A deflated
    file (transfer syntax 1.2.840.10008.1.2.1.99) would be inflated whole by pydicom even to read its
    header, so only its first DEFLATED_HEAD inflated bytes are read here: a few hundred bytes that
    claim a 12000 x 12000 image are refused before anything large is allocated."""
    import zlib

    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = io.BytesIO(data)
    read_preamble(fp, True)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True), False
    head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[fp.tell():], DEFLATED_HEAD)
    return read_dataset(io.BytesIO(head), is_implicit_VR=False, is_little_endian=True,
                        stop_when=lambda tag, vr, length: tag >= 0x7FE00010), True


ROW_BAND = 256  # rows converted at a time: the temporary index/float copies stay a few MB
LARGE_JPEG = 16_000_000  # pixels above which a colour JPEG is decoded straight to grey


def _lut_sized(arr: np.ndarray) -> bool:
    return arr.ndim == 2 and arr.dtype.kind in "ui" and arr.size > 0 and int(arr.max()) - int(arr.min()) < 1 << 17


def _lut_to_uint8(rows, shape: tuple[int, int], lo: int, hi: int, transform=None, invert: bool = False,
                  span: tuple[float, float] | None = None) -> np.ndarray:
    """Integer pixels -> 0..255 through a lookup table over [lo, hi] of the stored values: the same
    numbers as stretching transform(pixels) in float64 over the values present, without a float copy
    of the image; or, with `span`, mapping that fixed range of transformed values to 0..255 (a DICOM's
    display range). rows(a, b) returns rows a..b of the image (an array slice or a decoded band)."""
    values = np.arange(lo, hi + 1, dtype=np.int64)
    t = transform(values) if transform is not None else values.astype(np.float64)
    present = np.zeros(len(values), dtype=bool)
    for i in range(0, shape[0], ROW_BAND):
        present[np.unique(rows(i, i + ROW_BAND)).astype(np.int64) - lo] = True
    finite = np.isfinite(t) & present
    if not finite.any():
        raise ImageError("the image holds no finite pixel values")
    if span is not None:
        tlo, thi = float(span[0]), float(span[1])
        if invert:
            t = (tlo + thi) - t
    else:
        if invert:
            t = t[finite].max() - t
        tlo, thi = float(t[finite].min()), float(t[finite].max())
    if thi <= tlo:
        return np.zeros(shape, dtype=np.uint8)
    scaled = (np.where(np.isfinite(t), t, tlo) - tlo) * (255.0 / (thi - tlo))
    lut = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    out = np.empty(shape, dtype=np.uint8)
    for i in range(0, shape[0], ROW_BAND):
        out[i : i + ROW_BAND] = lut[rows(i, i + ROW_BAND).astype(np.int64) - lo]
    return out


def _stretch_rows(rows, shape: tuple[int, ...], to_float) -> np.ndarray:
    """0..255 stretch of to_float(pixels), computed a band of rows at a time in float64; rows(a, b)
    returns rows a..b of the image."""
    lo, hi = np.inf, -np.inf
    for i in range(0, shape[0], ROW_BAND):
        band = to_float(rows(i, i + ROW_BAND))
        fin = band[np.isfinite(band)]
        if fin.size:
            lo, hi = min(lo, float(fin.min())), max(hi, float(fin.max()))
    if not np.isfinite(lo):
        raise ImageError("the image holds no finite pixel values")
    out = np.zeros(shape[:2], dtype=np.uint8)
    if hi <= lo:
        return out
    for i in range(0, shape[0], ROW_BAND):
        band = to_float(rows(i, i + ROW_BAND))
        band = (np.where(np.isfinite(band), band, lo) - lo) * (255.0 / (hi - lo))
        out[i : i + ROW_BAND] = np.clip(np.rint(band), 0, 255).astype(np.uint8)
    return out


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Stretch any 2-D numeric array to 0..255 (16-bit, float and DICOM data): integer data through a
    lookup table, other data a band of rows at a time."""
    arr = np.atleast_2d(np.asarray(arr))
    if _lut_sized(arr):
        return _lut_to_uint8(lambda a, b: arr[a:b], arr.shape, int(arr.min()), int(arr.max()))
    return _stretch_rows(lambda a, b: arr[a:b], arr.shape, lambda a: a.astype(np.float64))


def _check_size(w: int, h: int) -> None:
    if w < 8 or h < 8:
        raise ImageError(f"the image is only {w}x{h} pixels; an X-ray needs at least 8x8")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"the image is {w}x{h} ({w * h / 1e6:.0f} MP); the limit is {MAX_PIXELS / 1e6:.0f} MP"
        )


def _pil_to_gray(img: Image.Image, owned: bool = False) -> Image.Image:
    """owned: the image was decoded here, so it may be turned upright in place (exif_transpose
    otherwise returns a full-size copy, even when there is nothing to turn)."""
    if owned:
        ImageOps.exif_transpose(img, in_place=True)
    else:
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "L":
        return img
    if mode in ("1",):
        return img.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # a band of rows at a time, no full copy
        w, h = img.size

        def rows(a: int, b: int) -> np.ndarray:
            return np.asarray(img.crop((0, a, w, min(b, h))))

        if mode == "F":
            return Image.fromarray(_stretch_rows(rows, (h, w), lambda x: x.astype(np.float64)))
        lo, hi = img.getextrema()
        if int(hi) - int(lo) < 1 << 17:
            return Image.fromarray(_lut_to_uint8(rows, (h, w), int(lo), int(hi)))
        return Image.fromarray(_stretch_rows(rows, (h, w), lambda x: x.astype(np.float64)))
    if mode in ("LA", "RGBA", "PA") or (mode == "P" and "transparency" in img.info):
        # on black: grey x alpha (what compositing onto black and then going grey gives), without
        # a full-size RGBA copy
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        return ImageChops.multiply(rgba.convert("L"), rgba.getchannel("A"))
    return img.convert("L")  # RGB, P, CMYK, YCbCr, ...


GREY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "LA")


def chroma_of(img: Image.Image) -> float:
    """Mean chroma (max - min of R, G, B; 0 = grey, 1 = fully saturated) of an image, read from a
    copy at most 256 px on its longer side (made without a full-size copy; transparent areas count
    as black). The X-ray check's colour signal."""
    if img.mode in GREY_MODES:
        return 0.0
    w, h = img.size
    s = 256 / max(w, h)
    small = img if s >= 1 else img.resize((max(1, round(w * s)), max(1, round(h * s))),
                                          Image.Resampling.BICUBIC, reducing_gap=2.0)
    if small.mode in ("RGBA", "PA") or (small.mode == "P" and "transparency" in small.info):
        small = on_black(small)
    a = np.asarray(small.convert("RGB"), dtype=np.float32) / 255.0
    return float((a.max(axis=-1) - a.min(axis=-1)).mean())


def _with_chroma(gray: Image.Image, value: float) -> Image.Image:
    gray.info["chroma"] = float(value)  # measured before the image was made grey
    return gray


def on_black(img: Image.Image) -> Image.Image:
    """Composite an image with transparency onto black (transparent areas become black), as RGBA."""
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)


def read_source(path: str | os.PathLike) -> bytes:
    """A file's bytes, as every command reads an upload (ImageError when there is no such file, OSError
    when it cannot be read; source_error words either)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"no such file: {path.name}")
    return path.read_bytes()


def source_error(exc: BaseException) -> str | None:
    """The user-facing reason a file could not be used (ImageError's message, or the OSError's kind; no
    path), None for any other exception."""
    if isinstance(exc, ImageError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"could not read the file ({type(exc).__name__})"
    return None


def decode_image(source: Source) -> Image.Image:
    """Decode a file path, raw bytes, a PIL image or an array into an 8-bit grayscale PIL image.

    Raises ImageError with a short user-facing message for anything unusable.
    """
    if isinstance(source, Image.Image):
        _check_size(*source.size)
        return _with_chroma(_pil_to_gray(source), chroma_of(source))  # (mean chroma ignores orientation)
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3].astype(np.float64).mean(axis=-1)
        if arr.ndim != 2:
            raise ImageError(f"expected a 2-D image array, got shape {source.shape}")
        _check_size(arr.shape[1], arr.shape[0])
        return Image.fromarray(arr if arr.dtype == np.uint8 else _to_uint8(arr))
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else read_source(source)
    if not data:
        raise ImageError("the file is empty")
    if _is_dicom(data[:132]):
        arr, modality = _dicom_to_uint8(data)
        _check_size(arr.shape[1], arr.shape[0])
        gray = _with_chroma(Image.fromarray(arr), 0.0)  # DICOM counts as grey
        gray.info["modality"] = modality  # the Modality tag, read with the header (no second read)
        return gray
    try:
        img = Image.open(io.BytesIO(data))
        _check_size(*img.size)  # before decoding the pixels: huge images are refused cheaply
        colour = None
        if img.format == "JPEG" and img.mode != "L" and img.size[0] * img.size[1] > LARGE_JPEG:
            # a large colour JPEG is decoded straight to grey (1 byte a pixel); its colour is measured
            # first on a reduced (1/8 scale) decode
            small = Image.open(io.BytesIO(data))
            small.draft("RGB", (256, 256))
            colour = chroma_of(small)
            img.draft("L", img.size)
        img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError("the image is too large to decode safely") from None
    except UnidentifiedImageError:
        raise ImageError("the file is not an image this tool can read (PNG, JPEG or DICOM)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"the image file is damaged or truncated ({exc.__class__.__name__})") from None
    value = chroma_of(img) if colour is None else colour  # from a small copy, before the colour is gone
    return _with_chroma(_pil_to_gray(img, owned=True), value)


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


def unletterbox(square_map: np.ndarray, lb: Letterbox, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """Map a (size x size) float map back onto the original image geometry (padding removed), at the
    original size or at out_size = (w, h) (a reduced copy of the image)."""
    m = np.asarray(square_map, dtype=np.float32)
    if m.shape != (lb.size, lb.size):
        m = np.asarray(Image.fromarray(m, mode="F").resize((lb.size, lb.size), Image.Resampling.BILINEAR))
    crop = m[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    out = Image.fromarray(np.ascontiguousarray(crop), mode="F").resize(
        out_size or (lb.orig_w, lb.orig_h), Image.Resampling.BILINEAR
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


@dataclass(frozen=True)
class Prepared:
    """One image on the one preprocessing path: what the network reads and how to map its maps back.

    tensor: (3, S, S) normalised input; square: the (S, S) uint8 letterboxed image; lb: where the posed
    image sits in the square; gray: the image as it arrived (after `negative`, in its own orientation);
    film: gray straightened and cropped to the film when it lay on a black canvas (model/pose.straighten; a
    model file with `straighten`), else gray, then its grey levels windowed (window_levels; a model file
    with `window`); straight: that Straightening, or None;
    posed: film in the canonical pose the network reads (film itself for a model without it);
    pose: the flip/quarter turn from film to posed; negative: analysed as its negative."""

    tensor: torch.Tensor | None  # None when prepared without it (the square cache)
    square: np.ndarray
    lb: Letterbox
    gray: Image.Image
    posed: Image.Image
    pose: object
    negative: bool = False
    film: Image.Image | None = None
    straight: object = None


def prepare(gray: Image.Image, spec, negative: bool = False, tensor: bool = True) -> Prepared:
    """A decoded grey image -> the network's input, driven by the model file's spec (ModelMeta: img_size,
    mean, std, pose, straighten, window): straightened and cropped to the film when it lies on a black canvas
    and the model file says so (found before any inversion: the canvas is black as it arrived), optionally as
    its negative, its grey levels windowed when the model file says so (window_levels), then in the canonical
    pose (model/pose.py) when the model was trained for it, letterboxed and
    normalised (tensor=False: no torch call, for worker processes forked from a parent whose torch threads
    are running)."""
    from model.pose import IDENTITY, canonical_pose, straighten

    straight = straighten(gray) if getattr(spec, "straighten", False) else None
    if negative:
        info = dict(gray.info)
        gray = ImageOps.invert(gray)
        gray.info.update(info)
    film = straight.apply(gray) if straight is not None else gray
    if getattr(spec, "window", False):
        film = window_levels(film)
    pose = canonical_pose(film) if getattr(spec, "pose", "as-is") == "canonical" else IDENTITY
    posed = pose.apply(film)
    square, lb = letterbox(posed, int(spec.img_size))
    x = normalize(square, float(spec.mean), float(spec.std)) if tensor else None
    return Prepared(x, square, lb, gray, posed, pose, negative, film, straight)


def window_levels(film: Image.Image) -> Image.Image:
    """The film's grey levels stretched over 0..255, its darkest and brightest WINDOW_CUTOFF percent clipped
    (see WINDOW_CUTOFF); a flat image is returned as it is. Keeps the image's info (its measured chroma)."""
    out = ImageOps.autocontrast(film, cutoff=WINDOW_CUTOFF)
    out.info.update(film.info)
    return out


def preprocess(source: Source, spec, negative: bool = False) -> Prepared:
    """decode -> prepare: all of the preprocessing for one image, with the model's own spec."""
    return prepare(decode_image(source), spec, negative)


def train_augment(size: int):
    """Augmentations for the training split only, on uint8 (1, S, S) tv_tensors.Image: what uploads do to a
    film. Called with an image alone or with (tv_tensors.Image, tv_tensors.Mask): the geometric steps move
    both (nearest for the mask); grey levels, burnt-in labels, resampling, blur, noise and JPEG touch the
    image only. Two stages, `transforms[0]` geometric and `transforms[1]` the rest (train_augment_stages),
    so that two views of one film can differ in geometry alone (model.train --consistency).

    - all eight flips/quarter turns, equally often (the canonical pose of model/pose.py is any of them);
    - free rotation up to 30 degrees with black corners, shifts and scaling (both classes alike, so the
      black corners of one data set's rotated copies carry no label);
    - a black border (the film smaller on a black canvas), an 80-100% crop;
    - brightness, contrast (down to low contrast) and gamma 0.5-1.8;
    - burnt-in side markers and text labels;
    - down-and-up scaling (x0.25-0.7), blur, noise, JPEG quality 10-95."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    image_only = tv_tensors.Image
    geometric = v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.RandomRotation((90, 90))], p=0.5),  # with the two flips: all eight poses
            v2.RandomApply([v2.RandomAffine(degrees=30, translate=(0.06, 0.06), scale=(0.8, 1.15))], p=0.7),
            v2.RandomApply([v2.RandomZoomOut(fill=0, side_range=(1.0, 1.5)), v2.Resize((size, size))], p=0.15),
            v2.RandomApply([v2.RandomResizedCrop(size, scale=(0.64, 1.0), ratio=(0.8, 1.25))], p=0.15),
        ]
    )
    film = v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=(0.45, 1.4))], p=0.8),
            v2.RandomApply([v2.Lambda(_random_gamma, image_only)], p=0.5),
            v2.RandomApply([v2.Lambda(burn_in_label, image_only)], p=0.3),
            v2.RandomApply([v2.Lambda(_down_up, image_only)], p=0.3),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.3, 1.5))], p=0.15),
            v2.RandomApply([v2.Lambda(_noise, image_only)], p=0.2),
            v2.RandomApply([v2.JPEG((10, 95))], p=0.5),
        ]
    )
    return v2.Compose([geometric, film])


def train_augment_stages(augment) -> tuple:
    """(geometric, the rest) of a train_augment(size)."""
    return augment.transforms[0], augment.transforms[1]


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi))


def _random_gamma(x: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    return F.adjust_gamma(x, _uniform(0.5, 1.8))


def _down_up(x: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    size = list(x.shape[-2:])
    f = _uniform(0.25, 0.7)
    small = F.resize(x, [max(8, round(size[0] * f)), max(8, round(size[1] * f))], antialias=True)
    return F.resize(small, size, antialias=True)


def _noise(x: torch.Tensor) -> torch.Tensor:
    sigma = _uniform(2.0, 12.0)
    return (x.float() + torch.randn(x.shape) * sigma).round().clamp(0, 255).to(torch.uint8)


LABEL_TEXTS = ("R", "L", "RT", "LT", "AP", "LAT", "PA", "OBL", "SUPINE", "ERECT", "R  AP", "L  LAT")


def burn_in_label(x: torch.Tensor, text: str | None = None) -> torch.Tensor:
    """Burn a side marker or a short label (white or light grey, in a random corner) into a uint8
    (1, H, W) image, as radiographers' markers and PACS exports do."""
    from PIL import ImageDraw, ImageFont

    h, w = x.shape[-2:]
    img = Image.fromarray(x[0].numpy())
    if text is None:
        text = LABEL_TEXTS[int(torch.randint(len(LABEL_TEXTS), (1,)))]
    px = max(8, int(min(h, w) * _uniform(0.04, 0.1)))
    font = ImageFont.load_default(size=px)
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    margin = int(min(h, w) * 0.04)
    left = margin if torch.rand(1) < 0.5 else max(0, w - margin - (x1 - x0))
    top = margin if torch.rand(1) < 0.5 else max(0, h - margin - (y1 - y0))
    draw.text((left - x0, top - y0), text, fill=int(torch.randint(200, 256, (1,))), font=font)
    return torch.from_numpy(np.asarray(img).copy())[None]
