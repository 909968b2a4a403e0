"""Collect training runs into a comparison table (validation only; the test split is never read).

    python -m scripts.compare_table --out assets/report/comparison_pretrained runs/screen/*/
(assets/report/comparison_random_init.{md,json} is the earlier random-initialisation screen, kept as committed.)

Per run: arch, input size, initialisation, box supervision, epochs, best epoch and its validation AUROC /
AP from log.csv, the horizontal-flip TTA AUROC and the localisation head's validation pointing game at
that epoch (when logged), training minutes (sum of epoch times on this 2-core CPU), and, when
`python -m model.evaluate --split val --out RUN/eval-val-<data>` has scored the run's best.pt, the
group-bootstrap 95% CI of the validation AUROC. Run settings come from RUN/args.json.
Writes OUT.json and OUT.md.
"""
import csv
import json
from pathlib import Path

from model.common import REPORT_DIR, command_parser


def run_row(run: Path) -> dict | None:
    log = run / "log.csv"
    if not log.is_file() or not (run / "summary.json").is_file() or not (run / "args.json").is_file():
        return None  # unfinished
    epochs = list(csv.DictReader(open(log)))
    best = max(epochs, key=lambda r: float(r["val_auroc"]))
    cfg = json.loads((run / "args.json").read_text())
    ev = {}
    for name in ("fracatlas", "multiregion"):
        f = run / f"eval-val-{name}" / "metrics.json"
        if f.is_file():
            m = json.loads(f.read_text())
            ev[name] = {"auroc": m["auroc"], "ci95": m["auroc_ci95"], "n": m["n"], "n_fractured": m["n_fractured"]}

    def num(key):
        v = best.get(key, "")
        return float(v) if v not in ("", None) else None

    return {
        "run": run.name, "arch": cfg["arch"], "img_size": cfg["img_size"], "init": cfg.get("weights") or "random",
        "box_supervision": float(cfg.get("loc_weight", 0) or 0) > 0,
        "data": "+".join(Path(d).name for d in cfg["data"]), "lr": cfg["lr"], "weight_decay": cfg["weight_decay"],
        "epochs": len(epochs), "best_epoch": int(best["epoch"]),
        "val_auroc": float(best["val_auroc"]), "val_ap": float(best["val_ap"]),
        "val_auroc_tta": num("val_auroc_tta"), "val_pointing_game_head": num("val_point"),
        "train_minutes": round(sum(float(r["seconds"]) for r in epochs) / 60, 1), "val_eval": ev,
    }


def ci(r, name):
    e = r["val_eval"].get(name)
    return "" if not e else f"{e['auroc']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"


def main(argv=None):
    ap = command_parser(__spec__, __doc__)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=str(REPORT_DIR / "comparison_pretrained"))
    args = ap.parse_args(argv)
    rows = [r for r in (run_row(Path(p)) for p in args.runs) if r]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| architecture | input px | init | box head | training data | epochs | best epoch "
             "| FracAtlas val AUROC [95% CI] | with flip TTA | val AP | head pointing game (val) "
             "| train minutes (2-core CPU) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fa = ci(r, "fracatlas") or f"{r['val_auroc']:.3f}"
        lines.append(f"| {r['arch']} | {r['img_size']} | {r['init']} | {'yes' if r['box_supervision'] else 'no'} "
                     f"| {r['data']} | {r['epochs']} | {r['best_epoch']} | {fa} | {fmt(r['val_auroc_tta'])} "
                     f"| {r['val_ap']:.3f} | {fmt(r['val_pointing_game_head'])} | {r['train_minutes']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
