"""The shipped bundle, loaded and checked in one place: the model file, its calibration and its X-ray
check. The app, the CLIs and the scripts load through `load_bundle` (or `load_model` when they need the
network alone).

Why three files and a loader, not one file: the calibration and the X-ray check are refitted without
retraining (a new validation set, a new group of negatives), and each records the sha256 of the model
file it was fitted for. The loader hashes the model file once and applies one rule to both:
- the calibration is used only when it belongs to this model file (calibration's `matches_model`);
  otherwise scores are uncalibrated and `calibration_note` says why;
- the X-ray check's network signals are used only when it was fitted on this model file at this input
  size; otherwise only its colour and image statistics are (its `note` says why).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from calibration import Calibration
from model.common import DEFAULT_CALIBRATION, DEFAULT_MODEL, DEFAULT_THRESHOLD, DEFAULT_XRAY_CHECK, file_sha256
from model.network import FractureNet, ModelMeta, load_model
from model.xray.check import XrayCheck

log = logging.getLogger("model.bundle")


def no_calibration_note(threshold: float = DEFAULT_THRESHOLD) -> str:
    return f"no calibration file: uncalibrated score, threshold {threshold:g}"


def mismatch_calibration_note(threshold: float = DEFAULT_THRESHOLD) -> str:
    return f"the calibration file belongs to another model file: uncalibrated score, threshold {threshold:g}"


@dataclass
class Bundle:
    model: FractureNet
    meta: ModelMeta
    model_path: Path
    model_sha256: str
    calibration: Calibration | None
    calibration_note: str  # why there is no calibration ("" when there is one)
    xray: XrayCheck


def load_calibration(path: str | Path | None, model_sha256: str,
                     threshold: float = DEFAULT_THRESHOLD) -> tuple[Calibration | None, str]:
    """(calibration or None, note): None for no path, a missing or unreadable file, or a calibration
    fitted for another model file."""
    if not path:
        return None, no_calibration_note(threshold)
    try:
        cal = Calibration.load(path)
    except FileNotFoundError:
        return None, no_calibration_note(threshold)
    except Exception as exc:  # noqa: BLE001 - a broken file: uncalibrated, said once in the log
        log.warning("calibration unavailable (%s): uncalibrated scores", type(exc).__name__)
        return None, no_calibration_note(threshold)
    if not cal.matches_model(model_sha256):
        log.warning("calibration file %s was fitted for another model file (sha256 mismatch): uncalibrated scores",
                    Path(path).name)
        return None, mismatch_calibration_note(threshold)
    return cal, ""


def load_xray_check(path: str | Path | None, model_sha256: str, meta: ModelMeta) -> XrayCheck:
    if not path or not Path(path).is_file():
        check = XrayCheck.colour_only(f"no X-ray check file at {path}: only colour is checked")
        log.warning(check.note)
        return check
    return XrayCheck.load(path, model_sha256=model_sha256, img_size=meta.img_size)


def load_bundle(model_path: str | Path = DEFAULT_MODEL, calibration_path: str | Path | None = DEFAULT_CALIBRATION,
                xray_path: str | Path | None = DEFAULT_XRAY_CHECK, device: str | torch.device = "cpu") -> Bundle:
    """Load and cross-check the three files. FileNotFoundError / ValueError for an unusable model file;
    a missing or mismatched calibration or X-ray check degrades (and says so) instead of failing."""
    model, meta = load_model(model_path, device)
    sha = file_sha256(model_path)
    cal, note = load_calibration(calibration_path, sha, meta.threshold)
    return Bundle(model, meta, Path(model_path), sha, cal, note, load_xray_check(xray_path, sha, meta))


def add_feature_args(ap) -> None:
    """The flags of a command that computes network features of data sets' images (model.xray.fit,
    scripts.eval_xray_check): --data (repeatable), --splits-dir, --cache-dir, --threads."""
    from model.cache import CACHE_HELP, DEFAULT_CACHE_DIR
    from model.common import SPLITS_DIR

    ap.add_argument("--data", action="append", required=True, help="data root (repeatable)")
    ap.add_argument("--splits-dir", default=str(SPLITS_DIR))
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help=CACHE_HELP)
    ap.add_argument("--threads", type=int, default=2)


def start_command(ap, argv=None):
    """How a command that reads one model file starts: parse (with resolve_bundle), INFO lines to stderr, the
    torch threads, the model loaded and its file hashed. Returns (args, model, meta, model_sha256)."""
    import sys

    from model.common import resolve_bundle, setup_cpu_threads

    args = resolve_bundle(ap.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    setup_cpu_threads(args.threads)
    model, meta = load_model(args.model)
    return args, model, meta, file_sha256(args.model)
