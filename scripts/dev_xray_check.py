"""Choose the X-ray check's signals on DEVELOPMENT non-X-rays, kept apart from the evaluation set.

    python scripts/dev_xray_check.py --model assets/model.pt \
        --data ../shared/data/fracatlas --data ../shared/data/multiregion

Development negatives: photographs that gradio and matplotlib ship, scikit-image files that the
evaluation (scripts/eval_xray_check.py) does not use (a stereo photo, a chessboard, a colour test image,
faces), matplotlib's MRI slice and two terrain maps, each in the same variants as the evaluation (grey,
inverted, crops, resizes, a rotation). Positives: the VALIDATION X-rays. Each signal set is fitted on the
training X-rays exactly as `python -m model.xray_check` does (threshold: 99% of validation X-rays
pass), and scored by AUROC and the share of grey development negatives caught. The test split and the
evaluation negatives are not read. Writes assets/report/xray_check/development.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_xray_check import _to_uint8, variants  # noqa: E402

from model.xray_check import COLOUR_LIMIT, XrayCheck, chroma, fit_features, image_stats, network_features  # noqa: E402

SIGNAL_SETS = [("stats",), ("stats", "layers"), ("stats", "features")]  # the statistics are always part of a gate


def development_images() -> list[tuple[str, str, Image.Image]]:
    import gradio
    import matplotlib
    import skimage

    gr = Path(gradio.__file__).parent / "media_assets" / "images"
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    ski = Path(skimage.__file__).parent / "data"
    out = [(f"gradio:{n}", "photo", Image.open(gr / n).convert("RGB"))
           for n in ("bus.png", "cheetah.jpg", "cheetah1.jpg", "groot.jpeg", "lion.jpg", "tower.jpg")]
    out += [("mpl:grace_hopper", "photo", Image.open(mpl / "grace_hopper.jpg").convert("RGB"))]
    out += [(f"skimage-file:{n}", "photo", Image.open(ski / n).convert("RGB"))
            for n in ("motorcycle_left.png", "chessboard_GRAY.png", "color.png")]
    mri = np.frombuffer(gzip.open(mpl / "s1045.ima.gz").read(), ">u2").reshape(256, 256)
    out.append(("mpl:mri-s1045", "MR", Image.fromarray(_to_uint8(mri.astype(float)))))
    for n in ("jacksboro_fault_dem.npz", "topobathy.npz"):
        with np.load(mpl / n) as z:
            out.append((f"mpl:{n}", "terrain", Image.fromarray(_to_uint8(z[z.files[0]].astype(float)))))
    faces = np.load(ski / "lfw_subset.npy")
    out += [(f"skimage-file:lfw{k}", "face", Image.fromarray(_to_uint8(faces[k])).resize((200, 200)))
            for k in range(0, 40, 8)]
    rng = np.random.default_rng(0)
    return [v for name, group, img in out for v in variants(name, group, img, rng)]


def main(argv=None) -> dict:
    from sklearn.metrics import roc_auc_score

    from model.inference import setup_cpu_threads
    from model.network import load_model
    from model.preprocess import decode_image, letterbox

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets/model.pt")
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--max-train", type=int, default=1500)
    ap.add_argument("--splits-dir", default="assets/splits")
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="assets/report/xray_check/development.json")
    args = ap.parse_args(argv)
    setup_cpu_threads(args.threads)
    model, meta = load_model(args.model)
    parts, per_source_val = fit_features(args.model, model, meta, args.data, args.max_train, args.splits_dir,
                                         args.cache_dir)
    layout, taps = per_source_val["_layout"]["layout"], per_source_val["_layout"]["tap_layers"]
    (trf, trs, _), (vaf, vas, vac) = parts["train"], parts["val"]
    neg = development_images()
    sq = np.stack([letterbox(decode_image(img), int(meta["img_size"]))[0] for _, _, img in neg])
    nf = network_features(model, sq, meta["mean"], meta["std"])
    ns = np.stack([image_stats(s) for s in sq])
    nc = np.array([chroma(img) for _, _, img in neg])
    grey = nc <= COLOUR_LIMIT
    rows = {}
    for signals in SIGNAL_SETS:
        g = XrayCheck.fit(trf, trs, vaf, vas, layout=layout, tap_layers=taps, signals=signals)
        pos = g.assess_batch(vaf, None, vac, stats=vas)
        res = g.assess_batch(nf, None, nc, stats=ns)
        score = np.array([r["xray_score"] for r in pos + res])
        y = np.r_[np.ones(len(pos)), np.zeros(len(res))]
        caught = np.array([not r["is_xray"] for r in res])
        key = "+".join(signals)
        rows[key] = {
            "auroc_all": round(float(roc_auc_score(y, score)), 4),
            "auroc_grey": round(float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(grey.sum())],
                                                    np.r_[score[: len(pos)], score[len(pos):][grey]])), 4),
            "caught_all": round(float(caught.mean()), 4), "caught_grey": round(float(caught[grey].mean()), 4),
            "val_flagged": round(float(np.mean([not r["is_xray"] for r in pos])), 4),
            "missed": [n for (n, _, _), c in zip(neg, caught) if not c],
        }
        print(f"{key:18s} AUROC {rows[key]['auroc_all']:.4f} (grey {rows[key]['auroc_grey']:.4f})  caught "
              f"{rows[key]['caught_all']:.3f} (grey {rows[key]['caught_grey']:.3f})", flush=True)
    out = {"model": args.model, "n_val_xrays": int(len(vas)), "n_dev_negatives": len(neg),
           "n_grey_dev_negatives": int(grey.sum()), "signal_sets": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
