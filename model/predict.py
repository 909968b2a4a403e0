"""Score X-ray images from the command line.

    python -m model.predict IMAGE... [--json] [--target-recall R] [--cam-dir DIR] [--model PATH]

Plain output: one line per image. --json: a JSON list with one object per image (file, probability,
raw_probability, decision, threshold, target_recall, expected_specificity, is_xray, xray_score,
xray_reason, region, cam_peak, boxes; `error` for files that cannot be read, which never stop the batch).
cam_peak is [x, y] of the Grad-CAM's maximum and boxes are the localisation head's
[[x0, y0, x1, y1, score], ...] (most confident first), both in the image's own pixels.
An image that fails the X-ray check is "Not assessed": its probability is withheld (null) unless
--reveal is given. --cam-dir DIR also writes each Grad-CAM overlay (with the boxes) as DIR/<name>_cam.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

JSON_KEYS = ("file", "probability", "raw_probability", "decision", "is_fracture", "threshold", "target_recall",
             "expected_specificity", "expected_precision", "achievable", "is_xray", "xray_score", "xray_reason",
             "region", "operating_note", "cam_peak", "boxes")


def _plain(v):
    if isinstance(v, float):
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if hasattr(v, "item"):
        return _plain(v.item())
    return v


def main(argv=None) -> int:
    from model.inference import Predictor
    from model.preprocess import ImageError
    from model.scoring import setup_cpu_threads
    from model.xray_check import DEFAULT_PATH as XRAY_PATH

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="PNG, JPEG or DICOM files")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of text lines")
    ap.add_argument("--target-recall", type=float, default=None,
                    help="operating point (target sensitivity); default: the calibration's default")
    ap.add_argument("--cam-dir", default=None, help="write a Grad-CAM overlay PNG per image here")
    ap.add_argument("--cam-method", default="gradcam", help="gradcam, gradcam++, eigencam, ... (with --cam-dir)")
    ap.add_argument("--alpha", type=float, default=0.4, help="overlay opacity (with --cam-dir)")
    ap.add_argument("--model", default="assets/model.pt")
    ap.add_argument("--calibration", default="assets/calibration.json")
    ap.add_argument("--xray-check", default=str(XRAY_PATH))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-cam", action="store_true", help="skip Grad-CAM (no cam_peak; a little faster)")
    ap.add_argument("--reveal", action="store_true",
                    help="also print the probability of images that fail the X-ray check")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    if args.target_recall is not None and not 0.0 < args.target_recall < 1.0:
        ap.error("--target-recall must lie strictly between 0 and 1")
    if args.cam_dir or not args.no_cam:
        from model.gradcam import method_name

        try:
            args.cam_method = method_name(args.cam_method)
        except ValueError as exc:
            ap.error(str(exc))
    setup_cpu_threads(args.threads)
    if not Path(args.model).is_file():
        print(f"error: model file not found: {args.model}", file=sys.stderr)
        return 2
    p = Predictor(args.model, args.calibration, args.xray_check)
    cam_dir = Path(args.cam_dir) if args.cam_dir else None
    if cam_dir:
        cam_dir.mkdir(parents=True, exist_ok=True)
        from model.gradcam import draw_boxes, overlay
    rows, n_err = [], 0
    for f in args.images:
        try:
            r = p.predict(f, target_recall=args.target_recall, cam_method=None if args.no_cam and not cam_dir
                          else args.cam_method, reveal=args.reveal)
        except (ImageError, OSError) as exc:
            n_err += 1
            msg = str(exc) if isinstance(exc, ImageError) else f"could not read the file ({type(exc).__name__})"
            rows.append({"file": f, "error": msg})
            if not args.json:
                print(f"{f}: ERROR {msg}")
            continue
        row = {k: _plain(r.get(k)) for k in JSON_KEYS if k != "file"}
        row = {"file": f, **row}
        if cam_dir and r.get("cam") is not None:
            out = cam_dir / f"{Path(f).stem}_cam.png"
            draw_boxes(overlay(r["gray"], r["cam"], alpha=args.alpha), r["boxes"]).save(out)
            row["cam_png"] = str(out)
        rows.append(row)
        if not args.json:
            if not r["is_xray"]:
                prob = "" if r["probability"] is None else f" (withheld p={r['probability']:.3f})"
                print(f"{f}: {r['decision']}: {r['xray_reason']}{prob}")
                continue
            where = f", peak at {r['cam_peak']}" if r.get("cam_peak") else ""
            print(f"{f}: {r['decision']} (p={r['probability']:.3f}, threshold {r['threshold']:.3f}, "
                  f"region {r['region']}{where})")
    if args.json:
        print(json.dumps(rows, indent=2))
    p.close()
    return 1 if n_err == len(args.images) else 0


if __name__ == "__main__":
    sys.exit(main())
