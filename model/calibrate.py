"""Score a model file's split and fit or report its calibration (the calibration package itself works
on arrays only and imports nothing of the model).

    python -m model.calibrate fit --model assets/model.pt --data ../shared/data/fracatlas --split val
    python -m model.calibrate report --model assets/model.pt --data ../shared/data/fracatlas --split test \
        --out assets/report/calibration
    python -m model.calibrate report --model assets/model.pt --data /any/class-folder/tree --split all --out out/

fit writes assets/calibration.json and, under --plots, reliability_<split>.png and
operating_curve_<split>.png (calibration.fit); the test split can not be used: it never chooses
anything. report writes OUT/report.json, OUT/report.md and its plots (calibration.report); nothing is
chosen there, the thresholds and temperature come from the calibration file.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from calibration.calibrator import DEFAULT_TARGET, REPORT_TARGETS, Calibration
from calibration.fit import fit_and_plot
from calibration.report import write_report
from model.cache import CACHE_HELP, DEFAULT_CACHE_DIR
from model.common import (
    DEFAULT_CALIBRATION,
    REPORT_DIR,
    SPLITS_DIR,
    add_bundle_args,
    command_parser,
    file_sha256,
    resolve_bundle,
    shown,
)
from model.evaluate import score_data

log = logging.getLogger("model.calibrate")


def score(model: str, data: list[str], split: str, splits_dir: str, cache: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(fracture logits, labels) of a split, via model.evaluate.score_data (cached squares)."""
    samples, logits, _ = score_data(model, data, split, splits_dir=splits_dir,
                                    cache_dir=None if cache in (None, "", "none") else cache)
    if len(samples) == 0:
        raise SystemExit(f"no images found for split {split!r} in {data}")
    return logits[:, 0].astype(np.float64), np.array([s.label for s in samples], dtype=np.int64)


def _common(ap: argparse.ArgumentParser, parts: tuple[str, ...]) -> None:
    add_bundle_args(ap, parts)
    ap.add_argument("--data", action="append", required=True, help="data root (repeat for several)")
    ap.add_argument("--splits-dir", default=str(SPLITS_DIR))
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help=CACHE_HELP + " ('none': no cache)")


def main(argv: list[str] | None = None) -> int:
    ap = command_parser(__spec__, __doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit the temperature and the operating curve on a split (default val)")
    _common(f, ("model",))
    f.add_argument("--split", default="val", choices=["val", "train", "all"],
                   help="split to fit on (default val; 'all' for a separate calibration tree)")
    f.add_argument("--out", default=str(DEFAULT_CALIBRATION))
    f.add_argument("--plots", default=str(REPORT_DIR / "calibration"), help="folder for the validation plots")
    f.add_argument("--default-target", type=float, default=DEFAULT_TARGET)
    r = sub.add_parser("report", help="report the calibration file's operating points on a split")
    _common(r, ("model", "calibration"))
    r.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    r.add_argument("--out", default=str(REPORT_DIR / "calibration"))
    r.add_argument("--targets", type=float, nargs="+", default=list(REPORT_TARGETS))
    r.add_argument("--prevalence", type=float, default=None,
                   help="also give the expected precision at this prevalence (default: the split's own)")
    r.add_argument("--force", action="store_true", help="report even if the model is not the calibrated one")
    args = resolve_bundle(ap.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if args.command == "fit":
        z, y = score(args.model, args.data, args.split, args.splits_dir, args.cache_dir)
        fit_and_plot(z, y, model_file=shown(args.model), model_sha256=file_sha256(args.model), data=args.data,
                     split=args.split, out=args.out, plots=args.plots, default_target=args.default_target)
        return 0

    cal = Calibration.load(args.calibration)
    sha = file_sha256(args.model)
    if not cal.matches_model(sha):
        msg = (f"{args.model} (sha256 {sha[:12]}) is not the model {args.calibration} was fitted for "
               f"({str(cal.model_sha256)[:12]}); rerun python -m model.calibrate fit")
        if not args.force:
            raise SystemExit(msg)
        log.warning(msg)
    z, y = score(args.model, args.data, args.split, args.splits_dir, args.cache_dir)
    write_report(cal, z, y, split=args.split, out=args.out, targets=args.targets, prevalence=args.prevalence,
                 extra={"data": [str(d) for d in args.data], "model_file": shown(args.model), "model_sha256": sha})
    return 0


if __name__ == "__main__":
    sys.exit(main())
