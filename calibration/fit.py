"""Fit the calibration (temperature + validation operating curve) for a model file.

    python -m calibration.fit --model assets/model.pt --data ../shared/data/fracatlas --split val

Writes assets/calibration.json (temperature, sorted validation logits, operating curve, model sha256,
data, split, counts, date, ECE before/after) and, under --plots, reliability_val.png and
operating_curve_val.png. The test split can not be used here: it is never used to choose anything.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from calibration import core
from calibration.calibrator import DEFAULT_TARGET, REPORT_TARGETS, Calibration, file_sha256
from calibration.plots import operating_curve_plot, reliability_diagram

log = logging.getLogger("calibration.fit")


def score(model: str, data: list[str], split: str, splits_dir: str, cache: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(fracture logits, labels) of a split, via model.evaluate.score_data (cached squares)."""
    from model.evaluate import score_data

    samples, logits, _ = score_data(model, data, split, splits_dir=splits_dir,
                                    cache_dir=None if cache in (None, "", "none") else cache)
    if len(samples) == 0:
        raise SystemExit(f"no images found for split {split!r} in {data}")
    return logits[:, 0].astype(np.float64), np.array([s.label for s in samples], dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="data root(s)")
    ap.add_argument("--split", default="val", choices=["val", "train", "all"],
                    help="split to fit on (default val; 'all' for a separate calibration tree)")
    ap.add_argument("--out", default="assets/calibration.json")
    ap.add_argument("--plots", default="assets/report/calibration", help="folder for the validation plots")
    ap.add_argument("--default-target", type=float, default=DEFAULT_TARGET)
    ap.add_argument("--splits-dir", default="assets/splits")
    ap.add_argument("--cache", default=".cache", help="squares cache folder ('none' to disable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    z, y = score(args.model, args.data, args.split, args.splits_dir, args.cache)
    try:
        cal = Calibration.fit(z, y, default_target=args.default_target, model_file=str(args.model),
                              model_sha256=file_sha256(args.model), data=[str(d) for d in args.data],
                              split=args.split)
    except ValueError as exc:
        raise SystemExit(f"cannot calibrate: {exc}") from exc
    if cal.info["temperature_at_bound"]:
        log.warning("the temperature hit its search bound (%.4g): the scores carry little information", cal.temperature)
    cal.save(args.out)
    log.info("wrote %s", args.out)

    plots = Path(args.plots)
    reliability_diagram(core.sigmoid(z), cal.probability(z), y, plots / f"reliability_{args.split}.png",
                        f"Reliability on {args.split} ({cal.n_positives} fractured, {cal.n_negatives} not); "
                        f"T = {cal.temperature:.3f}")
    ops = [cal.operating_point(t) for t in REPORT_TARGETS]
    operating_curve_plot(cal.curve(), plots / f"operating_curve_{args.split}.png",
                         [(o["target_recall"], o["threshold"]) for o in ops],
                         f"Operating curve on {args.split} (calibrated probability)")

    print(f"temperature {cal.temperature:.4f}; ECE {cal.info['ece_before']:.4f} -> {cal.info['ece_after']:.4f}; "
          f"NLL {cal.info['nll_before']:.4f} -> {cal.info['nll_after']:.4f} "
          f"({args.split}: {cal.n_positives} positives, {cal.n_negatives} negatives)")
    print(f"{'target':>6} {'k':>3} {'threshold':>9} {'val recall':>10} {'LB95':>6} {'spec':>6} {'prec':>6}")
    for o in ops:
        print(f"{o['target_recall']:>6.2f} {o['k']:>3d} {o['threshold']:>9.4f} {o['recall_val']:>10.3f} "
              f"{o['recall_lower_bound']:>6.3f} {o['expected_specificity']:>6.3f} {o['expected_precision'] or 0:>6.3f}"
              + ("" if o["achievable"] else "  (not achievable)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
