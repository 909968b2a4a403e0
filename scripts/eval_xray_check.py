"""Evaluate the X-ray check (model/xray_check.py) on test X-rays and on non-X-ray images.

    python scripts/eval_xray_check.py --model assets/model.pt --gate assets/xray_check.npz \
        --data ../shared/data/fracatlas --data ../shared/data/multiregion --out assets/report/xray_check

Positives: the TEST-split X-rays of each data root (never used to fit or set the gate; the gate's
threshold comes from the validation split). Negatives: images that packages ship (scikit-learn's sample
images, every scikit-image `data` image that loads offline, incl. the grey, astronomical, microscopy,
retina and CT-phantom ones), each in colour and/or grey, inverted, cropped, resized and rotated, plus
generated images (text, noise, flat colours, gradients, stripes, shapes), plus the CT, MR, ultrasound
and other non-radiograph DICOM files that pydicom ships (as DICOM and as PNG). None of them is used to fit
anything. The images go through the same decode -> letterbox -> network -> gate path as Predictor.predict
(checked on a sample). Writes metrics.json, scores.csv, table.md and scores.png to --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.xray_check import XrayCheck, chroma, dicom_modality, image_stats, network_features  # noqa: E402

log = logging.getLogger("eval_xray_check")

SKIMAGE_NAMES = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee",
                 "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
                 "logo", "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
                 # these need a download (pooch + internet) and are skipped when they do not load:
                 "brain", "kidney", "lily", "cells3d", "eagle", "human_mitosis", "skin")
MEDICAL_LOOKING = {"brain", "kidney", "cell", "cells3d", "retina", "microaneurysms", "shepp_logan_phantom",
                   "immunohistochemistry", "human_mitosis", "skin"}


def _to_uint8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    lo, hi = a.min(), a.max()
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) / (hi - lo) * 255).round().astype(np.uint8)


def package_images() -> list[tuple[str, str, Image.Image]]:
    """(name, group, PIL image) for every shipped image that loads without the network."""
    out = []
    from sklearn.datasets import load_sample_images

    ds = load_sample_images()
    for fn, arr in zip(ds.filenames, ds.images):
        out.append((f"sklearn:{Path(fn).stem}", "photo", Image.fromarray(arr)))
    import skimage.data as skd

    for name in SKIMAGE_NAMES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = getattr(skd, name)()
        except Exception as exc:  # noqa: BLE001 - needs pooch/internet
            log.info("skimage.data.%s not available offline (%s): skipped", name, type(exc).__name__)
            continue
        if isinstance(a, tuple):
            a = a[0]
        a = np.asarray(a)
        if a.ndim == 3 and a.shape[-1] not in (3, 4):  # a volume (cells3d, brain): middle slice
            a = a[a.shape[0] // 2]
        if a.ndim == 4:
            a = a[a.shape[0] // 2, ..., 0] if a.shape[-1] not in (3, 4) else a[a.shape[0] // 2]
        a = _to_uint8(a)
        img = Image.fromarray(a)
        if img.mode == "RGBA":
            img = img.convert("RGB")
        out.append((f"skimage:{name}", "medical-looking" if name in MEDICAL_LOOKING else "photo", img))
    return out


def variants(name: str, group: str, img: Image.Image, rng: np.random.Generator):
    """Colour (if colour) and grey versions, inverted, crops, resizes, a rotation."""
    is_colour = img.mode == "RGB"
    grey = img.convert("L")
    w, h = img.size
    yield f"{name}|orig", group + (" colour" if is_colour else " grey"), img
    if is_colour:
        yield f"{name}|grey", group + " grey", grey
    yield f"{name}|grey-inverted", group + " grey", Image.fromarray(255 - np.asarray(grey))
    for src, tag in ((img, "orig"), (grey, "grey")) if is_colour else ((grey, "grey"),):
        cw, ch = int(w * 0.6), int(h * 0.6)
        yield f"{name}|{tag}-centre-crop", group + " crop", src.crop(((w - cw) // 2, (h - ch) // 2,
                                                                     (w - cw) // 2 + cw, (h - ch) // 2 + ch))
        cw, ch = max(16, int(w * 0.35)), max(16, int(h * 0.45))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        yield f"{name}|{tag}-random-crop", group + " crop", src.crop((x0, y0, x0 + cw, y0 + ch))
    small = grey.resize((max(16, w // 3), max(16, h // 3)), Image.Resampling.BILINEAR)
    yield f"{name}|grey-small", group + " resize", small
    s = 1100 / max(w, h)
    yield f"{name}|large", group + " resize", img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    yield f"{name}|grey-rot90", group + " grey", grey.rotate(90, expand=True)


def generated_images(rng: np.random.Generator):
    """Text, noise, flat colours, gradients, stripes, shapes."""
    font = ImageFont.load_default()
    try:
        big = ImageFont.load_default(size=28)
    except TypeError:
        big = font
    lorem = ("FractureLens test page. The quick brown fox jumps over the lazy dog 0123456789. "
             "Radiology report: no acute osseous abnormality. ") * 3
    for k, (bg, fg, f, size) in enumerate([(255, 0, font, (640, 480)), (0, 255, font, (480, 640)),
                                          (255, 0, big, (800, 600)), (0, 230, big, (512, 512)),
                                          (240, 30, big, (300, 900)), ((255, 250, 230), (20, 20, 120), big, (700, 500))]):
        mode = "RGB" if isinstance(bg, tuple) else "L"
        img = Image.new(mode, size, bg)
        d = ImageDraw.Draw(img)
        y = 5
        while y < size[1] - 20:
            off = int(rng.integers(0, len(lorem) - 60))
            d.text((5, y), lorem[off : off + 60], fill=fg, font=f)
            y += 14 if f is font else 34
        yield f"gen:text{k}", "generated text", img
    for k in range(3):
        yield f"gen:uniform-noise-grey{k}", "generated noise", Image.fromarray(
            rng.integers(0, 256, (300 + 100 * k, 400), dtype=np.uint8))
        yield f"gen:gauss-noise-grey{k}", "generated noise", Image.fromarray(
            np.clip(rng.normal(100 + 30 * k, 40, (400, 300 + 50 * k)), 0, 255).astype(np.uint8))
        yield f"gen:noise-colour{k}", "generated noise", Image.fromarray(
            rng.integers(0, 256, (320, 320, 3), dtype=np.uint8))
        blobs = np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).resize(
            (512, 512), Image.Resampling.BICUBIC))
        yield f"gen:smooth-noise{k}", "generated noise", Image.fromarray(blobs)
    for k, v in enumerate([0, 255, 128, 40, 200]):
        yield f"gen:flat-grey{v}", "generated flat", Image.new("L", (400 + 40 * k, 300), v)
    for rgb in [(255, 0, 0), (0, 90, 200), (20, 160, 60), (250, 240, 200)]:
        yield f"gen:flat-rgb{rgb}", "generated flat", Image.new("RGB", (400, 400), rgb)
    yy, xx = np.mgrid[0:400, 0:500].astype(np.float64)
    grads = {"linear-h": xx / 499, "linear-v": yy / 399, "diagonal": (xx + yy) / 898,
             "radial": np.clip(np.hypot(xx - 250, yy - 200) / 320, 0, 1),
             "radial-inv": 1 - np.clip(np.hypot(xx - 250, yy - 200) / 320, 0, 1)}
    for name, g in grads.items():
        yield f"gen:gradient-{name}", "generated gradient", Image.fromarray((g * 255).astype(np.uint8))
    col = np.stack([xx / 499, yy / 399, 1 - xx / 499], axis=-1)
    yield "gen:gradient-colour", "generated gradient", Image.fromarray((col * 255).astype(np.uint8))
    for k, period in enumerate([8, 32, 80]):
        yield f"gen:stripes{period}", "generated pattern", Image.fromarray(
            (((xx // period) % 2) * 255).astype(np.uint8))
    for k in range(4):
        img = Image.new("L", (500, 400), int(rng.integers(0, 80)))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, 450)), int(rng.integers(0, 350))
            box = (x0, y0, x0 + int(rng.integers(20, 150)), y0 + int(rng.integers(20, 150)))
            fill = int(rng.integers(60, 256))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
        yield f"gen:shapes{k}", "generated pattern", img


def other_modality_images() -> list[tuple[str, str, object]]:
    """CT, MR, ultrasound, nuclear-medicine and other non-radiograph DICOM files that pydicom ships: each
    distinct image twice, as the DICOM file (its Modality tag is checked) and as an 8-bit PNG of its
    pixels (pixels only, as a screenshot or export would arrive)."""
    import hashlib
    import io

    from pydicom.data import get_testdata_file

    from model.preprocess import decode_image
    from model.xray_check import foreign_modality

    folder = Path(get_testdata_file("CT_small.dcm")).parent
    out, seen = [], set()
    for f in sorted(folder.glob("*.dcm")):
        data = f.read_bytes()
        modality = dicom_modality(data)
        if not foreign_modality(modality):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grey = decode_image(data)
        except Exception:  # noqa: BLE001 - no pixel data or no decoder for it
            continue
        key = hashlib.sha256(np.asarray(grey.resize((32, 32))).tobytes()).hexdigest()
        if key in seen:  # the same picture in another transfer syntax
            continue
        seen.add(key)
        out.append((f"pydicom:{f.stem}|dicom", f"other modality {modality} DICOM", data))
        buf = io.BytesIO()
        grey.save(buf, format="PNG")
        out.append((f"pydicom:{f.stem}|png", f"other modality {modality} PNG", Image.open(io.BytesIO(buf.getvalue()))))
    return out


def non_xray_set(seed: int = 0) -> list[tuple[str, str, object]]:
    rng = np.random.default_rng(seed)
    out = []
    for name, group, img in package_images():
        out.extend(variants(name, group, img, rng))
    out.extend(generated_images(rng))
    out.extend(other_modality_images())
    return out


def main(argv=None) -> dict:
    from sklearn.metrics import roc_auc_score

    from model.cache import DEFAULT_CACHE_DIR, load_squares
    from model.evaluate import select_samples
    from model.inference import Predictor, setup_cpu_threads
    from model.network import load_model
    from model.splits import file_sha256

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets/model.pt")
    ap.add_argument("--gate", default="assets/xray_check.npz")
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--out", default="assets/report/xray_check")
    ap.add_argument("--split", default="test")
    ap.add_argument("--splits-dir", default="assets/splits")
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-xrays", type=int, default=0, help="cap per data root (0 = all)")
    ap.add_argument("--features-only", action="store_true", help="only compute and cache the features")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    setup_cpu_threads(args.threads)
    t0 = time.time()
    model, meta = load_model(args.model)
    sha = file_sha256(args.model)
    size = int(meta["img_size"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    cache = Path(args.cache_dir) / f"xray-eval-v3-{sha[:16]}-{args.split}-{args.max_xrays}.npz" if args.cache_dir else None
    neg = non_xray_set()
    loaded = False
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                names, groups, truth = list(z["names"]), list(z["groups"]), z["truth"]
                feats, stats, chromas, modalities = z["feats"], z["stats"], z["chromas"], list(z["modalities"])
            loaded = True
            log.info("features loaded from %s", cache)
        except Exception as exc:  # noqa: BLE001 - a partial/old cache file: recompute
            log.warning("ignoring the feature cache %s (%s)", cache, type(exc).__name__)
    if not loaded:
        names, groups, truth, feats, stats, chromas, modalities = [], [], [], [], [], [], []
        for root in args.data:
            samples = select_samples([root], args.split, args.splits_dir)
            if args.max_xrays:
                samples = samples[: args.max_xrays]
            squares, ok = load_squares(samples, size, args.cache_dir)
            idx = np.flatnonzero(ok)
            feats.append(network_features(model, squares[idx], meta["mean"], meta["std"]))
            stats += [image_stats(squares[i]) for i in idx]
            chromas += [chroma(samples[i].path) for i in idx]
            modalities += [dicom_modality(samples[i].path) or "" for i in idx]
            src = Path(root).resolve().name
            names += [f"{src}:{samples[i].image_id}" for i in idx]
            groups += [f"X-ray {src} {args.split}"] * len(idx)
            truth += [1] * len(idx)
            log.info("%s %s: %d X-rays scored", src, args.split, len(idx))
            del squares
        from model.preprocess import decode_image, letterbox

        for i in range(0, len(neg), 16):
            chunk = neg[i : i + 16]
            sq = np.stack([letterbox(decode_image(img), size)[0] for _, _, img in chunk])
            feats.append(network_features(model, sq, meta["mean"], meta["std"]))
            stats += [image_stats(s) for s in sq]
            chromas += [chroma(img) for _, _, img in chunk]
            modalities += [dicom_modality(img) or "" for _, _, img in chunk]
        names += [n for n, _, _ in neg]
        groups += [g for _, g, _ in neg]
        truth += [0] * len(neg)
        log.info("%d non-X-ray images scored", len(neg))
        feats, stats, chromas, truth = np.concatenate(feats), np.stack(stats), np.array(chromas), np.array(truth)
        if cache is not None:
            tmp = cache.with_name(cache.stem + ".partial.npz")
            np.savez(tmp, names=np.array(names), groups=np.array(groups), truth=truth, feats=feats, stats=stats,
                     chromas=chromas, modalities=np.array(modalities))
            tmp.replace(cache)
    if args.features_only:
        return {}
    gate = XrayCheck.load(args.gate, model_sha256=sha)
    results = gate.assess_batch(feats, None, chromas, stats=stats, modalities=[m or None for m in modalities])
    rows = list(zip(names, groups, [int(t) for t in truth], results))
    res = results[len(results) - len(neg):]

    # the Predictor itself gives the same answers (same code path), checked on a few of each kind
    with Predictor(args.model, calibration_path=None, xray_path=args.gate) as p:
        check = [(img, r) for (_, _, img), r in zip(neg[::25], res[::25])]
        mismatch = [abs(p.predict(img, cam_method=None)["xray_score"] - r["xray_score"]) for img, r in check]
    y = np.array([r[2] for r in rows])
    score = np.array([r[3]["xray_score"] for r in rows])
    flag = np.array([not r[3]["is_xray"] for r in rows])
    keys = list(dict.fromkeys(k for r in rows for k in r[3]["xray_ratios"]))
    ratios = {k: np.array([r[3]["xray_ratios"].get(k, np.nan) for r in rows]) for k in keys}
    groups = sorted({r[1] for r in rows})
    m = {
        "model": args.model, "model_sha256": sha, "gate": args.gate, "gate_matches_model": gate.model_sha256 == sha,
        "gate_threshold": gate.threshold, "colour_limit": gate.colour_limit,
        "n_xray": int(y.sum()), "n_non_xray": int((1 - y).sum()),
        "auroc": round(float(roc_auc_score(y, score)), 4),
        "auroc_by_signal": {k: (round(float(roc_auc_score(y, -np.nan_to_num(v, nan=0.0))), 4) if np.isfinite(v).any() else None)
                            for k, v in ratios.items()},
        "false_alarm_rate_test_xrays": round(float(flag[y == 1].mean()), 4),
        "detection_rate_non_xrays": round(float(flag[y == 0].mean()), 4),
        "by_group": {g: {"n": int(sum(r[1] == g for r in rows)),
                         "flagged": round(float(np.mean([not r[3]["is_xray"] for r in rows if r[1] == g])), 4),
                         "median_score": round(float(np.median([r[3]["xray_score"] for r in rows if r[1] == g])), 4)}
                     for g in groups},
        "missed_non_xrays": [r[0] for r in rows if r[2] == 0 and r[3]["is_xray"]],
        "predictor_consistency_max_abs_diff": float(max(mismatch)) if mismatch else None,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "group", "is_xray_truth", "xray_score", "flagged", *[f"{k}_ratio" for k in ratios]])
        for i, (n, g, t, r) in enumerate(rows):
            w.writerow([n, g, t, f"{r['xray_score']:.5f}", int(not r["is_xray"]), *[f"{v[i]:.4f}" for v in ratios.values()]])
    lines = ["| images | n | flagged as not an X-ray | median X-ray score |", "|---|---:|---:|---:|"]
    for g, v in m["by_group"].items():
        lines.append(f"| {g} | {v['n']} | {100 * v['flagged']:.1f}% | {v['median_score']:.3f} |")
    lines += ["", f"AUROC (test X-rays vs {m['n_non_xray']} non-X-rays, xray_score): **{m['auroc']:.4f}**; "
              f"by signal alone: " + ", ".join(f"{k} {v}" for k, v in m["auroc_by_signal"].items()) + ".",
              f"False alarms on {m['n_xray']} test X-rays: **{100 * m['false_alarm_rate_test_xrays']:.2f}%**; "
              f"non-X-rays caught: **{100 * m['detection_rate_non_xrays']:.1f}%**."]
    if m["missed_non_xrays"]:
        lines.append("Missed (passed as X-rays): " + ", ".join(f"`{n}`" for n in m["missed_non_xrays"]) + ".")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    _plot(out / "scores.png", y, score)
    print("\n".join(lines))
    return m


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
