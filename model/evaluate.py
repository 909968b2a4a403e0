"""Evaluate a model file on a data set split.

    python -m model.evaluate --model assets/model.pt --data ../shared/data/fracatlas --split test --out assets/report
    python -m model.evaluate --model assets/model.pt --data /any/class-folder/tree --split all --out out/

Writes metrics.json (AUROC and average precision with bootstrap 95% CIs; accuracy, precision, recall,
specificity, F1 and the confusion matrix at the model's operating threshold; counts; per-region results),
predictions.csv, roc.png, pr.png, confusion.png and samples.png.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from calibration.core import sigmoid
from model.bundle import load_calibration
from model.cache import CACHE_HELP, DEFAULT_CACHE_DIR
from model.common import (
    SPLITS_DIR,
    add_bundle_args,
    command_parser,
    file_sha256,
    resolve_bundle,
    setup_cpu_threads,
    shown,
)
from model.data import Sample
from model.metrics import bootstrap_ci, threshold_metrics
from model.network import ModelMeta, load_model
from model.scoring import score_samples
from model.splits import region_name, select_samples

log = logging.getLogger("model.evaluate")


def score_data(
    model_path: str | Path,
    roots: list[str | Path],
    split: str,
    splits_dir: str | Path = SPLITS_DIR,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    batch_size: int = 32,
    skipped: list | None = None,
) -> tuple[list[Sample], np.ndarray, dict]:
    """Score a split with a model file. Returns (samples, logits (N, 1 + n_regions), model meta).

    Column 0 of the logits is the (uncalibrated) fracture logit. Unreadable files are skipped (and
    appended to `skipped` as (image id, reason) when a list is given)."""
    setup_cpu_threads()
    model, meta = load_model(model_path)
    samples = select_samples(roots, split, splits_dir)
    samples, sc, _ = score_samples(model, meta, samples, cache_dir, batch_size, skipped=skipped)
    return samples, sc.logits, meta



def compute_metrics(samples: list[Sample], logits: np.ndarray, prob: np.ndarray, threshold: float,
                    region_names: list[str], n_boot: int = 1000) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.array([s.label for s in samples])
    groups = [s.group for s in samples]
    m: dict = {"n": int(len(y)), "n_fractured": int(y.sum()), "n_not_fractured": int((1 - y).sum())}
    if 0 < y.sum() < len(y):
        m["auroc"] = round(float(roc_auc_score(y, prob)), 4)
        m["auroc_ci95"] = bootstrap_ci(y, prob, groups, roc_auc_score, n_boot)
        m["average_precision"] = round(float(average_precision_score(y, prob)), 4)
        m["average_precision_ci95"] = bootstrap_ci(y, prob, groups, average_precision_score, n_boot, seed=1)
    m["at_threshold"] = threshold_metrics(y, prob, threshold)

    def sub_auroc(mask):
        ys = y[mask]
        if mask.sum() == 0 or ys.min() == ys.max():
            return {"n": int(mask.sum()), "n_fractured": int(ys.sum()), "auroc": None}
        return {"n": int(mask.sum()), "n_fractured": int(ys.sum()),
                "auroc": round(float(roc_auc_score(ys, prob[mask])), 4)}

    sources = sorted({s.source for s in samples})
    if len(sources) > 1:
        m["per_source"] = {src: sub_auroc(np.array([s.source == src for s in samples])) for src in sources}
    known = np.array([s.regions is not None for s in samples])
    if known.any():
        regions = np.array([s.regions for s in samples if s.regions is not None])
        rprob = sigmoid(logits[known, 1:])
        per_region = {}
        for j, name in enumerate(region_names):
            in_region = np.zeros(len(samples), dtype=bool)
            in_region[np.flatnonzero(known)] = regions[:, j] == 1
            per_region[name] = {
                **sub_auroc(in_region),
                "region_head_accuracy": round(float(((rprob[:, j] >= 0.5) == (regions[:, j] == 1)).mean()), 4),
            }
        m["per_region"] = per_region
        m["region_head_exact_match"] = round(float(((rprob >= 0.5) == (regions == 1)).all(axis=1).mean()), 4)
        m["region_head_top1_accuracy"] = round(float(regions[np.arange(len(regions)), rprob.argmax(1)].mean()), 4)
    hw = np.array([bool(s.flags.get("hardware")) for s in samples])
    if hw.any():
        m["without_hardware"] = sub_auroc(~hw)
        m["without_hardware"]["note"] = ("images with orthopaedic hardware (a shortcut: nearly all are fractured) "
                                         "removed")
    return m


def _plots(out: Path, y: np.ndarray, prob: np.ndarray, threshold: float, samples: list[Sample], title: str,
           class_names: tuple[str, ...]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    RocCurveDisplay.from_predictions(y, prob, ax=ax, name="FractureLens")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_title(f"ROC: {title}")
    fig.tight_layout(), fig.savefig(out / "roc.png", dpi=110), plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    PrecisionRecallDisplay.from_predictions(y, prob, ax=ax, name="FractureLens")
    ax.axhline(y.mean(), color="k", ls=":", lw=0.8, label="prevalence")
    ax.set_title(f"Precision-recall: {title}")
    fig.tight_layout(), fig.savefig(out / "pr.png", dpi=110), plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ConfusionMatrixDisplay.from_predictions(y, (prob >= threshold).astype(int), labels=[0, 1],
                                            display_labels=list(class_names), ax=ax, colorbar=False)
    ax.set_title(f"threshold {threshold:.3f}")
    fig.tight_layout(), fig.savefig(out / "confusion.png", dpi=110), plt.close(fig)
    # sample grid: the most confident hits and the worst misses of each class
    order = np.argsort(prob)
    pos, neg = order[y[order] == 1], order[y[order] == 0]
    picks = list(pos[::-1][:4]) + list(pos[:4]) + list(neg[:4]) + list(neg[::-1][:4])
    fig, axes = plt.subplots(4, 4, figsize=(10, 10.5))
    neg_name, pos_name = class_names
    rows_t = [f"{pos_name}, highest p", f"{pos_name}, lowest p", f"{neg_name}, lowest p", f"{neg_name}, highest p"]
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= len(picks):
            continue
        i = picks[k]
        from model.preprocess import decode_image

        ax.imshow(decode_image(samples[i].path), cmap="gray")
        ok = (prob[i] >= threshold) == bool(y[i])
        ax.set_title(f"{'fractured' if y[i] else 'not fr.'}  p={prob[i]:.2f}", fontsize=9,
                     color="green" if ok else "red")
        if k % 4 == 0:
            ax.text(-0.08, 0.5, rows_t[k // 4], transform=ax.transAxes, rotation=90, va="center", ha="right",
                    fontsize=9)
    fig.suptitle(f"Sample predictions ({title}); red = wrong at threshold {threshold:.3f}")
    fig.tight_layout(), fig.savefig(out / "samples.png", dpi=80), plt.close(fig)
    del Image


def operating_threshold(model_path: str | Path, meta: ModelMeta, calibration_path: str | Path | None):
    """(probability function, threshold, description): the calibration when it belongs to this model
    file (model/bundle.py's rule), otherwise the raw sigmoid and the model's own threshold."""
    cal, _ = load_calibration(calibration_path, file_sha256(model_path), meta.threshold)
    if cal is None:
        return sigmoid, float(meta.threshold), {"source": "model file (uncalibrated)"}
    op = cal.operating_point(cal.default_target)
    return cal.probability, float(op["threshold"]), {
        "source": shown(calibration_path), "target_recall": cal.default_target,
        "temperature": cal.temperature, "achievable_on_validation": bool(op["achievable"])}


def evaluate(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list = []
    samples, logits, meta = score_data(args.model, args.data, args.split, args.splits_dir,
                                       None if args.no_cache else args.cache_dir, skipped=skipped)
    if not samples:
        raise SystemExit("no readable images to evaluate")
    to_prob, threshold, thr_info = operating_threshold(args.model, meta, args.calibration)
    if args.threshold is not None:
        threshold, thr_info = args.threshold, {"source": "--threshold"}
    prob = np.asarray(to_prob(logits[:, 0]), dtype=np.float64)
    y = np.array([s.label for s in samples])
    metrics = {
        "model": shown(args.model), "arch": meta.arch, "img_size": meta.img_size,
        "data": [Path(d).resolve().name for d in args.data], "split": args.split,
        "threshold_from": thr_info,
        "skipped": {"n": len(skipped), "reasons": dict(Counter(r for _, r in skipped)),
                    "images": [i for i, _ in skipped]},
        **compute_metrics(samples, logits, prob, threshold, meta.region_names, args.bootstrap),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "source", "label", "probability", "raw_probability", "region"])
        for s, p, lg in zip(samples, prob, logits[:, 0]):
            w.writerow([s.image_id, s.source, s.label, f"{p:.6f}", f"{sigmoid(lg):.6f}", region_name(s)])
    if 0 < y.sum() < len(y):
        _plots(out, y, prob, threshold, samples, f"{'+'.join(metrics['data'])} {args.split}", meta.class_names)
    return metrics


def main(argv=None):
    ap = command_parser(__spec__, __doc__)
    add_bundle_args(ap, ("model", "calibration"))
    ap.add_argument("--data", action="append", required=True, help="data root (repeatable)")
    ap.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threshold", type=float, default=None, help="override the operating threshold")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    ap.add_argument("--splits-dir", default=str(SPLITS_DIR))
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help=CACHE_HELP)
    ap.add_argument("--no-cache", action="store_true", help="decode the images in memory only; write no cache")
    args = resolve_bundle(ap.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    m = evaluate(args)
    keys = ("n", "n_fractured", "auroc", "auroc_ci95", "average_precision", "average_precision_ci95", "at_threshold")
    print(json.dumps({k: m[k] for k in keys if k in m}, indent=2))


if __name__ == "__main__":
    main()
