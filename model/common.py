"""What every layer shares, in one place: the repository's paths, the default decision threshold, and
small helpers (file hash, JSON-safe values, percentages, 8-bit stretching). Imports nothing of the
project, so anything may import it (calibration/ excepted, which imports nothing of the project at all;
it owns the default target recall, calibration.DEFAULT_TARGET, and the sigmoid, calibration.core.sigmoid).

Paths are anchored at the repository root, so the commands work from any working directory. Reports
record paths with `shown()`: relative to the repository when inside it, never this machine's absolute
path."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"
DEFAULT_MODEL = ASSETS / "model.pt"
DEFAULT_CALIBRATION = ASSETS / "calibration.json"
DEFAULT_XRAY_CHECK = ASSETS / "xray_check.npz"
SPLITS_DIR = ASSETS / "splits"
REPORT_DIR = ASSETS / "report"
EXAMPLES_DIR = ASSETS / "examples"  # three FracAtlas test-split X-rays (CC BY 4.0)
SHARED_DIR = REPO_ROOT.parent / "shared"  # data sets and weights beside the checkout (never committed)

# the decision threshold of an uncalibrated model (the calibration's operating points replace it)
DEFAULT_THRESHOLD = 0.5


def shown(path: str | os.PathLike | None) -> str | None:
    """A path as reports record it: relative to the repository root when it lies inside, else as given."""
    if path is None or str(path) == "":
        return None if path is None else ""
    p = Path(path)
    try:
        return p.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plain(v: Any, digits: int | None = None) -> Any:
    """numpy scalars/arrays -> JSON types, recursively; NaN/inf -> None; floats rounded to `digits`."""
    if isinstance(v, dict):
        return {str(k): plain(x, digits) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x, digits) for x in v]
    if isinstance(v, np.ndarray):
        return plain(v.tolist(), digits)
    if isinstance(v, np.generic):
        return plain(v.item(), digits)
    if isinstance(v, float):
        return None if not math.isfinite(v) else (v if digits is None else round(v, digits))
    return v


def pct(v: Any, digits: int = 0) -> str:
    """0.953 -> '95%' (digits=0) or '95.3%'; 'n/a' for None, NaN, booleans and non-numbers."""
    if not isinstance(v, (int, float, np.number)) or isinstance(v, bool) or not math.isfinite(float(v)):
        return "n/a"
    return f"{100 * float(v):.{digits}f}%"


BUNDLE_FILES = {"model": DEFAULT_MODEL.name, "calibration": DEFAULT_CALIBRATION.name,
                "xray_check": DEFAULT_XRAY_CHECK.name}  # the files a bundle folder holds


def add_bundle_args(ap, parts: tuple[str, ...] = ("model", "calibration", "xray_check")) -> None:
    """Declare --bundle DIR (the folder holding model.pt, calibration.json and xray_check.npz; default
    assets/, MONAI's bundle root) and, for each part a command reads, its file flag (--model, --calibration,
    --xray-check), which overrides that one file. Call resolve_bundle(args) after parsing."""
    ap.add_argument("--bundle", default=str(ASSETS), metavar="DIR",
                    help="folder with model.pt, calibration.json and xray_check.npz (default assets/); "
                    "--model, --calibration and --xray-check override single files")
    helps = {"model": "model file (default BUNDLE/model.pt)",
             "calibration": "calibration file (default BUNDLE/calibration.json)",
             "xray_check": "X-ray check file (default BUNDLE/xray_check.npz; without it only colour is checked)"}
    for part in parts:
        ap.add_argument("--" + part.replace("_", "-"), default=None, metavar="PATH", help=helps[part])


def resolve_bundle(args):
    """Fill each file flag left out from --bundle (args.model, args.calibration, args.xray_check as str)."""
    for part, name in BUNDLE_FILES.items():
        if hasattr(args, part) and getattr(args, part) is None:
            setattr(args, part, str(Path(args.bundle) / name))
    return args


def setup_cpu_threads(n: int = 2) -> None:
    """torch's CPU threads for this process (every command's --threads)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def prob_text(v: Any) -> str:
    """How every view prints a probability or a threshold: a percentage with one decimal ('4.2%'),
    '<0.1%' and '>99.9%' at the ends, 'n/a' for no number. One format, so the page, the CLI, the worklist and the
    Secondary Capture print the same threshold the same way."""
    if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        if 0 < float(v) < 0.0005:
            return "<0.1%"
        if 0.9995 <= float(v) < 1:  # not "100.0%": the model is never certain
            return ">99.9%"
    return pct(v, 1)


def command_parser(spec, doc: str | None = None, **kw):
    """argparse.ArgumentParser for a command run as `python -m <module>`: `spec` is the module's
    __spec__, so --help says `usage: python -m model.predict ...` (not `predict.py`); `doc` (the module
    docstring) is shown as written."""
    import argparse

    prog = f"python -m {spec.name}" if spec is not None and spec.name else None
    kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    return argparse.ArgumentParser(prog=prog, description=doc, **kw)


def to_uint8(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linear map of [lo, hi] (default: the array's own range) to 0..255, rounded; booleans -> 0/255."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint8 and lo is None and hi is None:
        return a
    a = a.astype(np.float64)
    lo = float(np.nanmin(a)) if lo is None else lo
    hi = float(np.nanmax(a)) if hi is None else hi
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)
