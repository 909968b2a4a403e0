"""Collect the training runs' summaries into assets/report/comparison.{json,md} (validation only)."""
import csv
import json
import sys
from pathlib import Path

import torch

runs = [Path(p) for p in sys.argv[1:]] or sorted(Path("runs/compare").glob("*/")) + [Path("runs/final-mnv3-320")]
rows = []
for run in runs:
    log = run / "log.csv"
    if not log.is_file():
        continue
    epochs = list(csv.DictReader(open(log)))
    best = max(epochs, key=lambda r: float(r["val_auroc"]))
    cfg = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["args"]  # our own checkpoint
    cfg["data"] = [Path(d).name for d in cfg["data"]]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    rows.append({
        "run": run.name, "arch": cfg["arch"],
        "img_size": cfg["img_size"], "data": "+".join(cfg.get("data", [])) or None,
        "epochs": len(epochs), "best_epoch": int(best["epoch"]),
        "val_auroc": float(best["val_auroc"]), "val_ap": float(best["val_ap"]),
        "train_minutes": round(sum(float(r["seconds"]) for r in epochs) / 60, 1),
    })
out = Path("assets/report")
out.mkdir(parents=True, exist_ok=True)
(out / "comparison.json").write_text(json.dumps(rows, indent=2))
lines = ["| architecture | input px | training data | epochs run | best epoch | val AUROC | val AP | train minutes (2-core CPU) |",
         "|---|---|---|---|---|---|---|---|"]
for r in rows:
    lines.append(f"| {r['arch']} | {r['img_size']} | {r['data']} | {r['epochs']} | {r['best_epoch']} | {r['val_auroc']:.3f} | {r['val_ap']:.3f} | {r['train_minutes']} |")
(out / "comparison.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
