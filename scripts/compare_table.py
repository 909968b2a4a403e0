"""Collect the training runs into assets/report/comparison.{json,md} (validation only; test is never read).

    python scripts/compare_table.py [RUN_DIR ...]     # default: runs/compare/* and runs/final-mnv3-320

Per run: epochs, best epoch and its validation AUROC / AP from log.csv, training minutes (sum of epoch
times on this 2-core CPU), and, when `scripts/compare.sh` has evaluated the run's best.pt
(RUN/eval-val-<data>/metrics.json from `python -m model.evaluate --split val`), the group-bootstrap 95% CI
of the FracAtlas validation AUROC and the AUROC on the multiregion validation split.
"""
import csv
import json
import sys
from pathlib import Path

import torch

runs = [Path(p) for p in sys.argv[1:]] or sorted(Path("runs/compare").glob("*/")) + [Path("runs/final-mnv3-320")]
rows = []
for run in runs:
    log = run / "log.csv"
    if not log.is_file() or not (run / "summary.json").is_file():
        continue  # unfinished
    epochs = list(csv.DictReader(open(log)))
    best = max(epochs, key=lambda r: float(r["val_auroc"]))
    cfg = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["args"]  # our own checkpoint
    ev = {}
    for name in ("fracatlas", "multiregion"):
        f = run / f"eval-val-{name}" / "metrics.json"
        if f.is_file():
            m = json.loads(f.read_text())
            ev[name] = {"auroc": m["auroc"], "ci95": m["auroc_ci95"], "n": m["n"], "n_fractured": m["n_fractured"]}
    rows.append({
        "run": run.name, "arch": cfg["arch"], "img_size": cfg["img_size"],
        "data": "+".join(Path(d).name for d in cfg["data"]), "lr": cfg["lr"], "weight_decay": cfg["weight_decay"],
        "epochs": len(epochs), "best_epoch": int(best["epoch"]),
        "val_auroc": float(best["val_auroc"]), "val_ap": float(best["val_ap"]),
        "train_minutes": round(sum(float(r["seconds"]) for r in epochs) / 60, 1), "val_eval": ev,
    })
out = Path("assets/report")
out.mkdir(parents=True, exist_ok=True)
(out / "comparison.json").write_text(json.dumps(rows, indent=2))


def ci(r, name):
    e = r["val_eval"].get(name)
    return "" if not e else f"{e['auroc']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"


lines = ["| architecture | input px | training data | epochs | best epoch | FracAtlas val AUROC [95% CI] | val AP "
         "| multiregion val AUROC [95% CI] | train minutes (2-core CPU) |",
         "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    fa = ci(r, "fracatlas") or f"{r['val_auroc']:.3f}"
    lines.append(f"| {r['arch']} | {r['img_size']} | {r['data']} | {r['epochs']} | {r['best_epoch']} | {fa} | "
                 f"{r['val_ap']:.3f} | {ci(r, 'multiregion')} | {r['train_minutes']} |")
(out / "comparison.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
