"""Fitting the X-ray check (model/xray/check.py) for a model file:

    python -m model.xray.fit --model assets/model.pt --data ../shared/data/fracatlas \
        --data ../shared/data/multiregion --out assets/xray_check.npz

Training-split X-rays fit the densities and, with the DEVELOPMENT half of model.xray.negatives, the
learned signal; validation X-rays set the threshold (at most 1% of them flagged). Each X-ray counts as
stored and --upload-variants times changed the way uploads change films (random draws of
model.preprocess.train_augment: poses, rotation, border, crop, grey levels, labels, resampling, blur,
noise, JPEG), so that a rotated, low-contrast, compressed or relabelled radiograph of either data set
still passes. The draws change the whole letterboxed square, its black frame included; --film-copies
changes the film alone and keeps the frame black, as a served upload has it (screened, not adopted yet:
assets/report/comparison.md). Features are cached per model file in the cache folder. Writes the gate
file and assets/report/xray_check/fit.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from model.bundle import add_feature_args, start_command
from model.cache import load_squares, serving_steps
from model.common import (
    REPORT_DIR,
    SPLITS_DIR,
    add_bundle_args,
    command_parser,
    file_sha256,
    shown,
)
from model.preprocess import decode_image, normalize, prepare, train_augment
from model.splits import select_samples
from model.xray.check import (
    COLOUR_LIMIT,
    DEFAULT_LEARNED_C,
    DEFAULT_LEARNED_INPUTS,
    DEFAULT_PATH,
    DEFAULT_SIGNALS,
    LEARNED_INPUTS,
    VAL_QUANTILE,
    XrayCheck,
)
from model.xray.negatives import all_negatives, split_sets
from model.xray.probe import ImageNetProbe, installed_spec
from model.xray.signals import TAP_LAYERS, Taps, chroma, dicom_modality, image_stats, squares_stats

log = logging.getLogger("model.xray.fit")

# changed copies of each X-ray in the fit (1 until the 19-epoch model; assets/report/README.md has the comparison)
DEFAULT_UPLOAD_VARIANTS = 2
# the copies change the film only, its black frame kept black (changed_copies; screened on validation and not
# adopted by its rule yet: assets/report/comparison.md); False: the whole letterboxed square, as the shipped gate
DEFAULT_FILM_COPIES = False
FILM_COPIES_HELP = ("the changed copies change the film only and keep the black around it black, as uploads are "
                    "letterboxed on black after they changed (default: the whole square, as the shipped gate)")


def network_features(model, squares: np.ndarray, mean: float, std: float, batch_size: int = 32,
                     tap_layers: list[str] | None = None, return_layout: bool = False, probe=None):
    """[penultimate features | pooled tap layers | ImageNet probe features] of uint8 squares (batched,
    inference mode): (N, F); the probe's columns only with `probe` (an ImageNetProbe).

    tap_layers: default TAP_LAYERS[model.arch]. With return_layout, also the column layout."""
    if tap_layers is None:
        tap_layers = TAP_LAYERS.get(getattr(model, "arch", ""), [])
    taps = Taps(model, tap_layers)
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(squares), batch_size):
                f = model.features(normalize(squares[i : i + batch_size][:, None], mean, std)).float().numpy()
                t = taps.collect()
                out.append(np.concatenate([f, t], axis=1) if t.size else f)
    finally:
        taps.close()
    feats = np.concatenate(out) if out else np.zeros((0, getattr(model, "feature_dim", 1)), np.float32)
    if probe is not None:
        feats = np.concatenate([feats, probe.features(squares, batch_size)], axis=1)
    if not return_layout:
        return feats
    dim = int(getattr(model, "feature_dim", feats.shape[1]))
    layout, pos = {"features": [0, dim]}, dim
    for name in tap_layers:
        ch = _channels(model, name)
        layout[f"layer:{name}"] = [pos, pos + 2 * ch]
        pos += 2 * ch
    if probe is not None:
        layout["probe"] = [pos, pos + int(probe.dim)]
    return feats, layout, list(tap_layers)


def _channels(model, name: str) -> int:
    sub = model.get_submodule(name)
    seen = {}
    def hook(module, inputs, output):  # returns None: the output is left alone
        seen["c"] = int(output.shape[1])

    h = sub.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model.features(torch.zeros(1, 3, 64, 64))
    finally:
        h.remove()
    return int(seen["c"])


def main(argv=None) -> dict:
    ap = command_parser(__spec__, __doc__)
    add_bundle_args(ap, ("model",))
    add_feature_args(ap)
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    ap.add_argument("--max-train", type=int, default=1500, help="training X-rays used (random subset)")
    ap.add_argument("--upload-variants", type=int, default=DEFAULT_UPLOAD_VARIANTS,
                    help="upload-like changed copies of each training and validation X-ray (train_augment draws)")
    ap.add_argument("--film-copies", action=argparse.BooleanOptionalAction, default=DEFAULT_FILM_COPIES,
                    help=FILM_COPIES_HELP)
    ap.add_argument("--signals", default=",".join(DEFAULT_SIGNALS),
                    help="comma-separated: stats, learned, layers, features, neighbours")
    ap.add_argument("--learned-inputs", default=DEFAULT_LEARNED_INPUTS, choices=LEARNED_INPUTS,
                    help="network columns the learned signal reads besides the image statistics (probe: the "
                         "ImageNet probe's, model/xray/probe.py)")
    ap.add_argument("--learned-c", type=float, default=DEFAULT_LEARNED_C, help="its inverse regularisation")
    ap.add_argument("--report", default=str(REPORT_DIR / "xray_check" / "fit.json"))
    t0 = time.time()
    args, model, meta, sha = start_command(ap, argv)
    size = int(meta.img_size)
    probe = ImageNetProbe(installed_spec()) if "probe" in args.learned_inputs else None
    parts, per_source_val = fit_features(args.model, model, meta, args.data, args.max_train, args.splits_dir,
                                         args.cache_dir, args.upload_variants, args.film_copies, probe)
    lay = per_source_val.pop("_layout")
    signals = tuple(args.signals.split(","))
    negatives = None
    if "learned" in signals:  # the development half of the negatives (the evaluation half is never read)
        dev, _ = split_sets(all_negatives())
        nf, ns, _, _ = negative_inputs(model, meta, dev, args.cache_dir, args.model, probe)
        negatives = (nf, ns, [n.kind for n in dev])
    # the 1% false-alarm budget on validation X-rays covers colour too: the (few) tinted X-rays that
    # the colour rule flags are taken out of the statistics' share
    colour_fa = float((parts["val"][2] > COLOUR_LIMIT).mean())
    gate = XrayCheck.fit(parts["train"][0], parts["train"][1], parts["val"][0], parts["val"][1],
                         model_sha256=sha, layout=lay["layout"], tap_layers=lay["tap_layers"],
                         quantile=min(VAL_QUANTILE + colour_fa, 0.9999),
                         signals=signals, negatives=negatives, learned_inputs=args.learned_inputs,
                         learned_c=args.learned_c, probe=probe.spec if probe else None,
                         info={"model": shown(args.model), "arch": meta.arch, "img_size": size,
                               "data": [Path(d).resolve().name for d in args.data],
                               "n_dev_negatives": 0 if negatives is None else len(negatives[2]),
                               "upload_variants": args.upload_variants, "film_copies": args.film_copies,
                               "learned_inputs": args.learned_inputs if negatives else None,
                               "learned_c": args.learned_c if negatives else None})
    val_feats, val_stats, val_chroma = parts["val"]
    rr = gate.ratios(val_feats, None, val_chroma, stats=val_stats)
    r = np.max(np.stack(list(rr.values()), axis=1), axis=1)
    gate.info["val_flagged_colour"] = float((val_chroma > gate.colour_limit).mean())
    gate.info["val_chroma_p99"] = float(np.quantile(val_chroma, 0.99))
    gate.info["val_flagged_total"] = float((r > 1).mean())
    gate.info["val_flagged_by_source"] = {
        name: {"n": n, "flagged": float((r[end - n : end] > 1).mean())} for name, (n, end) in per_source_val.items()}
    gate.info["fit_seconds"] = round(time.time() - t0, 1)
    gate.save(args.out)
    summary = {"out": args.out, "size_mb": round(Path(args.out).stat().st_size / 1e6, 2),
               "model_sha256": gate.model_sha256, "scales": gate.scales,
               "threshold": gate.threshold, "stats_threshold": gate.stats_threshold,
               "colour_limit": gate.colour_limit, **gate.info}
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


def fit_features(model_path, model, meta: dict, data: list[str], max_train: int = 1500,
                 splits_dir: str | Path = SPLITS_DIR, cache_dir: str | None = None,
                 upload_variants: int = DEFAULT_UPLOAD_VARIANTS, film_copies: bool = DEFAULT_FILM_COPIES,
                 probe=None):
    """(features, statistics, chroma) of the training X-rays (a random subset of max_train) and of all
    validation X-rays of the data roots, each as stored and in `upload_variants` changed copies (of the film
    alone with film_copies, see changed_copies), cached
    per model file. Returns (parts, per_source_val):
    parts = {"train": (...), "val": (...)}; per_source_val = {root name: (n, end row in val)} plus
    "_layout": {"layout": feature column layout, "tap_layers": [...]}."""
    cache = None
    if cache_dir:  # features of this model file on these splits: repeat fits (other settings) are fast
        key = (f"{'v5' if film_copies else 'v4'}-{file_sha256(model_path)[:16]}-{max_train}-"
               + "-".join(Path(d).resolve().name for d in data))
        key += f"-x{upload_variants}" if upload_variants != 1 else ""  # one copy: the key (and draws) of before
        key += "-film" if film_copies else ""
        key += probe_key(probe)
        cache = Path(cache_dir) / f"xray-fit-{key}.npz"
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            parts = {sp: (z[f"{sp}_feats"], z[f"{sp}_stats"], z[f"{sp}_chroma"]) for sp in ("train", "val")}
            per_source_val = json.loads(str(z["per_source_val"]))
        log.info("features loaded from %s", cache)
    else:
        parts, per_source_val = _fit_features(model, meta, data, max_train, splits_dir, cache_dir, upload_variants,
                                              film_copies, probe)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, per_source_val=np.array(json.dumps(per_source_val)),
                     **{f"{sp}_{k}": v for sp, p in parts.items() for k, v in zip(("feats", "stats", "chroma"), p)})
    return parts, per_source_val


def _fit_features(model, meta, data, max_train, splits_dir, cache_dir, upload_variants, film_copies, probe=None):
    size = int(meta.img_size)
    rng = np.random.default_rng(0)
    parts = {}
    per_source_val = {}
    for split in ("train", "val"):
        feats, stats, chromas = [], [], []
        by_root = [(root, select_samples([root], split, splits_dir)) for root in data]
        n_all = sum(len(s) for _, s in by_root)
        for root, samples in by_root:
            # one root at a time: the training run's per-data-set square caches are reused when present
            squares, ok, content = load_squares(samples, size, cache_dir, with_content=True, **serving_steps(meta))
            idx = np.flatnonzero(ok)
            cap = int(round(max_train * len(samples) / max(n_all, 1)))
            if split == "train" and len(idx) > cap:
                idx = np.sort(rng.choice(idx, cap, replace=False))
            kept = squares[idx]  # one copy of the selected squares, not one per changed copy
            # seeds: train 0, 2, 4, ...; val 1, 3, 5, ... (the first copy's draws are those of a one-copy fit)
            films = content[idx] if film_copies else None
            sq = np.concatenate([kept] + [changed_copies(kept, size, seed=len(parts) + 2 * k, content=films)
                                          for k in range(upload_variants)])
            log.info("%s %s: %d X-rays (as stored and changed): features and statistics", Path(root).name, split,
                     len(sq))
            f, layout, taps = network_features(model, sq, meta.mean, meta.std, return_layout=True, probe=probe)
            feats.append(f)
            stats.append(np.stack([image_stats(s) for s in sq]))
            c = np.array([chroma(samples[i].path) for i in idx]) if split == "val" else np.zeros(len(idx))
            chromas.append(np.concatenate([c] * (1 + upload_variants)))
            if split == "val":
                per_source_val[Path(root).resolve().name] = (len(chromas[-1]), int(sum(len(c) for c in chromas)))
            del squares, kept
        parts[split] = (np.concatenate(feats), np.concatenate(stats), np.concatenate(chromas))
    per_source_val["_layout"] = {"layout": layout, "tap_layers": taps}
    return parts, per_source_val


def probe_key(probe) -> str:
    """The part of a feature cache's name that says which ImageNet probe's columns it holds ('' for none)."""
    if probe is None:
        return ""
    return f"-probe-{probe.spec.arch}-{probe.spec.size}-{probe.spec.weights_sha256[:8]}"


def changed_copies(squares: np.ndarray, size: int, seed: int = 0, content: np.ndarray | None = None) -> np.ndarray:
    """One random upload-like change of each uint8 square (model.preprocess.train_augment), seeded.

    content: (N, 4) pad_x, pad_y, new_w, new_h of the film in each square (load_squares(with_content=True)).
    With it, what lies outside the film after the geometric changes (the letterbox padding, a rotation's
    corners, a border) stays black: an upload's grey levels, noise and compression change the film, and the
    serving path letterboxes it afterwards on black. (Changing the whole square lifted a faint copy's padding
    to grey, so the check learned faint films in grey frames and refused the faint uploads it meets, black
    frames and all.)"""
    from torchvision import tv_tensors

    aug = train_augment(size)
    torch.manual_seed(seed)
    out = []
    for i, s in enumerate(squares):
        if content is None:
            out.append(aug(tv_tensors.Image(torch.from_numpy(s)[None]))[0].numpy())
            continue
        x, y, w, h = (int(v) for v in content[i])
        film = torch.zeros((1, *s.shape), dtype=torch.uint8)
        film[:, y : y + h, x : x + w] = 1
        img, mask = aug(tv_tensors.Image(torch.from_numpy(s)[None]), tv_tensors.Mask(film))
        out.append(np.where(mask[0].numpy() > 0, img[0].numpy(), 0).astype(np.uint8))
    return np.stack(out)


def served_squares(model, meta, grays: list) -> np.ndarray:
    """The squares the network finally reads for these decoded images on the serving path: prepared in the
    model's pose, and prepared again as a negative where the polarity head reads a negative film
    (model.inference.Predictor)."""
    from model.pose import read_as_negative

    sq = np.stack([prepare(g, meta).square for g in grays])
    if getattr(model, "polarity_head", None) is None:
        return sq
    with torch.inference_mode():
        pol = model.polarity_logit(model.features(normalize(sq[:, None], meta.mean, meta.std))).float().numpy()
    for i in read_as_negative(pol):
        sq[i] = prepare(grays[i], meta, negative=True).square
    return sq


def negative_inputs(model, meta: dict, negatives, cache_dir: str | None = None, model_path=None, probe=None):
    """(features, statistics, chroma, DICOM modality) of model.xray.negatives images, through the same
    decode -> prepare -> network path as Predictor.predict; cached per model file and image set."""
    cache = None
    if cache_dir and model_path:
        names = hashlib.sha256("\n".join(n.name for n in negatives).encode()).hexdigest()[:12]
        cache = Path(cache_dir) / f"xray-neg-v2-{file_sha256(model_path)[:16]}-{names}{probe_key(probe)}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                return z["feats"], z["stats"], z["chromas"], [str(m) or None for m in z["modalities"]]
    feats, stats, chromas = [], [], []
    for i in range(0, len(negatives), 16):
        grays = [decode_image(n.image) for n in negatives[i : i + 16]]
        chromas += [g.info["chroma"] for g in grays]  # measured by the decode, as Predictor.predict reads it
        sq = served_squares(model, meta, grays)
        feats.append(network_features(model, sq, meta.mean, meta.std, probe=probe))
        stats.append(squares_stats(sq))
    out = (np.concatenate(feats), np.concatenate(stats), np.array(chromas),
           [dicom_modality(n.image) for n in negatives])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, feats=out[0], stats=out[1], chromas=out[2], modalities=np.array([m or "" for m in out[3]]))
    return out


if __name__ == "__main__":
    main()
