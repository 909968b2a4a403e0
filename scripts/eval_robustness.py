"""Robustness benchmark: does the answer depend on how the film arrives?

Each image of a split is decoded once, changed the way uploads change it (VARIANTS: quarter turns,
flips, transpose, free rotation with black corners, gamma, low contrast, JPEG, down-and-up scaling, a
black border, burnt-in labels, noise, blur, a crop, the negative) and scored on the serving path
(model.preprocess.prepare: negative check by the polarity head, canonical pose, letterbox; the
calibration and the X-ray check of the bundle), batched. Per variant and per data set:

  auroc (+ 95% CI over near-duplicate groups)   ranking of the variant's probabilities
  specificity                                   at the calibration's default-target threshold
  changed                                       share of images whose decision at that threshold differs
                                                from the same image upright (as stored)
  changed_matched                               the same at this data set's matched threshold: the one at
                                                which the upright images reach the default target recall
                                                (two models compared at one operating point, whatever
                                                their calibrations' thresholds)
  median_abs_dp                                 median |probability - upright probability|
  xray_pass                                     share that pass the X-ray check
  region_agree                                  share whose top body region equals the upright one's
  negative                                      share analysed as a negative (polarity head)

    python -m scripts.eval_robustness --split val     # choose with this
    python -m scripts.eval_robustness --split test    # report this (assets/report/robustness/)

Writes OUT/metrics.json, OUT/table.md and OUT/robustness.png (OUT: assets/report/robustness/ for test,
assets/report/robustness/val/ for validation).
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from calibration import DEFAULT_TARGET
from model.bundle import load_bundle
from model.common import (
    REPORT_DIR,
    SHARED_DIR,
    SPLITS_DIR,
    add_bundle_args,
    command_parser,
    plain,
    resolve_bundle,
    setup_cpu_threads,
    shown,
)
from model.preprocess import ImageError, burn_in_label, decode_image, prepare
from model.splits import select_samples

log = logging.getLogger("scripts.eval_robustness")
DEFAULT_DATA = [SHARED_DIR / "data" / "fracatlas", SHARED_DIR / "data" / "multiregion"]


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


def _down_up(img: Image.Image, factor: int) -> Image.Image:
    small = img.resize((max(8, img.width // factor), max(8, img.height // factor)), Image.Resampling.BILINEAR,
                       reducing_gap=2.0)
    return small.resize(img.size, Image.Resampling.BILINEAR)


def _border(img: Image.Image, share: float = 0.2) -> Image.Image:
    """The film on a black canvas: it covers (1 - share) of the new width and height."""
    pad_x, pad_y = round(img.width * share / (2 * (1 - share))), round(img.height * share / (2 * (1 - share)))
    return ImageOps.expand(img, border=(pad_x, pad_y, pad_x, pad_y), fill=0)


def _labels(img: Image.Image, seed: int) -> Image.Image:
    torch.manual_seed(seed)
    x = torch.from_numpy(np.asarray(img).copy())[None]
    for text in ("R", "AP SUPINE"):
        x = burn_in_label(x, text)
    return Image.fromarray(x[0].numpy())


def _noise(img: Image.Image, seed: int, sigma: float = 8.0) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.asarray(img, dtype=np.float32) + rng.normal(0, sigma, (img.height, img.width)).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def _crop(img: Image.Image, keep: float = 0.8) -> Image.Image:
    w, h = img.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return img.crop((dx, dy, w - dx, h - dy))


def _lut(fn):
    table = [int(round(np.clip(fn(v / 255.0), 0, 1) * 255)) for v in range(256)]
    return lambda img, seed: img.point(table)


T = Image.Transpose
VARIANTS = {
    "upright": lambda img, seed: img,
    "rotate 90": lambda img, seed: img.transpose(T.ROTATE_90),
    "rotate 180": lambda img, seed: img.transpose(T.ROTATE_180),
    "rotate 270": lambda img, seed: img.transpose(T.ROTATE_270),
    "flip left-right": lambda img, seed: img.transpose(T.FLIP_LEFT_RIGHT),
    "flip top-bottom": lambda img, seed: img.transpose(T.FLIP_TOP_BOTTOM),
    "transpose": lambda img, seed: img.transpose(T.TRANSPOSE),
    "rotate +15": lambda img, seed: img.rotate(15, Image.Resampling.BILINEAR, expand=True, fillcolor=0),
    "rotate -15": lambda img, seed: img.rotate(-15, Image.Resampling.BILINEAR, expand=True, fillcolor=0),
    "rotate +30": lambda img, seed: img.rotate(30, Image.Resampling.BILINEAR, expand=True, fillcolor=0),
    "rotate -30": lambda img, seed: img.rotate(-30, Image.Resampling.BILINEAR, expand=True, fillcolor=0),
    "gamma 0.6": _lut(lambda v: v**0.6),
    "gamma 1.6": _lut(lambda v: v**1.6),
    "low contrast": _lut(lambda v: 0.25 + 0.5 * v),
    "JPEG q10": lambda img, seed: _jpeg(img, 10),
    "JPEG q20": lambda img, seed: _jpeg(img, 20),
    "JPEG q50": lambda img, seed: _jpeg(img, 50),
    "downscale 2": lambda img, seed: _down_up(img, 2),
    "downscale 4": lambda img, seed: _down_up(img, 4),
    "black border 20%": lambda img, seed: _border(img),
    "burnt-in labels": lambda img, seed: _labels(img, seed),
    "Gaussian noise": lambda img, seed: _noise(img, seed),
    "blur": lambda img, seed: img.filter(ImageFilter.GaussianBlur(1.5)),
    "crop 80%": lambda img, seed: _crop(img),
    "inverted": lambda img, seed: ImageOps.invert(img),
}
EXACT = ("rotate 90", "rotate 180", "rotate 270", "flip left-right", "flip top-bottom", "transpose", "inverted")
HEAVY = ("JPEG q10", "downscale 4")  # the X-ray-check target excludes these


class BatchScorer:
    """The serving path of model.inference.Predictor for many images at once: prepare, one batched
    forward pass (fracture and region logits, polarity, the X-ray check's features and tap layers), the
    negatives prepared and scored again, the X-ray check on the final input."""

    def __init__(self, bundle, batch_size: int = 32):
        from model.xray.signals import Taps

        self.b, self.meta, self.batch_size = bundle, bundle.meta, batch_size
        self.taps = Taps(bundle.model, bundle.xray.tap_layers if bundle.xray.use_features else [])

    @torch.inference_mode()
    def _forward(self, squares: np.ndarray):
        from model.preprocess import normalize

        logits, pol, feats = [], [], []
        for i in range(0, len(squares), self.batch_size):
            x = normalize(squares[i : i + self.batch_size], float(self.meta.mean), float(self.meta.std))
            f, _ = self.b.model.forward_maps(x)
            logits.append(self.b.model.heads(f).float().numpy())
            p = self.b.model.polarity_logit(f)
            pol.append(np.full(len(x), -np.inf) if p is None else p.float().numpy())
            t = self.taps.collect()
            feats.append(np.concatenate([f.float().numpy(), t], axis=1) if t.size else f.float().numpy())
        return np.concatenate(logits), np.concatenate(pol), np.concatenate(feats)

    def score(self, grays: list[Image.Image]) -> dict:
        from model.pose import read_as_negative

        preps = [prepare(g, self.meta) for g in grays]
        squares = np.stack([p.square for p in preps])
        logits, pol, feats = self._forward(squares)
        negative = np.zeros(len(pol), dtype=bool)
        negative[read_as_negative(pol)] = True
        if negative.any():
            idx = np.flatnonzero(negative)
            again = np.stack([prepare(grays[i], self.meta, negative=True).square for i in idx])
            squares[idx] = again
            logits[idx], _, feats[idx] = self._forward(again)
        feats = self.b.xray.with_probe(feats, squares)
        checks = self.b.xray.assess_batch(feats, squares, [float(g.info.get("chroma", 0.0)) for g in grays])
        cal = self.b.calibration
        prob = np.array([float(cal.probability(float(v))) if cal is not None else 1 / (1 + np.exp(-v))
                         for v in logits[:, 0]])
        regions = np.argmax(logits[:, 1:], axis=1) if logits.shape[1] > 1 else np.zeros(len(logits), int)
        return {"prob": prob, "negative": negative, "is_xray": np.array([c["is_xray"] for c in checks]),
                "region": regions}


def matched_threshold(y, p_upright, target: float) -> float:
    """The highest threshold at which at least `target` of this split's upright fractures are flagged."""
    pos = np.sort(p_upright[y == 1])
    missed = int(np.floor(len(pos) * (1 - target) + 1e-9))  # fractures allowed below it (float-safe)
    return float(pos[missed])


def variant_metrics(y, groups, res, base, threshold, n_boot, matched=None) -> dict:
    from sklearn.metrics import roc_auc_score

    from model.metrics import bootstrap_ci

    p = res["prob"]
    neg = y == 0
    out = {"n": int(len(y)), "n_fractured": int(y.sum())}
    if 0 < y.sum() < len(y):
        out["auroc"] = round(float(roc_auc_score(y, p)), 4)
        out["auroc_ci95"] = bootstrap_ci(y, p, groups, roc_auc_score, n_boot)
    out["specificity"] = round(float((p[neg] < threshold).mean()), 4) if neg.any() else None
    out["recall"] = round(float((p[~neg] >= threshold).mean()), 4) if (~neg).any() else None
    out["changed"] = round(float(((p >= threshold) != (base["prob"] >= threshold)).mean()), 4)
    if matched is not None:
        out["changed_matched"] = round(float(((p >= matched) != (base["prob"] >= matched)).mean()), 4)
    out["median_abs_dp"] = round(float(np.median(np.abs(p - base["prob"]))), 4)
    out["xray_pass"] = round(float(res["is_xray"].mean()), 4)
    out["region_agree"] = round(float((res["region"] == base["region"]).mean()), 4)
    out["negative"] = round(float(res["negative"].mean()), 4)
    return out


def table(metrics: dict) -> str:
    lines = []
    for source, rows in metrics["sources"].items():
        lines += [f"\n### {source} ({metrics['split']} split, {rows['upright']['n']} X-rays, "
                  f"{rows['upright']['n_fractured']} fractured)\n",
                  "| variant | AUROC (95% CI) | specificity | decisions changed | at matched recall "
                  "| median abs. change in p | X-ray check passed | region agrees | analysed as negative |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, m in rows.items():
            ci = m.get("auroc_ci95")
            auc = "n/a" if "auroc" not in m else f"{m['auroc']:.3f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")
            spec = "n/a" if m["specificity"] is None else f"{m['specificity']:.2f}"
            matched = "n/a" if m.get("changed_matched") is None else f"{m['changed_matched']:.1%}"
            lines.append(f"| {name} | {auc} | {spec} | {m['changed']:.1%} | {matched} | {m['median_abs_dp']:.3f} | "
                         f"{m['xray_pass']:.1%} | {m['region_agree']:.1%} | {m['negative']:.1%} |")
    return "\n".join(lines) + "\n"


def summary_table(new: dict, old: dict | None = None, source: str = "fracatlas") -> str:
    """One data set's rows of two benchmark runs side by side (previous -> new), for the README."""
    rows_new = new["sources"][source]
    rows_old = (old or {}).get("sources", {}).get(source, {})
    head = ("| variant | AUROC | specificity | decisions changed | X-ray check passed |\n"
            "|---|---|---|---|---|")
    out = [head]

    def pair(name, key, fmt):
        n = rows_new[name].get(key)
        o = rows_old.get(name, {}).get(key) if rows_old else None
        def f(v):
            return "n/a" if v is None else fmt(v)

        return f(n) if not rows_old else f"{f(o)} -> **{f(n)}**"

    for name in rows_new:
        out.append(f"| {name} | {pair(name, 'auroc', lambda v: f'{v:.3f}')} | "
                   f"{pair(name, 'specificity', lambda v: f'{v:.2f}')} | {pair(name, 'changed', lambda v: f'{v:.0%}')} "
                   f"| {pair(name, 'xray_pass', lambda v: f'{v:.0%}')} |")
    return "\n".join(out) + "\n"


def plot(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(metrics["sources"].values())))
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.5), sharey=True)
    for k, (source, rows) in enumerate(metrics["sources"].items()):
        y = np.arange(len(names)) + (k - 0.5) * 0.35
        auc = [rows[n].get("auroc", np.nan) for n in names]
        ci = np.array([rows[n].get("auroc_ci95") or [np.nan, np.nan] for n in names])
        axes[0].errorbar(auc, y, xerr=[np.array(auc) - ci[:, 0], ci[:, 1] - np.array(auc)], fmt="o", ms=4,
                         capsize=2, label=source)
        axes[1].barh(y, [rows[n]["changed"] * 100 for n in names], height=0.35, label=source)
    axes[0].set_yticks(np.arange(len(names)), names)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("AUROC (95% CI)")
    axes[0].set_title("ranking")
    axes[1].axvline(5, color="grey", ls="--", lw=1)
    axes[1].set_xlabel("decisions changed vs upright (%), at the default target")
    axes[1].set_title("decision")
    for a in axes:
        a.grid(axis="x", alpha=0.3)
        a.legend(loc="lower right")
    fig.suptitle(f"Robustness, {metrics['split']} split: {metrics['model']['file']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = command_parser(__spec__, __doc__)
    ap.add_argument("--split", choices=["val", "test"], required=True)
    ap.add_argument("--data", action="append",
                    help=f"data root; repeat (default: {', '.join(map(shown, DEFAULT_DATA))})")
    add_bundle_args(ap)
    ap.add_argument("--splits-dir", default=str(SPLITS_DIR))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--limit", type=int, default=None,
                    help="at most this many images per data set, evenly spread (a quick look)")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="default assets/report/robustness/ for the test split "
                    "(the reported one), assets/report/robustness/val/ for validation")
    ap.add_argument("--straighten", action="store_true",
                    help="score as if the model file had `straighten` on (films on a black canvas straightened and "
                         "cropped first, model/pose.py): to choose it on validation (scripts.ship_model --straighten)")
    ap.add_argument("--window", action="store_true",
                    help="score as if the model file had `window` on (each film's grey levels stretched over the "
                         "full range, model.preprocess.window_levels): to choose it on validation "
                         "(scripts.ship_model --window)")
    ap.add_argument("--save-scores", action="store_true",
                    help="also write OUT/scores.npz: each variant's probabilities per image, and the labels")
    ap.add_argument("--summarise", nargs="+", metavar="METRICS_JSON", default=None,
                    help="print a README table of one run (or previous -> new: PREVIOUS NEW) and exit")
    ap.add_argument("--source", default="fracatlas", help="the data set --summarise tabulates")
    if argv is None:
        argv = sys.argv[1:]
    if "--summarise" in argv:  # no --split needed
        argv = [*argv, "--split", "test"] if "--split" not in argv else argv
    args = resolve_bundle(ap.parse_args(argv))
    if args.summarise:
        runs = [json.loads(Path(p).read_text()) for p in args.summarise]
        print(summary_table(runs[-1], runs[0] if len(runs) > 1 else None, args.source), end="")
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    setup_cpu_threads(args.threads)
    out = Path(args.out or (REPORT_DIR / "robustness" / ("" if args.split == "test" else args.split)))
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(args.model, args.calibration or None, args.xray_check or None)
    if args.straighten or args.window:
        bundle.meta = bundle.meta.replace(straighten=args.straighten or bundle.meta.straighten,
                                          window=args.window or bundle.meta.window)
    scorer = BatchScorer(bundle)
    variants = ["upright"] + [v for v in args.variants if v != "upright"]
    threshold = (float(bundle.calibration.operating_point(bundle.calibration.default_target)["threshold"])
                 if bundle.calibration is not None else float(bundle.meta.threshold))
    t0 = time.time()
    metrics = {"what": "the same X-rays changed the way uploads change them, scored on the serving path",
               "command": "python -m scripts.eval_robustness " + " ".join(argv),
               "split": args.split, "model": {"file": shown(args.model), "sha256": bundle.model_sha256,
                                              "pose": bundle.meta.pose, "polarity_head": bundle.meta.polarity_head,
                                              "straighten": bundle.meta.straighten,
                                              "window": bundle.meta.window},
               "calibration": shown(args.calibration) if bundle.calibration is not None else None,
               "threshold": round(threshold, 6),
               "target_recall": bundle.calibration.default_target if bundle.calibration is not None else None,
               "sources": {}}
    scores = {}
    for root in args.data or DEFAULT_DATA:
        samples = select_samples([root], args.split, args.splits_dir)
        if args.limit and len(samples) > args.limit:  # evenly spread over the split (both classes)
            samples = [samples[i] for i in np.linspace(0, len(samples) - 1, args.limit).round().astype(int)]
        grays, kept = [], []
        for s in samples:
            try:
                grays.append(decode_image(s.path))
                kept.append(s)
            except ImageError as exc:
                log.warning("skipping an unreadable image: %s", exc)
        y = np.array([s.label for s in kept])
        groups = [s.group for s in kept]
        source = kept[0].source
        rows, base, matched = {}, None, None
        scores[f"{source}/label"] = y
        for name in variants:
            t = time.time()
            res = scorer.score([VARIANTS[name](g, i) for i, g in enumerate(grays)])
            if name == "upright":
                base = res
                target = metrics["target_recall"] or DEFAULT_TARGET
                matched = matched_threshold(y, res["prob"], target) if 0 < y.sum() else None
                metrics.setdefault("matched_threshold", {})[source] = matched
            rows[name] = variant_metrics(y, groups, res, base, threshold, args.bootstrap, matched)
            scores[f"{source}/{name}"] = res["prob"]
            log.info("%s / %s: %s (%.0f s)", source, name, json.dumps(rows[name]), time.time() - t)
        metrics["sources"][source] = rows
    metrics["seconds"] = round(time.time() - t0, 1)
    if args.save_scores:
        np.savez_compressed(out / "scores.npz", **scores)
    (out / "metrics.json").write_text(json.dumps(plain(metrics), indent=2))
    (out / "table.md").write_text(
        f"# Robustness ({args.split} split)\n\nModel `{metrics['model']['file']}` (pose {bundle.meta.pose}, "
        f"polarity head {'yes' if bundle.meta.polarity_head else 'no'}, "
        f"straightening {'on' if bundle.meta.straighten else 'off'}, "
        f"windowing {'on' if bundle.meta.window else 'off'}); decisions at threshold {threshold:.4f} "
        f"(the calibration's default target recall {metrics['target_recall']}).\n"
        f"Command: `{metrics['command']}`\n" + table(metrics))
    plot(metrics, out / "robustness.png")
    print(json.dumps({"out": shown(out), "seconds": metrics["seconds"]}))
    return metrics


if __name__ == "__main__":
    main()
