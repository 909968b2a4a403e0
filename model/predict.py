"""Score X-ray images from the command line.

    python -m model.predict IMAGE... [--json] [--target-recall R] [--cam-dir DIR] [--model PATH]

Plain output: one line per image. --json: a JSON list with one object per image (file, probability,
raw_probability, decision, threshold, target_recall, expected_specificity, is_xray, xray_score,
xray_reason, region; `error` for files that cannot be read, which never stop the batch).
--cam-dir DIR also writes each Grad-CAM overlay as DIR/<name>_cam.png.
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
             "region", "operating_note")


def _plain(v):
    if isinstance(v, float):
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if hasattr(v, "item"):
        return _plain(v.item())
    return v


def main(argv=None) -> int:
    from model.inference import Predictor, setup_cpu_threads
    from model.preprocess import ImageError
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    if args.target_recall is not None and not 0.0 < args.target_recall < 1.0:
        ap.error("--target-recall must lie strictly between 0 and 1")
    if args.cam_dir:
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
        from model.gradcam import overlay
    rows, n_err = [], 0
    for f in args.images:
        try:
            r = p.predict(f, target_recall=args.target_recall, cam_method=args.cam_method if cam_dir else None)
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
            overlay(r["gray"], r["cam"], alpha=args.alpha).save(out)
            row["cam_png"] = str(out)
        rows.append(row)
        if not args.json:
            warn = "" if r["is_xray"] else f"  [WARNING not an X-ray? {r['xray_reason']}; result unreliable]"
            print(f"{f}: {r['decision']} (p={r['probability']:.3f}, threshold {r['threshold']:.3f}, "
                  f"region {r['region']}){warn}")
    if args.json:
        print(json.dumps(rows, indent=2))
    p.close()
    return 1 if n_err == len(args.images) else 0


if __name__ == "__main__":
    sys.exit(main())
