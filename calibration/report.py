"""Report recall targets and calibration error of the shipped calibration on a scored split (arrays in).
The command that scores a model file's split and calls write_report is in the CLI layer:

    python -m model.calibrate report --model assets/model.pt --data ../shared/data/fracatlas --split test \
        --out assets/report/calibration
    python -m model.calibrate report --model assets/model.pt --data /any/class-folder/tree --split all --out out/

Nothing is chosen here: the thresholds and the temperature come from the calibration file (fitted on
validation). For each target recall (0.80, 0.90, 0.95, 0.98, 0.99) it writes OUT/report.json,
OUT/report.md (Markdown table), OUT/reliability_<split>.png and OUT/operating_curve_<split>.png.

`held` is true when the split's recall at the threshold is >= the target, or when the target lies
inside the two-sided 95% Clopper-Pearson interval of that recall (the shortfall is within sampling
error); false means the target is above the whole interval. null when the split has no positives.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from calibration import core
from calibration.calibrator import REPORT_TARGETS, Calibration
from calibration.plots import operating_curve_plot, reliability_diagram

log = logging.getLogger("calibration.report")

HELD_DEFINITION = ("held = recall >= target, or target within the two-sided 95% Clopper-Pearson interval "
                   "of the recall (null when there are no positives)")


def build_report(cal: Calibration, z: np.ndarray, y: np.ndarray, targets=REPORT_TARGETS,
                 prevalence: float | None = None) -> dict:
    """The report dict for fracture logits `z` and labels `y` scored with calibration `cal`."""
    z = core.check_scores(z, "logits")
    y = core.check_labels(y, len(z))
    if len(z) == 0:
        raise ValueError("no samples to report on")
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    rows = []
    for t in targets:
        op = cal.operating_point(t, prevalence)
        c = core.confusion_at(z, y, op["logit_threshold"])
        ci = core.clopper_pearson_interval(c["tp"], n_pos) if n_pos else None
        held = None if not n_pos else bool(c["recall"] >= t or ci[1] >= t)
        rows.append({
            "target": t, "threshold": op["threshold"], "logit_threshold": op["logit_threshold"],
            "achievable": op["achievable"], "k": op["k"],
            "recall": c["recall"], "recall_ci": list(ci) if ci else None,
            "specificity": c["specificity"], "precision": c["precision"], "npv": c["npv"],
            "tp": c["tp"], "fp": c["fp"], "tn": c["tn"], "fn": c["fn"],
            "held": held, "held_strict": None if not n_pos else bool(c["recall"] >= t),
            "val_recall": op["recall_val"], "val_recall_lower_bound": op["recall_lower_bound"],
            "expected_specificity": op["expected_specificity"],
            "expected_precision": op["expected_precision"], "note": op["note"],
        })
    p_before, p_after = core.sigmoid(z), cal.probability(z)
    auroc = None
    if n_pos and n_neg:
        from sklearn.metrics import roc_auc_score

        auroc = float(roc_auc_score(y, z))
    return {
        "targets": rows,
        "ece_before": core.ece(p_before, y), "ece_after": core.ece(p_after, y), "ece_bins": core.ECE_BINS,
        "ece_noise_floor": core.ece_noise_floor(p_after),
        "nll_before": core.nll(z, y, 1.0), "nll_after": core.nll(z, y, cal.temperature),
        "auroc": auroc, "n_positives": n_pos, "n_negatives": n_neg,
        "temperature": cal.temperature, "held_definition": HELD_DEFINITION,
        "calibration": {k: cal.info.get(k) for k in ("model_file", "model_sha256", "data", "split", "created",
                                                       "ece_before", "ece_after")}
                       | {"n_positives": cal.n_positives, "n_negatives": cal.n_negatives},
        "prevalence_for_precision": "this split's own" if prevalence is None else prevalence,
    }


def _pct(v, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def markdown(report: dict) -> str:
    r = report
    lines = [
        f"Split `{r.get('split', '?')}` of {r.get('data', '?')}: {r['n_positives']} fractured, {r['n_negatives']} not "
        f"fractured; thresholds and temperature (T = {r['temperature']:.3f}) fitted on the "
        f"{r['calibration']['split']} split ({r['calibration']['n_positives']} fractured) only.",
        "",
        "| target recall | threshold (calibrated p) | validation recall (95% lower bound) "
        "| recall on this split [95% CI] | specificity | precision | missed fractures | held |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in r["targets"]:
        ci = t["recall_ci"]
        rec = "n/a" if t["recall"] is None else f"{_pct(t['recall'])} [{_pct(ci[0])}, {_pct(ci[1])}]"
        thr = f"{t['threshold']:.4f}" + ("" if t["achievable"] else " *")
        held = {True: "yes", False: "**no**", None: "n/a"}[t["held"]]
        lines.append(f"| {t['target']:.2f} | {thr} | {_pct(t['val_recall'])} ({_pct(t['val_recall_lower_bound'])}) "
                     f"| {rec} | {_pct(t['specificity'])} | {_pct(t['precision'])} | {t['fn']} of {t['fn'] + t['tp']} "
                     f"| {held} |")
    lines += [
        "",
        f"Expected calibration error ({r['ece_bins']} bins) on this split: {r['ece_before']:.3f} before, "
        f"{r['ece_after']:.3f} after temperature scaling (NLL {r['nll_before']:.3f} -> {r['nll_after']:.3f}); "
        f"a perfectly calibrated model would show {r['ece_noise_floor']:.3f} on this many images (binning noise)"
        + (f"; AUROC {r['auroc']:.3f}." if r["auroc"] is not None else "."),
    ]
    if any(not t["achievable"] for t in r["targets"]):
        lines.append(f"\n\\* not achievable with {r['calibration']['n_positives']} validation positives "
                     "(k = 0): the most sensitive validated threshold is used instead, with no guarantee.")
    lines.append(f"\n{HELD_DEFINITION[0].upper()}{HELD_DEFINITION[1:]}.")
    return "\n".join(lines) + "\n"


def write_report(cal: Calibration, z: np.ndarray, y: np.ndarray, *, split: str, out: str | Path,
                 targets=REPORT_TARGETS, prevalence: float | None = None, extra: dict | None = None) -> dict:
    """Report the calibration `cal` on fracture logits `z` and labels `y` of one split: OUT/report.json,
    OUT/report.md, the reliability diagram and the operating curve; prints the Markdown table."""
    rep = build_report(cal, z, y, targets)
    if prevalence is not None:
        rep["expected_at_prevalence"] = {
            "prevalence": prevalence,
            "targets": [{k: cal.operating_point(t, prevalence)[k] for k in
                         ("target_recall", "expected_precision", "expected_npv")} for t in targets],
        }
    t0 = time.perf_counter()
    for t in np.linspace(0.5, 0.99, 500):
        cal.operating_point(float(t))
    rep["operating_point_seconds_per_call"] = (time.perf_counter() - t0) / 500
    rep.update({"split": split, **(extra or {}), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
    (out / "report.md").write_text(markdown(rep))
    reliability_diagram(core.sigmoid(z), cal.probability(z), y, out / f"reliability_{split}.png",
                        f"Reliability on {split} ({rep['n_positives']} fractured, {rep['n_negatives']} not); "
                        f"T = {cal.temperature:.3f} from {cal.info.get('split')}")
    if rep["n_positives"] and rep["n_negatives"]:
        c = core.operating_curve(z, y)
        c["threshold"] = cal.probability(c["threshold"])
        operating_curve_plot(c, out / f"operating_curve_{split}.png",
                             [(t["target"], t["threshold"]) for t in rep["targets"]],
                             f"Operating curve on {split}; lines: thresholds chosen on validation")
    print(markdown(rep))
    log.info("wrote %s", out)
    return rep
