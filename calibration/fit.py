"""Fit the calibration (temperature + validation operating curve) from scored arrays. The command that
scores a model file's split and calls this is in the CLI layer:

    python -m model.calibrate fit --model assets/model.pt --data ../shared/data/fracatlas --split val

Writes assets/calibration.json (temperature, sorted validation logits, operating curve, model sha256,
data, split, counts, date, ECE before/after) and, under --plots, reliability_val.png and
operating_curve_val.png. The test split can not be used here: it is never used to choose anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from calibration import core
from calibration.calibrator import DEFAULT_TARGET, REPORT_TARGETS, Calibration
from calibration.plots import operating_curve_plot, reliability_diagram

log = logging.getLogger("calibration.fit")


def fit_and_plot(z: np.ndarray, y: np.ndarray, *, model_file: str, model_sha256: str, data: list[str], split: str,
                 out: str | Path, plots: str | Path, default_target: float = DEFAULT_TARGET) -> Calibration:
    """Fit the calibration on fracture logits `z` and 0/1 labels `y`, save it to `out`, draw the
    reliability diagram and the operating curve into `plots`, and print a summary."""
    try:
        cal = Calibration.fit(z, y, default_target=default_target, model_file=model_file,
                              model_sha256=model_sha256, data=[str(d) for d in data], split=split)
    except ValueError as exc:
        raise SystemExit(f"cannot calibrate: {exc}") from exc
    if cal.info["temperature_at_bound"]:
        log.warning("the temperature hit its search bound (%.4g): the scores carry little information", cal.temperature)
    cal.save(out)
    log.info("wrote %s", out)

    plots = Path(plots)
    reliability_diagram(core.sigmoid(z), cal.probability(z), y, plots / f"reliability_{split}.png",
                        f"Reliability on {split} ({cal.n_positives} fractured, {cal.n_negatives} not); "
                        f"T = {cal.temperature:.3f}")
    ops = [cal.operating_point(t) for t in REPORT_TARGETS]
    operating_curve_plot(cal.curve(), plots / f"operating_curve_{split}.png",
                         [(o["target_recall"], o["threshold"]) for o in ops],
                         f"Operating curve on {split} (calibrated probability)")

    print(f"temperature {cal.temperature:.4f}; ECE {cal.info['ece_before']:.4f} -> {cal.info['ece_after']:.4f}; "
          f"NLL {cal.info['nll_before']:.4f} -> {cal.info['nll_after']:.4f} "
          f"({split}: {cal.n_positives} positives, {cal.n_negatives} negatives)")
    print(f"{'target':>6} {'k':>3} {'threshold':>9} {'val recall':>10} {'LB95':>6} {'spec':>6} {'prec':>6}")
    for o in ops:
        print(f"{o['target_recall']:>6.2f} {o['k']:>3d} {o['threshold']:>9.4f} {o['recall_val']:>10.3f} "
              f"{o['recall_lower_bound']:>6.3f} {o['expected_specificity']:>6.3f} {o['expected_precision'] or 0:>6.3f}"
              + ("" if o["achievable"] else "  (not achievable)"))
    print("labelled fractures needed before a target can be promised at all (finite-sample rule): "
          + ", ".join(f"{t:.2f}: {core.min_positives(t)}" for t in REPORT_TARGETS)
          + f"; this data has {cal.n_positives}")
    return cal
