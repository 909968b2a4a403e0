"""The model-card tab: built from the model file's metadata and the committed reports in assets/report/.

Reads (each optional; the card says what is missing):
- assets/report/test/metrics.json and roc.png / pr.png       (`python -m model.evaluate ... --out assets/report/test`)
- assets/report/calibration/report.json, reliability_test.png, operating_curve_test.png
                                                              (`python -m model.calibrate report ...`)
- assets/report/xray_check/metrics.json                       (`python -m scripts.eval_xray_check ...`)
Nothing here computes a metric: the numbers are the reports' own.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from model.common import REPORT_DIR, pct, prob_text
from model.network import ModelMeta
from model.preprocess import WINDOW_CUTOFF

NOT_A_DEVICE = (
    "**FractureLens is a research demo, not a medical device.** It is not cleared or approved for "
    "clinical use and must not be used to diagnose, rule out or treat anything. Every image needs a "
    "qualified reader."
)

INTENDED_USE = (
    "Research and teaching: showing how a fracture classifier fine-tuned from ImageNet features, a "
    "calibrated probability, a recall-targeted threshold, a Grad-CAM heatmap and box-supervised fracture "
    "regions behave on musculoskeletal radiographs."
)

LIMITATIONS = """\
- Fine-tuned from ImageNet EfficientNet-Lite0 weights on a few thousand public radiographs (see
  Training data) of the hand, leg, hip and shoulder from a small number of hospitals and machines.
  Performance on other sites, scanners, patient groups, children or other body parts is unknown and
  probably worse; on the second data set it was never trained on it is close to chance (see the README).
- The answer is per image. The cyan boxes come from a localisation head trained on FracAtlas's fracture
  boxes; they mark where the model thinks a fracture is, often the right bone but not always the right
  spot, and they are drawn only when the decision is "Fracture suspected". The Grad-CAM heatmap shows
  which pixels moved the score; it is not a fracture outline and can highlight hardware, text or edges.
- Subtle, non-displaced and old/healing fractures are the ones most often missed; casts, plates and
  screws confuse it (orthopaedic hardware is a shortcut: nearly all such images are fractured).
- The threshold for a target recall comes from a finite validation set; the promise is statistical
  (see the note under the slider), not a per-patient guarantee. Precision depends on how common
  fractures are where it is used.
- The X-ray check only flags inputs that look unlike radiographs (then no verdict is given); passing it
  does not make an image suitable.
"""

# (caption, candidate paths relative to the report folder: the first that exists is shown)
PLOTS = (
    ("ROC curve (test split)", ("test/roc.png",)),
    ("Precision-recall curve (test split)", ("test/pr.png",)),
    ("Calibration: reliability diagram", ("calibration/reliability_test.png", "calibration/reliability_val.png")),
    ("Operating curve (threshold vs recall/specificity)",
     ("calibration/operating_curve_test.png", "calibration/operating_curve_val.png")),
)
_FALLBACK_PATTERNS = (
    ("ROC curve", re.compile(r"roc", re.I)),
    ("Calibration (reliability) plot", re.compile(r"calib|reliab", re.I)),
)


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _num(v, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v)
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "n/a"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return str(v)


def _pct(v, digits: int = 1) -> str:
    return pct(v, digits)


def _ci(v) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f" (95% CI {v[0]:.3f} to {v[1]:.3f})"
    return ""


def report_plots(report_dir: Path = REPORT_DIR) -> list[tuple[str, Path]]:
    """(caption, path) of the evaluation and calibration plots present in the report folder."""
    report_dir = Path(report_dir)
    if not report_dir.is_dir():
        return []
    out = []
    for caption, candidates in PLOTS:
        for rel in candidates:
            p = report_dir / rel
            if p.is_file():
                out.append((caption, p))
                break
    if not out:  # a flat report folder (e.g. a custom --out): match by name
        pngs = sorted(report_dir.glob("*.png"))
        for caption, pat in _FALLBACK_PATTERNS:
            hit = next((p for p in pngs if pat.search(p.stem)), None)
            if hit is not None:
                out.append((caption, hit))
    return out


def _test_section(report_dir: Path) -> list[str]:
    m = _load(report_dir / "test" / "metrics.json")
    if not m:
        return ["No test report found (`assets/report/test/metrics.json`; make it with "
                "`python -m model.evaluate --split test --out assets/report/test`)."]
    data = ", ".join(m.get("data") or []) or "n/a"
    lines = [
        f"Held-out **{m.get('split', 'test')}** split of {data}: {m.get('n', 'n/a')} images, "
        f"{m.get('n_fractured', 'n/a')} fractured (never used to choose anything).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| AUROC | {_num(m.get('auroc'))}{_ci(m.get('auroc_ci95'))} |",
        f"| Average precision | {_num(m.get('average_precision'))}{_ci(m.get('average_precision_ci95'))} |",
    ]
    at = m.get("at_threshold") or {}
    src = m.get("threshold_from") or {}
    if at:
        for key, name in (("recall", "Recall"), ("specificity", "Specificity"), ("precision", "Precision"),
                          ("f1", "F1"), ("accuracy", "Accuracy")):
            if key in at:
                lines.append(f"| {name} at the default threshold (test) | {_num(at[key])} |")
        lines += ["", f"Default threshold: probability >= {prob_text(at.get('threshold'))}"
                  + (f", chosen on the validation split for a target recall of {_pct(src['target_recall'], 0)}."
                     if isinstance(src.get("target_recall"), (int, float)) else ".")]
    per_region = m.get("per_region") or {}
    if per_region:
        lines += ["", "| body region | images | fractured | AUROC |", "|---|---|---|---|"]
        for name, r in per_region.items():
            lines.append(f"| {name} | {r.get('n', 'n/a')} | {r.get('n_fractured', 'n/a')} | {_num(r.get('auroc'))} |")
    wh = m.get("without_hardware")
    if isinstance(wh, dict) and wh.get("auroc") is not None:
        lines += ["", f"Without images showing orthopaedic hardware: AUROC {_num(wh['auroc'])} "
                  f"({wh.get('n', 'n/a')} images)."]
    return lines


def _calibration_section(report_dir: Path, model_sha256: str | None) -> list[str]:
    r = _load(report_dir / "calibration" / "report.json")
    if not r:
        return []
    lines = [
        "### Calibration and target recall",
        f"Temperature scaling (T = {_num(r.get('temperature'))}, fitted on the validation split). "
        f"Expected calibration error on the {r.get('split', 'test')} split: {_num(r.get('ece_before'))} before, "
        f"{_num(r.get('ece_after'))} after.",
    ]
    targets = r.get("targets") or []
    if targets:
        lines += ["", f"Thresholds chosen on validation for a target recall, checked on the {r.get('split', 'test')} "
                  "split:", "",
                  "| target recall | threshold | recall on test (95% CI) | specificity on test | precision on test "
                  "| achievable |",
                  "|---|---|---|---|---|---|"]
        for t in targets:
            ci = t.get("recall_ci") or [None, None]
            rec = _pct(t.get("recall"))
            if ci[0] is not None:
                rec = f"{rec} ({_pct(ci[0])} to {_pct(ci[1])})"
            lines.append(f"| {_pct(t.get('target'), 0)} | {prob_text(t.get('threshold'))} | {rec} | "
                         f"{_pct(t.get('specificity'))} | {_pct(t.get('precision'))} | "
                         f"{'yes' if t.get('achievable') else 'no'} |")
    sha = r.get("model_sha256")
    if model_sha256 and sha and sha != model_sha256:
        lines += ["", "⚠️ This calibration report was made for a different model file than the one served."]
    return lines


def _xray_section(report_dir: Path, model_sha256: str | None) -> list[str]:
    m = _load(report_dir / "xray_check" / "metrics.json")
    if not m:
        return []
    added = (m.get("added_ms_per_predict") or {}).get("added_ms_median")
    lines = [
        "### The X-ray check",
        f"Images that do not look like radiographs get no verdict. On {m.get('n_non_xray', 'n/a')} evaluation "
        f"non-X-rays (CT/MR/ultrasound/nuclear-medicine renderings, photographs, drawings; never used to fit or "
        f"choose it) it caught {_pct(m.get('detection_rate_non_xrays'))}; it refused "
        f"{_pct(m.get('false_alarm_rate_test_xrays'), 2)} of {m.get('n_xray', 'n/a')} test-split X-rays"
        + (f"; it adds {_num(added, 1)} ms to a prediction" if isinstance(added, (int, float)) else "") + ".",
    ]
    if model_sha256 and m.get("model_sha256") and m["model_sha256"] != model_sha256:
        lines += ["", "⚠️ This X-ray check report was made for a different model file than the one served."]
    return lines


def model_card_markdown(meta: ModelMeta, report_dir: Path = REPORT_DIR, model_sha256: str | None = None,
                        calibration_in_force: str | None = None) -> str:
    report_dir = Path(report_dir)
    training = meta.training or {}
    data = training.get("data") or []
    names = ", ".join(str(d.get("data", d)) if isinstance(d, dict) else str(d) for d in data) or "n/a"
    args = training.get("args") or {}
    lines = [
        "## Model card",
        NOT_A_DEVICE,
        "### Intended use",
        INTENDED_USE,
        "### Model",
        f"- Architecture: `{meta.arch}` at {meta.img_size} px "
        f"(grayscale, letterboxed), initialisation: {meta.init}",
        f"- Outputs: a fracture probability (temperature-calibrated on the validation split), the body "
        f"region ({', '.join(meta.region_names) or 'n/a'})"
        + (", and fracture regions (boxes) from a localisation head trained on FracAtlas's fracture boxes"
           if meta.loc_head else "")
        + ("; each image is also scored mirrored and the two averaged (chosen on validation)"
           if meta.tta else ""),
        *(["- Orientation: each image is read in its canonical pose (one of the eight flips and quarter turns, "
           "from the moments of its grey levels), so a film rotated by 90 degrees, upside down, mirrored or "
           "transposed gets exactly the same answer; the network was trained on all eight poses"]
          if meta.pose == "canonical" else []),
        *(["- Polarity: a head trained on negatives of the training images tells a negative film (air white, "
           "bone dark); such a film is analysed as its negative and the result says so"]
          if meta.polarity_head else []),
        *(["- Straightening: a film rotated on a black canvas (or set in a black border) is straightened and "
           "cropped to the film before analysis, the maps drawn back on the image as it arrived, and the result "
           "says so (chosen on validation)"]
          if meta.straighten else []),
        *(["- Grey levels: each film is windowed before analysis, its darkest and brightest "
           f"{WINDOW_CUTOFF:g}% clipped and the rest stretched over the full range, so that a washed-out or "
           "low-contrast export is read like a film of full contrast (chosen on validation)"]
          if getattr(meta, "window", False) else []),
        "### Training data",
        f"- Data sets: {names} (FracAtlas: public musculoskeletal radiographs labelled fractured / not "
        "fractured, with body-region tags)" if "fracatlas" in names.lower() else f"- Data sets: {names}",
        f"- Images: {training.get('n_train', 'n/a')} training, {training.get('n_val', 'n/a')} validation; "
        "near-duplicate-aware, patient-grouped splits in `assets/splits/`",
    ]
    if args:
        lines.append(f"- Training: {args.get('epochs', 'n/a')} epochs max, batch {args.get('batch_size', 'n/a')}, "
                     f"learning rate {args.get('lr', 'n/a')}, class imbalance weighted "
                     f"(pos_weight {_num(training.get('pos_weight'), 2)}), on {training.get('device', 'n/a')}")
    sources = training.get("sources") or {}
    if len(sources) > 1:
        lines.append("- Sampling: " + ", ".join(f"{k} {_pct(v.get('share'), 0)} of each epoch "
                                               f"({_num(v.get('radiographs'), 0)} distinct radiographs)"
                                               for k, v in sources.items())
                     + "; fractured and not fractured weigh the same within each data set")
    vm = meta.val_metrics or {}
    if vm:
        vals = ", ".join(f"{k} {_num(v)}" for k, v in vm.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool))
        lines.append(f"- Model selection on validation: {vals}")
    lines += ["### Test metrics", *_test_section(report_dir)]
    lines += _calibration_section(report_dir, model_sha256)
    lines += _xray_section(report_dir, model_sha256)
    if calibration_in_force:
        lines += ["", f"**Calibration in force in this app:** {calibration_in_force}. The test figures above "
                  "are for the shipped calibration; a site calibration (README, 'Calibrate for your site') "
                  "has its own."]
    lines += ["### Limitations", LIMITATIONS]
    return "\n".join(lines)
