"""Temperature scaling against Platt scaling and isotonic regression, on the VALIDATION split only.

    python -m scripts.compare_calibrators --model assets/model.pt --data ../shared/data/fracatlas

Each method is fitted on 4/5 of the validation images and scored on the remaining fifth (5-fold,
stratified, repeated 5 times with different shuffles), so no method is scored on the images it was
fitted on. Scores: negative log-likelihood, Brier score and ECE (15 bins) of the held-out
probabilities. Platt = scikit-learn's LogisticRegression on the logit (slope and intercept);
isotonic = scikit-learn's IsotonicRegression on the logit (clipped to [1e-4, 1 - 1e-4] for the NLL).
Writes assets/report/calibration/methods.{json,md}. The test split is not read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from calibration import core
from model.common import REPORT_DIR, add_bundle_args, command_parser, resolve_bundle, shown


def _methods():
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    def temperature(z, y):
        t = core.fit_temperature(z, y)["temperature"]
        return lambda q: core.sigmoid(q / t)

    def platt(z, y):
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y)
        return lambda q: lr.predict_proba(q[:, None])[:, 1]

    def isotonic(z, y):
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(z, y)
        return lambda q: iso.predict(q)

    return {"uncalibrated": lambda z, y: core.sigmoid, "temperature": temperature, "platt": platt,
            "isotonic": isotonic}


def compare(z: np.ndarray, y: np.ndarray, folds: int = 5, repeats: int = 5) -> dict:
    from sklearn.model_selection import StratifiedKFold

    eps = 1e-4
    out = {}
    for name, fit in _methods().items():
        nll, brier, ece = [], [], []
        for rep in range(repeats):
            skf = StratifiedKFold(folds, shuffle=True, random_state=rep)
            p = np.zeros(len(y))
            for tr, te in skf.split(z, y):
                p[te] = fit(z[tr], y[tr])(z[te])
            pc = np.clip(p, eps, 1 - eps)
            nll.append(float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))))
            brier.append(float(np.mean((p - y) ** 2)))
            ece.append(float(core.ece(p, y)))
        out[name] = {"nll": round(float(np.mean(nll)), 4), "nll_sd": round(float(np.std(nll)), 4),
                     "brier": round(float(np.mean(brier)), 4), "ece": round(float(np.mean(ece)), 4),
                     "ece_sd": round(float(np.std(ece)), 4)}
    return out


def main(argv=None) -> dict:
    from model.evaluate import score_data

    ap = command_parser(__spec__, __doc__)
    add_bundle_args(ap, ("model",))
    ap.add_argument("--data", nargs="+", default=["../shared/data/fracatlas"])
    ap.add_argument("--out", default=str(REPORT_DIR / "calibration"))
    args = resolve_bundle(ap.parse_args(argv))
    samples, logits, _ = score_data(args.model, args.data, "val")
    z = logits[:, 0].astype(np.float64)
    y = np.array([s.label for s in samples], dtype=np.int64)
    res = {"model": shown(args.model), "split": "val", "n": int(len(y)), "n_positive": int(y.sum()),
           "protocol": "5-fold stratified cross-validation on validation, repeated 5 times", "methods": compare(z, y)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "methods.json").write_text(json.dumps(res, indent=2))
    lines = [f"Calibration methods, held-out folds of the validation split ({res['n']} images, "
             f"{res['n_positive']} fractured; {res['protocol']}). Lower is better.", "",
             "| method | NLL (sd) | Brier | ECE (sd) |", "|---|---|---|---|"]
    for name, m in res["methods"].items():
        lines.append(f"| {name} | {m['nll']:.4f} ({m['nll_sd']:.4f}) | {m['brier']:.4f} | "
                     f"{m['ece']:.4f} ({m['ece_sd']:.4f}) |")
    (out / "methods.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return res


if __name__ == "__main__":
    main()
