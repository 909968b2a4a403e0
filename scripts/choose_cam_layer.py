"""Choose the Grad-CAM layer on the VALIDATION split (the test split is not read).

    python -m scripts.choose_cam_layer --model runs/RUN/best.pt --data ../shared/data/fracatlas
    python -m scripts.ship_model runs/RUN --cam-layer CHOSEN     # then record it in the model file

For each candidate layer, scripts.eval_cam --split val measures how often the Grad-CAM maximum lies in a
fracture box (pointing game) of the boxed validation fractures, and how much of the map's mass lies in the
boxes. The layer with the highest pointing game is chosen (ties: the higher energy in the boxes). Writes
OUT/val_layer_choice.md and OUT/val_layer_choice.json (default assets/report/cam/) and prints the choice.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from model.common import REPORT_DIR, command_parser, shown

LAYERS = ("backbone.bn2", "backbone.blocks.5", "backbone.blocks.4", "backbone.blocks.3")
GRADCAM = "gradcam (trained)"


def choose(results: dict[str, dict]) -> str:
    """The layer whose validation Grad-CAM points into a fracture box most often; ties: energy in boxes."""
    def key(layer):
        g = results[layer]["localisation"][GRADCAM]
        return g["pointing_game"], g["energy_in_boxes"]

    return max(results, key=key)


def markdown(results: dict[str, dict], chosen: str, command: str) -> str:
    any_res = next(iter(results.values()))
    lines = [f"# Grad-CAM layer, chosen on the VALIDATION split ({any_res['n_images']} boxed fractures; the test "
             "split was not read)", "", f"`{command}` (model `{any_res['model']}`, sha256 "
             f"{any_res['model_sha256'][:12]}...; each layer through `scripts.eval_cam --split val --methods gradcam`)",
             "", "| layer | Grad-CAM pointing game (95% CI) | Grad-CAM energy in boxes (95% CI) |", "|---|---|---|"]
    for layer, res in results.items():
        g = res["localisation"][GRADCAM]
        pc, ec = g["pointing_game_ci95"], g["energy_in_boxes_ci95"]
        lines.append(f"| {layer}{' (chosen)' if layer == chosen else ''} | {g['pointing_game']:.3f} "
                     f"({pc[0]:.2f}-{pc[1]:.2f}) | {g['energy_in_boxes']:.3f} ({ec[0]:.2f}-{ec[1]:.2f}) |")
    lines += ["", "The same validation images, maps that do not depend on the layer:", "",
              "| map | pointing game (95% CI) |", "|---|---|"]
    for name, g in any_res["localisation"].items():
        if name != GRADCAM:
            pc = g["pointing_game_ci95"]
            lines.append(f"| {name} | {g['pointing_game']:.3f} ({pc[0]:.2f}-{pc[1]:.2f}) |")
    lines += ["", f"Mean box area fraction (what a uniform map puts inside the boxes): "
              f"{any_res['mean_box_area_fraction']:.3f}.", "",
              f"Chosen: **{chosen}** (highest Grad-CAM pointing game on validation; ties: energy in boxes). The "
              "random-init row is the Grad-CAM of an untrained network on the last layer measured.", ""]
    return "\n".join(lines)


def main(argv=None) -> str:
    from scripts import eval_cam

    ap = command_parser(__spec__, __doc__)
    ap.add_argument("--model", required=True, help="model file (e.g. a run's best.pt)")
    ap.add_argument("--data", default=None, help="the FracAtlas root with its fracture boxes (eval_cam's default)")
    ap.add_argument("--splits-dir", default=None, help="eval_cam's (default: the committed splits)")
    ap.add_argument("--layers", nargs="+", default=list(LAYERS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPORT_DIR / "cam"))
    args = ap.parse_args(argv)
    results = {}
    extra = (["--data", args.data] if args.data else []) + (
        ["--splits-dir", args.splits_dir] if args.splits_dir else [])
    with tempfile.TemporaryDirectory() as tmp:
        for layer in args.layers:
            results[layer] = eval_cam.main(["--model", args.model, "--split", "val", "--cam-layer", layer,
                                            "--methods", "gradcam", "--road-n", "0", "--memory-calls", "0",
                                            "--threads", str(args.threads), "--out", str(Path(tmp) / layer)]
                                           + extra)
    chosen = choose(results)
    command = ("python -m scripts.choose_cam_layer --model " + shown(args.model)
               + (f" --data {args.data}" if args.data else "") + " --layers " + " ".join(args.layers))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "val_layer_choice.md").write_text(markdown(results, chosen, command))
    (out / "val_layer_choice.json").write_text(json.dumps(
        {"command": command, "chosen": chosen, "model_sha256": next(iter(results.values()))["model_sha256"],
         "layers": {k: v["localisation"][GRADCAM] for k, v in results.items()}}, indent=2))
    print(chosen)
    return chosen


if __name__ == "__main__":
    main()
