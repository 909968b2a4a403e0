"""Choose the three example X-rays the app offers, by a written rule, from the FracAtlas TEST split.

    python -m scripts.choose_examples --data ../shared/data/fracatlas [--write]

The examples show what the tool does; they are not used to train, choose or measure anything (the model,
its calibration and its threshold are fixed before this runs). The rule (also in
assets/examples/ATTRIBUTION.md; tests/test_shipped_model.py re-checks it against the shipped model):

1. **clear fracture**: among fractured test images with a fracture box, no hardware and one body region,
   the most probable one whose most confident localisation box contains the centre of a fracture box
   (the model points at the fracture) and that is "Fracture suspected" at every slider position
   (probability at or above the threshold of the lowest target, 80%);
2. **normal**: among non-fractured test images without hardware, of one body region other than the first
   example's, the least probable: "No fracture detected" at the default target (and at every slider
   position);
3. **borderline**: among fractured test images without hardware, the least probable one that is still
   "Fracture suspected" at the default target: its decision is borderline, and moving the slider down
   (a lower target recall, a higher threshold) turns it into "No fracture detected".

Every example must pass the X-ray check. --write copies the three (decoded from the data set's JPEG and
re-encoded losslessly as 8-bit grayscale PNG, named fracatlas_<id>_<label>_<region>.png) to
assets/examples/, removes the previous ones and writes assets/examples/examples.json (role -> file, with the
probabilities at the time). Without --write it prints the choice.
"""

from __future__ import annotations

import json
import sys

from model.common import EXAMPLES_DIR, SHARED_DIR, add_bundle_args, command_parser, file_sha256, resolve_bundle

ROLES = ("clear fracture", "normal", "borderline")
ATTRIBUTION = """# Example X-rays

Three radiographs from the **test split** of the project's grouped FracAtlas split
(`assets/splits/fracatlas.csv`; the test split is never used to train or to choose anything about the model,
its calibration or its threshold). They are chosen to show what the tool does, by this rule, applied by
`python -m scripts.choose_examples --write` after the model and its calibration were fixed, to the test
images without orthopaedic hardware, of one body region, that pass the X-ray check:

1. **clear fracture**: the most probable fractured image with a fracture box whose most confident
   localisation box contains the centre of a fracture box, and that is "Fracture suspected" at every
   slider position (at or above the threshold of the lowest target, 80%);
2. **normal**: the least probable non-fractured image of another body region than the first: "No fracture
   detected" at the default target and at every slider position;
3. **borderline**: the least probable fractured image that is still "Fracture suspected" at the default
   target, with its decision borderline (within a factor 2 of the threshold in odds): moving the slider down
   to a lower target recall turns it into "No fracture detected" (a missed fracture: what a lower target
   costs).

`tests/test_shipped_model.py` re-checks all three against the shipped model (the normal one stays below the
default threshold, the borderline one flips on the slider). `examples.json` records the choice with the
probabilities at the time.

| role | file | FracAtlas image | label | at the default target (model {sha}) |
|---|---|---|---|---|
{table}

Source: FracAtlas, Abedeen I., Rahman M. A., Prottyasha F. Z., Ahmed T., Chowdhury T. M., Shatabda S.,
"FracAtlas: A Dataset for Fracture Classification, Localization and Segmentation of Musculoskeletal
Radiographs", *Scientific Data* 10, 521 (2023), doi:10.1038/s41597-023-02432-4; data
doi:10.6084/m9.figshare.22363012. Licence: **CC BY 4.0** (https://creativecommons.org/licenses/by/4.0/).

Changes: the project's copy of the data set stores the images as 8-bit grayscale JPEG (quality 90,
longer side at most 512 px); these files were decoded from that copy and re-encoded losslessly as
8-bit grayscale PNG. Nothing else was changed.
"""


def region_of(sample) -> str | None:
    from model.data import REGIONS

    if sample.regions is None or sum(sample.regions) != 1:
        return None
    return REGIONS[list(sample.regions).index(1)]


def main(argv=None) -> int:
    from app.handlers import RECALL_MAX, RECALL_MIN  # the page's slider range
    from model.boxes import point_in_boxes, read_coco_boxes
    from model.common import setup_cpu_threads
    from model.inference import Predictor
    from model.preprocess import decode_image
    from model.splits import samples_by_split

    ap = command_parser(__spec__, __doc__)
    ap.add_argument("--data", action="append", default=None,
                    help="the FracAtlas root (default ../shared/data/fracatlas; one root)")
    add_bundle_args(ap, ("model",))
    ap.add_argument("--write", action="store_true", help="replace assets/examples/ with the choice")
    ap.add_argument("--threads", type=int, default=2)
    args = resolve_bundle(ap.parse_args(argv))
    if args.data and len(args.data) > 1:
        ap.error("--data: give one data root (the FracAtlas test split the examples come from)")
    args.data = args.data[0] if args.data else str(SHARED_DIR / "data" / "fracatlas")
    setup_cpu_threads(args.threads)
    by_split, _ = samples_by_split([args.data], create=False)
    test = [s for s in by_split["test"] if not s.flags.get("hardware") and region_of(s)]
    boxes = read_coco_boxes(args.data)
    p = Predictor(args.model)
    thr_low = p.decide(0.5, RECALL_MIN)["threshold"]  # the highest threshold on the slider
    thr_default = p.decide(0.5, p.default_target)["threshold"]
    thr_high = p.decide(0.5, RECALL_MAX)["threshold"]
    scored = []
    for s in test:
        r = p.predict(s.path, cam_method=None)
        if r["is_xray"]:
            scored.append((s, r))
    print(f"{len(scored)} test images without hardware, of one region, passing the X-ray check; thresholds "
          f"{thr_low:.4f} (target {RECALL_MIN}), {thr_default:.4f} (default), {thr_high:.4f} (target {RECALL_MAX})")

    def points(s, r) -> bool:
        gt = boxes.get(s.path.name)
        if gt is None or not r["boxes"]:
            return False
        x0, y0, x1, y1 = r["boxes"][0][:4]
        return any(point_in_boxes((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, [[x0, y0, x1, y1]]) for b in gt)

    clear = [(s, r) for s, r in scored if s.label == 1 and s.path.name in boxes and r["probability"] >= thr_low
             and points(s, r)]
    clear.sort(key=lambda t: -t[1]["probability"])
    if not clear:
        print("no clear fracture meets the rule", file=sys.stderr)
        return 1
    first = clear[0]
    normal = [(s, r) for s, r in scored if s.label == 0 and region_of(s) != region_of(first[0])
              and r["probability"] < thr_high]
    normal.sort(key=lambda t: t[1]["probability"])
    border = [(s, r) for s, r in scored if s.label == 1 and thr_default <= r["probability"] < thr_low
              and r["strength"] == "borderline"]
    border.sort(key=lambda t: t[1]["probability"])
    if not normal or not border:
        print("no normal or no borderline image meets the rule", file=sys.stderr)
        return 1
    chosen = {"clear fracture": first, "normal": normal[0], "borderline": border[0]}
    out = {"rule": "scripts/choose_examples.py (see assets/examples/ATTRIBUTION.md)",
           "model_sha256": file_sha256(args.model), "examples": {}}
    for role, (s, r) in chosen.items():
        label = "fractured" if s.label else "not_fractured"
        name = f"fracatlas_{s.path.stem}_{label}_{region_of(s)}.png"
        out["examples"][role] = {"file": name, "fracatlas_image": s.path.name, "label": label,
                                 "region": region_of(s), "probability": round(float(r["probability"]), 4),
                                 "decision_at_default": r["decision_text"]}
        print(f"{role:15s} {name}  p={r['probability']:.4f}  {r['decision_text']}")
    if args.write:
        for old in EXAMPLES_DIR.glob("fracatlas_*.png"):
            old.unlink()
        for role, (s, _) in chosen.items():
            decode_image(s.path).convert("L").save(EXAMPLES_DIR / out["examples"][role]["file"], optimize=True)
        (EXAMPLES_DIR / "examples.json").write_text(json.dumps(out, indent=2) + "\n")
        rows = [f"| {role} | {e['file']} | {e['fracatlas_image']} | {e['label'].replace('_', ' ')} ({e['region']}) | "
                f"{100 * e['probability']:.1f}%, {e['decision_at_default']} |" for role, e in out["examples"].items()]
        (EXAMPLES_DIR / "ATTRIBUTION.md").write_text(
            ATTRIBUTION.format(table="\n".join(rows), sha=out["model_sha256"][:12]))
        print(f"written to {EXAMPLES_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
