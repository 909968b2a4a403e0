"""Choose the X-ray check's signals on DEVELOPMENT non-X-rays, kept apart from the evaluation set.

    python -m scripts.dev_xray_check --model assets/model.pt \\
        --data ../shared/data/fracatlas --data ../shared/data/multiregion

Negatives: the development half of model.xray.negatives (split by source picture; the evaluation half
is not read). Positives: the training X-rays (to fit) and the VALIDATION X-rays (threshold: 99% of them
pass, as `python -m model.xray.fit` sets it). The learned signal is fitted on development negatives,
so it is scored by 5-fold cross-validation grouped by source picture: each fold's negatives are
assessed by a gate fitted without any rendering of their pictures. The test split is not read.
Writes assets/report/xray_check/development.json.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from model.common import REPORT_DIR, SPLITS_DIR, add_bundle_args, command_parser, resolve_bundle, shown
from model.xray.check import COLOUR_LIMIT, XrayCheck
from model.xray.fit import (
    DEFAULT_FILM_COPIES,
    DEFAULT_UPLOAD_VARIANTS,
    FILM_COPIES_HELP,
    fit_features,
    negative_inputs,
)
from model.xray.kinds import KIND_GROUP
from model.xray.negatives import all_negatives, split_sets
from model.xray.probe import ImageNetProbe, installed_spec

# (signals, learned_inputs): the statistics are always part of a gate
SIGNAL_SETS = [(("stats",), None), (("stats", "layers"), None), (("stats", "features"), None),
               (("stats", "learned"), "none"), (("stats", "learned"), "layers"), (("stats", "learned"), "features"),
               (("stats", "learned"), "all")]
PROBE_SETS = [(("stats", "learned"), "probe"), (("stats", "learned"), "layers+probe")]  # with --probe


def main(argv=None) -> dict:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    from model.cache import DEFAULT_CACHE_DIR
    from model.common import setup_cpu_threads
    from model.network import load_model

    ap = command_parser(__spec__, __doc__)
    add_bundle_args(ap, ("model",))
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--max-train", type=int, default=1500)
    ap.add_argument("--upload-variants", type=int, default=DEFAULT_UPLOAD_VARIANTS,
                    help="changed copies of each X-ray, as model.xray.fit takes them")
    ap.add_argument("--film-copies", action=argparse.BooleanOptionalAction, default=DEFAULT_FILM_COPIES,
                    help=FILM_COPIES_HELP)
    ap.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                    help="also compare learned signals that read the ImageNet probe (model/xray/probe.py)")
    ap.add_argument("--splits-dir", default=str(SPLITS_DIR))
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--c", default="0.01,0.05,0.2,1,5",
                    help="the learned signal's inverse regularisation (comma-separated values are compared)")
    ap.add_argument("--out", default=str(REPORT_DIR / "xray_check" / "development.json"))
    args = resolve_bundle(ap.parse_args(argv))
    setup_cpu_threads(args.threads)
    model, meta = load_model(args.model)
    probe = ImageNetProbe(installed_spec()) if args.probe else None
    parts, per_source_val = fit_features(args.model, model, meta, args.data, args.max_train, args.splits_dir,
                                         args.cache_dir, args.upload_variants, args.film_copies, probe)
    layout, taps = per_source_val["_layout"]["layout"], per_source_val["_layout"]["tap_layers"]
    (trf, trs, _), (vaf, vas, vac) = parts["train"], parts["val"]
    dev, _ = split_sets(all_negatives())
    nf, ns, nc, nm = negative_inputs(model, meta, dev, args.cache_dir, args.model, probe)
    kinds = np.array([n.kind for n in dev])
    groups = np.array([n.source for n in dev])
    cats = np.array([n.category for n in dev])
    folds = list(GroupKFold(n_splits=args.folds).split(nf, groups=groups))
    rows = {}
    c_values = [float(c) for c in args.c.split(",")]
    sets = SIGNAL_SETS + (PROBE_SETS if probe else [])
    runs = [(sig, inp, c) for sig, inp in sets for c in (c_values if "learned" in sig else [None])]
    for signals, inputs, c in runs:
        caught = np.zeros(len(dev), bool)
        score = np.zeros(len(dev))
        named = np.zeros(len(dev), bool)
        val_flagged, val_scores = [], []
        for tr, te in folds if "learned" in signals else [(np.arange(len(dev)), np.arange(len(dev)))]:
            g = XrayCheck.fit(trf, trs, vaf, vas, layout=layout, tap_layers=taps, signals=signals,
                              negatives=(nf[tr], ns[tr], kinds[tr]), learned_inputs=inputs or "layers",
                              learned_c=c or 1.0, probe=probe.spec if probe else None,
                              quantile=0.99 + float((vac > COLOUR_LIMIT).mean()))
            pos = g.assess_batch(vaf, None, vac, stats=vas)
            res = g.assess_batch(nf[te], None, nc[te], stats=ns[te], modalities=[nm[i] for i in te])
            caught[te] = [not r["is_xray"] for r in res]
            score[te] = [r["xray_score"] for r in res]
            named[te] = [r.get("looks_like") == KIND_GROUP[k] for r, k in zip(res, kinds[te])]
            val_flagged.append(np.mean([not r["is_xray"] for r in pos]))
            val_scores.append(np.array([r["xray_score"] for r in pos]))
        vs = np.mean(val_scores, axis=0)
        grey = nc <= COLOUR_LIMIT
        key = "+".join(signals) + (f"({inputs}, C={c:g})" if inputs else "")
        by_cat = defaultdict(list)
        for c, k in zip(cats, caught):
            by_cat[c].append(k)
        rows[key] = {
            "auroc_all": round(float(roc_auc_score(np.r_[np.ones(len(vs)), np.zeros(len(score))],
                                                   np.r_[vs, score])), 4),
            "caught_all": round(float(caught.mean()), 4), "caught_grey": round(float(caught[grey].mean()), 4),
            "group_named_when_caught": round(float(named[caught].mean()), 4) if "learned" in signals else None,
            "val_flagged": round(float(np.mean(val_flagged)), 4),
            "caught_by_category": {c: f"{sum(v)}/{len(v)}" for c, v in sorted(by_cat.items())},
            "missed": [n.name for n, c in zip(dev, caught) if not c],
        }
        print(f"{key:40s} AUROC {rows[key]['auroc_all']:.4f} caught {rows[key]['caught_all']:.3f} "
              f"(grey {rows[key]['caught_grey']:.3f}) val flagged {rows[key]['val_flagged']:.4f} "
              f"named {rows[key]['group_named_when_caught']}", flush=True)
    out = {"model": shown(args.model), "n_train_xrays": int(len(trs)), "n_val_xrays": int(len(vas)),
           "n_dev_negatives": len(dev), "n_dev_sources": int(len(set(groups))), "folds": args.folds,
           "upload_variants": args.upload_variants, "film_copies": args.film_copies,
           "probe": probe.spec.to_dict() if probe else None, "signal_sets": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
