"""Evaluate the X-ray check (model/xray/check.py) on test X-rays and on non-X-ray images.

    python -m scripts.eval_xray_check --model assets/model.pt --xray-check assets/xray_check.npz \
        --data ../shared/data/fracatlas --data ../shared/data/multiregion --out assets/report/xray_check

Positives: the TEST-split X-rays of each data root (never used to fit or set the gate; the gate's
threshold comes from the validation split). Negatives: the EVALUATION half of model.xray.negatives
(CT, MR, ultrasound, nuclear-medicine, RT-dose and segmentation images as DICOM and as PNG renderings
with and without a window, inverted and cropped; MR volumes sliced in three planes; photographs,
microscopy, drawings and generated images), split by source picture from the development half that the
learned signal is fitted on and the signals were chosen with. None of them is used to fit or choose
anything. The images go through the same decode -> letterbox -> network -> gate path as
Predictor.predict (checked on a sample). Writes metrics.json, scores.csv, table.md and scores.png to --out.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from model.bundle import add_feature_args, load_xray_check, start_command
from model.common import REPORT_DIR, add_bundle_args, command_parser, shown
from model.xray.fit import negative_inputs, network_features, probe_key
from model.xray.kinds import KIND_GROUP, KINDS
from model.xray.negatives import all_negatives, split_sets
from model.xray.signals import chroma, dicom_modality, image_stats

log = logging.getLogger("eval_xray_check")

def main(argv=None) -> dict:
    from sklearn.metrics import roc_auc_score

    from model.cache import load_squares, serving_steps
    from model.inference import Predictor
    from model.splits import select_samples

    ap = command_parser(__spec__, __doc__)
    add_bundle_args(ap, ("model", "xray_check"))
    add_feature_args(ap)
    ap.add_argument("--out", default=str(REPORT_DIR / "xray_check"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-xrays", type=int, default=0, help="cap per data root (0 = all)")
    ap.add_argument("--features-only", action="store_true", help="only compute and cache the features")
    t0 = time.time()
    args, model, meta, sha = start_command(ap, argv)
    size = int(meta.img_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if not Path(args.xray_check).is_file():
        raise SystemExit(f"X-ray check file not found: {args.xray_check}")
    gate = load_xray_check(args.xray_check, sha, meta)  # model/bundle.py's rule: this model file, this input size
    probe = gate.probe_net  # the gate's ImageNet probe (None when it reads none)
    cache_name = f"xray-eval-v5-{sha[:16]}-{args.split}-{args.max_xrays}{probe_key(probe)}.npz"
    cache = Path(args.cache_dir) / cache_name if args.cache_dir else None
    _, neg = split_sets(all_negatives())
    loaded = False
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                names, groups = list(z["names"]), list(z["groups"])
                feats, stats, chromas, modalities = z["feats"], z["stats"], z["chromas"], list(z["modalities"])
            loaded = True
            log.info("X-ray features loaded from %s", cache)
        except Exception as exc:  # noqa: BLE001 - a partial/old cache file: recompute
            log.warning("ignoring the feature cache %s (%s)", cache, type(exc).__name__)
    if not loaded:
        names, groups, feats, stats, chromas, modalities = [], [], [], [], [], []
        for root in args.data:
            samples = select_samples([root], args.split, args.splits_dir)
            if args.max_xrays:
                samples = samples[: args.max_xrays]
            squares, ok = load_squares(samples, size, args.cache_dir, **serving_steps(meta))
            idx = np.flatnonzero(ok)
            feats.append(network_features(model, squares[idx], meta.mean, meta.std, probe=probe))
            stats += [image_stats(squares[i]) for i in idx]
            chromas += [chroma(samples[i].path) for i in idx]
            modalities += [dicom_modality(samples[i].path) or "" for i in idx]
            src = Path(root).resolve().name
            names += [f"{src}:{samples[i].image_id}" for i in idx]
            groups += [f"X-ray {src} {args.split}"] * len(idx)
            log.info("%s %s: %d X-rays scored", src, args.split, len(idx))
            del squares
        feats, stats, chromas = np.concatenate(feats), np.stack(stats), np.array(chromas)
        if cache is not None:
            tmp = cache.with_name(cache.stem + ".partial.npz")
            np.savez(tmp, names=np.array(names), groups=np.array(groups), feats=feats, stats=stats,
                     chromas=chromas, modalities=np.array(modalities))
            tmp.replace(cache)
    nf, ns, nc, nm = negative_inputs(model, meta, neg, args.cache_dir, args.model, probe)
    log.info("%d non-X-ray images scored", len(neg))
    if args.features_only:
        return {}
    n_x = len(names)
    names = list(names) + [n.name for n in neg]
    groups = list(groups) + [n.category for n in neg]
    truth = np.r_[np.ones(n_x, int), np.zeros(len(neg), int)]
    feats, stats, chromas = np.vstack([feats, nf]), np.vstack([stats, ns]), np.r_[chromas, nc]
    modalities = [m or None for m in modalities] + list(nm)
    results = gate.assess_batch(feats, None, chromas, stats=stats, modalities=modalities)
    rows = list(zip(names, groups, [int(t) for t in truth], results))
    res = results[n_x:]
    kinds = [n.kind for n in neg]
    named = [r.get("looks_like") == KIND_GROUP[k] for r, k in zip(res, kinds) if not r["is_xray"]]

    # the Predictor itself gives the same answers (same code path), checked on a sample
    with Predictor(args.model, calibration_path=None, xray_path=args.xray_check) as p:
        check = [(n.image, r) for n, r in zip(neg[::25], res[::25])]
        mismatch = [abs(p.predict(img, cam_method=None)["xray_score"] - r["xray_score"]) for img, r in check]
        timing = _added_ms(p, args.model, [n.image for n in neg[::10]])
    y = np.array([r[2] for r in rows])
    score = np.array([r[3]["xray_score"] for r in rows])
    flag = np.array([not r[3]["is_xray"] for r in rows])
    keys = list(dict.fromkeys(k for r in rows for k in r[3]["xray_ratios"]))
    ratios = {k: np.array([r[3]["xray_ratios"].get(k, np.nan) for r in rows]) for k in keys}
    groups = sorted({r[1] for r in rows})
    m = {
        "model": shown(args.model), "model_sha256": sha, "gate": shown(args.xray_check),
        "gate_matches_model": gate.model_sha256 == sha,
        "gate_threshold": gate.threshold, "colour_limit": gate.colour_limit,
        "n_xray": int(y.sum()), "n_non_xray": int((1 - y).sum()),
        "auroc": round(float(roc_auc_score(y, score)), 4),
        "auroc_by_signal": {k: (round(float(roc_auc_score(y, -np.nan_to_num(v, nan=0.0))), 4)
                                if np.isfinite(v).any() else None) for k, v in ratios.items()},
        "false_alarm_rate_test_xrays": round(float(flag[y == 1].mean()), 4),
        "detection_rate_non_xrays": round(float(flag[y == 0].mean()), 4),
        "by_group": {g: {"n": int(sum(r[1] == g for r in rows)),
                         "flagged": round(float(np.mean([not r[3]["is_xray"] for r in rows if r[1] == g])), 4),
                         "median_score": round(float(np.median([r[3]["xray_score"] for r in rows if r[1] == g])), 4)}
                     for g in groups},
        "by_kind": {k: _kind_row(k, res, kinds) for k in KINDS if k in kinds},
        "group_named_correctly_when_flagged": round(float(np.mean(named)), 4) if named else None,
        "missed_non_xrays": [r[0] for r in rows if r[2] == 0 and r[3]["is_xray"]],
        "predictor_consistency_max_abs_diff": float(max(mismatch)) if mismatch else None,
        "added_ms_per_predict": timing,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "group", "is_xray_truth", "xray_score", "flagged", *[f"{k}_ratio" for k in ratios]])
        for i, (n, g, t, r) in enumerate(rows):
            w.writerow([n, g, t, f"{r['xray_score']:.5f}", int(not r["is_xray"]),
                        *[f"{v[i]:.4f}" for v in ratios.values()]])
    lines = ["| images | n | flagged as not an X-ray | median X-ray score |", "|---|---:|---:|---:|"]
    for g, v in m["by_group"].items():
        lines.append(f"| {g} | {v['n']} | {100 * v['flagged']:.1f}% | {v['median_score']:.3f} |")
    lines += ["", f"AUROC (test X-rays vs {m['n_non_xray']} non-X-rays, xray_score): **{m['auroc']:.4f}**; "
              f"by signal alone: " + ", ".join(f"{k} {v}" for k, v in m["auroc_by_signal"].items()) + ".",
              f"False alarms on {m['n_xray']} test X-rays: **{100 * m['false_alarm_rate_test_xrays']:.2f}%**; "
              f"non-X-rays caught: **{100 * m['detection_rate_non_xrays']:.1f}%**. The check adds "
              f"{timing['added_ms_median']} ms to a prediction (median of {timing['n_calls']} calls, 1 thread).",
              "", "| kind | n | flagged | reason names its group (medical image / photo or drawing), "
              "of those flagged |",
              "|---|---:|---:|---:|",
              *[f"| {k} | {v['n']} | {100 * v['flagged']:.1f}% | {100 * v['named_correctly_when_flagged']:.0f}% |"
                for k, v in m["by_kind"].items()]]
    if m["missed_non_xrays"]:
        lines.append("Missed (passed as X-rays): " + ", ".join(f"`{n}`" for n in m["missed_non_xrays"]) + ".")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    _plot(out / "scores.png", y, score)
    print("\n".join(lines))
    return m


def _kind_row(kind: str, res: list[dict], kinds: list[str]) -> dict:
    """Flagged share of one kind of non-X-ray, and how often the reason names its group."""
    mine = [r for r, k in zip(res, kinds) if k == kind]
    flagged = [r for r in mine if not r["is_xray"]]
    named = [r.get("looks_like") == KIND_GROUP[kind] for r in flagged] or [0.0]
    return {"n": len(mine), "flagged": round(float(np.mean([not r["is_xray"] for r in mine])), 4),
            "named_correctly_when_flagged": round(float(np.mean(named)), 4)}


def _added_ms(p, model_path: str, images: list, repeats: int = 3) -> dict:
    """What the X-ray check adds to Predictor.predict (no Grad-CAM, one thread as the app's worker):
    median time per call with the gate minus with only the colour rule (no gate file), interleaved."""
    import torch

    from model.inference import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bare = Predictor(model_path, calibration_path=None, xray_path=None)
    with_gate, without = [], []
    try:
        for _ in range(repeats):
            for img in images:
                for pred, acc in ((p, with_gate), (bare, without)):
                    t = time.perf_counter()
                    pred.predict(img, cam_method=None)
                    acc.append(1000 * (time.perf_counter() - t))
    finally:
        bare.close()
        torch.set_num_threads(threads)
    return {"n_calls": len(with_gate), "median_ms_with_check": round(float(np.median(with_gate)), 1),
            "median_ms_colour_only": round(float(np.median(without)), 1),
            "added_ms_median": round(float(np.median(with_gate) - np.median(without)), 1), "threads": 1}


def _plot(path: Path, y: np.ndarray, score: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = np.linspace(0, 1, 41)
    ax.hist(score[y == 1], bins=bins, alpha=0.6, label="test X-rays", color="tab:blue")
    ax.hist(score[y == 0], bins=bins, alpha=0.6, label="non-X-rays", color="tab:red")
    ax.axvline(0.5, color="k", ls=":", lw=1, label="threshold")
    ax.set_yscale("log")
    ax.set_xlabel("xray_score")
    ax.legend(fontsize=8)
    ax.set_title("X-ray check scores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
