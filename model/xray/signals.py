"""The X-ray check's signals, measured on one upload (model/xray/check.py turns them into a verdict):

  chroma()           mean chroma of the upload before it is made grey (colour)
  dicom_modality()   the DICOM Modality tag (header only; never logged)
  image_stats()      20 statistics of the letterboxed image (brightness, contrast, edges, texture)
  Taps               channel means and standard deviations of early network layers, recorded by forward
                     hooks during the prediction's own forward pass (TAP_LAYERS, from model/network.py)
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from model.common import to_uint8
from model.network import ARCHS
from model.preprocess import _is_dicom, chroma_of
from model.xray.kinds import XRAY_CHECK_MODALITIES

STAT_NAMES = ("mean", "std", "dark_frac", "bright_frac", "skew", "grad_mean", "hf_ratio", "entropy",
              "edge_frac", "border_minus_centre", *(f"lbp_{k}" for k in range(9)), "lbp_other")


def chroma(source) -> float:
    """Mean chroma (0 = grey, 1 = fully saturated) of an upload, from a <= 256 px copy
    (preprocess.chroma_of). DICOM and undecodable inputs count as grey (decode_image reports the
    real errors). decode_image records the same number in its result's info["chroma"]."""
    try:
        if isinstance(source, np.ndarray):
            arr = source
            if arr.ndim != 3 or arr.shape[-1] < 3:
                return 0.0
            img = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8) if arr.dtype == np.uint8
                                  else to_uint8(arr[..., :3]))
        elif isinstance(source, Image.Image):
            img = source
        else:
            data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
            if _is_dicom(data[:132]):
                return 0.0
            img = Image.open(io.BytesIO(data))
            img.draft("RGB", (256, 256))
        return chroma_of(ImageOps.exif_transpose(img) if hasattr(img, "getexif") else img)
    except Exception:  # noqa: BLE001 - the decoder raises the user-facing error
        return 0.0



FOREIGN_RATIO = 100.0  # the ratio a foreign modality gets (score ~ 1e-8)


def dicom_modality(source) -> str | None:
    """The Modality tag of a DICOM upload (header only), None for anything else or when it is absent.
    Only this one tag is read; it is never logged."""
    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        elif isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                data = f.read(132)
                if not _is_dicom(data):
                    return None
                data += f.read()
        else:
            return None
        if not _is_dicom(data[:132]):
            return None
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["Modality"])
        value = str(getattr(ds, "Modality", "") or "").strip().upper()
        return value or None
    except Exception:  # noqa: BLE001 - decode_image reports unreadable files
        return None


def foreign_modality(modality: str | None) -> bool:
    return bool(modality) and modality not in XRAY_CHECK_MODALITIES


def content(square: np.ndarray) -> np.ndarray:
    """The part of a letterboxed square that is not all-black rows/columns (the padding)."""
    sq = np.asarray(square)
    rows, cols = np.flatnonzero(sq.max(axis=1) > 0), np.flatnonzero(sq.max(axis=0) > 0)
    if len(rows) < 8 or len(cols) < 8:
        return sq
    return sq[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def image_stats(square: np.ndarray) -> np.ndarray:
    """20 statistics (STAT_NAMES) of the image part of a uint8 letterboxed square: 10 of brightness,
    contrast and edges, and the local-binary-pattern texture histogram."""
    a = content(square).astype(np.float32) / 255.0
    h, w = a.shape
    mean, std = float(a.mean()), float(a.std())
    skew = float(((a - mean) ** 3).mean() / (std**3 + 1e-6)) if std > 1e-4 else 0.0
    gx, gy = np.abs(np.diff(a, axis=1)), np.abs(np.diff(a, axis=0))
    grad = 0.5 * (gx.mean() + gy.mean())
    lap = np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:])
    hist = np.histogram(a, bins=32, range=(0.0, 1.0))[0].astype(np.float64)
    p = hist / max(hist.sum(), 1)
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    edge = float(((gx[:-1, :] + gy[:, :-1]) > 0.08).mean())
    bh, bw = max(1, h // 8), max(1, w // 8)
    frame = np.concatenate([a[:bh].ravel(), a[-bh:].ravel(), a[:, :bw].ravel(), a[:, -bw:].ravel()])
    centre = a[h // 4 : h - h // 4, w // 4 : w - w // 4]
    basic = np.array([
        mean, std, float((a < 16 / 255).mean()), float((a > 240 / 255).mean()), float(np.clip(skew, -10, 10)),
        float(grad), float(lap.mean() / (std + 0.02)), entropy, edge,
        float(frame.mean() - (centre.mean() if centre.size else mean)),
    ], dtype=np.float64)
    return np.concatenate([basic, lbp_histogram(a)])


def squares_stats(squares: np.ndarray) -> np.ndarray:
    """image_stats of one square (S, S) or of each of (N, S, S): (N, 20)."""
    squares = np.asarray(squares)
    return np.stack([image_stats(q) for q in (squares[None] if squares.ndim == 2 else squares)])


def lbp_histogram(a: np.ndarray) -> np.ndarray:
    """Square-rooted shares of the 10 rotation-invariant uniform local binary patterns (8 neighbours,
    radius 1, on the image at half resolution; a neighbour counts as brighter by more than 2/255).

    Micro-texture: radiographs are smooth, noisy shadows with few sharp edges, so their pattern mix is
    narrow; photographs (fur, foliage, fabric, print, JPEG blocks) spread over other patterns. This is
    what catches grey photographs that brightness and contrast alone let through. (scikit-image's
    local_binary_pattern has no such tolerance, so flat or quantised areas flip between codes, and it is
    not a runtime dependency.)"""
    b = a[::2, ::2]
    if min(b.shape) < 3:
        return np.zeros(10)
    c = b[1:-1, 1:-1] + 2 / 255
    ring = [b[:-2, :-2], b[:-2, 1:-1], b[:-2, 2:], b[1:-1, 2:], b[2:, 2:], b[2:, 1:-1], b[2:, :-2], b[1:-1, :-2]]
    bits = np.stack([n >= c for n in ring]).astype(np.int8)
    transitions = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(axis=0)
    code = np.where(transitions <= 2, bits.sum(axis=0), 9)  # 0..8 uniform (by bright neighbours), 9 other
    return np.sqrt(np.bincount(code.ravel(), minlength=10) / code.size)



# Intermediate layers whose channel means and standard deviations (pooled over space) are checked as
# well: early layers describe texture and contrast, which separate photographs from radiographs better
# than the penultimate features of a network trained only on X-rays.
TAP_LAYERS = {name: list(spec.taps) for name, spec in ARCHS.items()}  # model/network.py's table

class Taps:
    """Forward hooks that keep the spatial mean and std of each channel of some layers (one forward)."""

    def __init__(self, model, layers: list[str]):
        self.layers = list(layers)
        self._out: dict[str, np.ndarray] = {}
        self._handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in self.layers]

    def _hook(self, name):
        def fn(module, inputs, output):
            o = output.detach().float()
            self._out[name] = np.concatenate([o.mean((2, 3)).cpu().numpy(), o.std((2, 3)).cpu().numpy()], axis=1)
        return fn

    def collect(self) -> np.ndarray:
        """(N, sum of 2 x channels) for the last forward, then cleared."""
        if not self.layers:
            return np.zeros((0, 0), np.float32)
        out = np.concatenate([self._out[n] for n in self.layers], axis=1)
        self._out.clear()
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._out.clear()
