"""Score X-ray images from the command line: single files, or whole folder trees as a worklist.

    python -m model.predict IMAGE... [--json] [--target-recall R] [--cam-dir DIR] [--bundle DIR] [--model PATH]
    python -m model.predict DIR [DIR...] --csv worklist.csv [--target-recall R]
    python -m model.predict DIR [DIR...] --csv worklist.csv --ray [local|auto|ADDRESS] [--actors N]

A folder is searched recursively for PNG, JPEG and DICOM files (.png, .jpg, .jpeg, .dcm, .dicom, and files
without an extension that carry the DICOM preamble); hidden files and folders are skipped.
--csv FILE writes the worklist: one row per file, sorted by fracture probability (highest first), then
the images that failed the X-ray check ("Not assessed"), then the files that could not be read; a
progress bar runs on stderr. Grad-CAM is skipped in --csv mode unless --cam-dir is given.

Plain output: one line per image. --json: a JSON list with one object per image (file, probability,
raw_probability, decision, threshold, target_recall, expected_specificity, is_xray, xray_score,
xray_reason, region, cam_peak, loc_peak, boxes, strength ("borderline" or "clear", see model/decision.py),
decision_text, inverted (the film looked like a negative and was analysed as its negative) and
inverted_note; `error` for files that cannot be read, which never stop the batch). cam_peak and loc_peak
are [x, y] of the Grad-CAM's and the fracture map's maximum and boxes are the localisation head's
[[x0, y0, x1, y1, score], ...] (most confident first), all in the image's own pixels.
An image that fails the X-ray check is "Not assessed": its probability, region, peaks and boxes are
withheld (null) unless --reveal is given. --cam-dir DIR also writes each Grad-CAM overlay (drawn as the
app draws it, with its colour bar, and the boxes when a fracture is suspected) as DIR/<name>_cam.png.

--ray: the same files, rows, values and order, scored by a Ray Data actor pool (model/cluster.py; needs
`pip install -r requirements-scale.txt`): Ray reads the files, each actor holds one Predictor with one torch
thread (--threads), --actors N of them (default: the cluster's CPUs). `--ray` alone starts a private Ray on
this machine for the command and removes its temp folder afterwards; `--ray auto` / `--ray ADDRESS` use a
running cluster, whose nodes must all read the files and the model at the same paths. Without --ray, Ray is
not imported.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from model.cluster import ACTOR_THREADS, THREADS
from model.common import add_bundle_args, command_parser, plain, prob_text, resolve_bundle
from model.drawing import DEFAULT_OPACITY

log = logging.getLogger("model.predict")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}
CSV_COLUMNS = ("rank", "file", "probability", "decision", "threshold", "target_recall", "expected_specificity",
               "region", "is_xray", "xray_reason", "error")
JSON_KEYS = ("file", "probability", "raw_probability", "decision", "is_fracture", "threshold", "target_recall",
             "expected_specificity", "expected_precision", "achievable", "is_xray", "xray_score", "xray_reason",
             "region", "operating_note", "cam_peak", "loc_peak", "boxes", "strength", "decision_text", "inverted",
             "inverted_note", "straightened", "straightened_note")


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def find_images(paths: list[str]) -> list[tuple[str, str]]:
    """(path, name to report) for every file given and every image file under every folder given; the
    name is relative to the folder it was found in (with the folder's own name in front)."""
    out = []
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            out.append((given, given))
            continue
        for f in sorted(root.rglob("*")):
            rel = f.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or not f.is_file():
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES or (f.suffix == "" and _looks_like_dicom(f)):
                out.append((str(f), (Path(root.name) / rel).as_posix() if root.name else rel.as_posix()))
    return out


def worklist_order(rows: list[dict]) -> list[dict]:
    """Assessed images by probability (highest first), then "Not assessed" ones, then unreadable files;
    ties keep the input order."""
    def key(r: dict):
        if r.get("error"):
            return (2, 0.0)
        if not r.get("is_xray") or r.get("probability") is None:
            return (1, 0.0)
        return (0, -float(r["probability"]))

    return sorted(rows, key=key)


def write_csv(path: str | Path, rows: list[dict]) -> None:
    import csv

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for i, r in enumerate(worklist_order(rows), 1):
            w.writerow({**{k: "" if r.get(k) is None else r.get(k) for k in CSV_COLUMNS}, "rank": i})


def cam_path(cam_dir: Path, path: str, name: str) -> Path:
    """Where --cam-dir puts a file's overlay: a file given by name: <stem>_cam.png; one found in a folder:
    its relative path with '/' -> '__'."""
    stem = Path(path).stem if name == path else Path(name).with_suffix("").as_posix().replace("/", "__")
    return cam_dir / f"{stem}_cam.png"


def score(p, source, name: str, target_recall: float | None, cam_method: str | None, reveal: bool,
          cam_png: str | None = None, alpha: float = DEFAULT_OPACITY, cam_shown: str | None = None) -> dict:
    """One file's row (JSON_KEYS; "error" and nothing else for a file that cannot be read or decoded).
    cam_png: also write the Grad-CAM overlay there (as the app draws it, with its colour bar, and the boxes
    when a fracture is suspected); the row's cam_png is cam_shown (default: that path)."""
    from model.preprocess import source_error

    try:
        r = p.predict(source, target_recall=target_recall, cam_method=cam_method, reveal=reveal)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a row with its reason
        msg = source_error(exc)
        if msg is None:
            raise
        return {"file": name, "error": msg}
    row = {"file": name, **{k: plain(r.get(k), digits=6) for k in JSON_KEYS if k != "file"}}
    if cam_png and r.get("cam") is not None:
        from model.drawing import RELATIVE, render

        # the boxes (original pixels) on the returned image (<= 2048 px), drawn as the page draws them
        k = (r["gray"].size[0] / r["image_size"][0], r["gray"].size[1] / r["image_size"][1])
        boxes = [[b[0] * k[0], b[1] * k[1], b[2] * k[0], b[3] * k[1], *b[4:]] for b in r["boxes"]]
        boxes = boxes if r.get("is_fracture") else []
        render(r["gray"], r["cam"], RELATIVE, opacity=alpha, boxes=boxes, outline=True).save(cam_png)
        row["cam_png"] = cam_shown or cam_png
    return row


def line(row: dict) -> str:
    """The plain output's line for one row."""
    name = row["file"]
    if row.get("error"):
        return f"{name}: ERROR {row['error']}"
    if not row["is_xray"]:
        prob = "" if row["probability"] is None else f" (withheld p {prob_text(row['probability'])})"
        return f"{name}: {row['decision']}: {row['xray_reason']}{prob}"
    where = f", peak at {row['cam_peak']}" if row.get("cam_peak") else ""
    note = f"; {row['inverted_note']}" if row.get("inverted") else ""
    note += f"; {row['straightened_note']}" if row.get("straightened") else ""
    return (f"{name}: {row['decision_text']} (p {prob_text(row['probability'])}, "
            f"threshold {prob_text(row['threshold'])}, region {row['region']}{where}){note}")


class ScoreActor:
    """One Predictor in a Ray Data actor (--ray): scores a batch of read files (model.cluster.read_file) into
    JSON rows, exactly as the single process does."""

    def __init__(self, model: str, calibration: str, xray_check: str, threads: int, options: dict):
        from model.cluster import quiet_worker
        from model.common import setup_cpu_threads
        from model.inference import Predictor

        quiet_worker()
        setup_cpu_threads(threads)
        self.p = Predictor(model, calibration, xray_check)
        self.options = options

    def __call__(self, batch: dict) -> dict:
        out = []
        for name, data, error, cam_png, cam_shown in zip(batch["name"], batch["data"], batch["error"],
                                                         batch["cam_png"], batch["cam_shown"]):
            # (a column of Nones may arrive as NaNs: only a string is a read error or an overlay path)
            row = {"file": str(name), "error": error} if isinstance(error, str) else \
                score(self.p, bytes(data), str(name), cam_png=cam_png if isinstance(cam_png, str) and cam_png
                      else None, cam_shown=str(cam_shown), **self.options)
            out.append(json.dumps(row))
        return {"json": out}


def main(argv=None) -> int:
    from model.cluster import add_ray_args

    ap = command_parser(__spec__, __doc__)
    ap.add_argument("images", nargs="+", help="PNG, JPEG or DICOM files, or folders (searched recursively)")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of text lines")
    ap.add_argument("--csv", default=None, metavar="FILE",
                    help="write the worklist (sorted by probability) to FILE instead of printing lines")
    ap.add_argument("--target-recall", type=float, default=None,
                    help="operating point (target sensitivity); default: the calibration's default")
    ap.add_argument("--cam-dir", default=None, help="write a Grad-CAM overlay PNG per image here")
    ap.add_argument("--cam-method", default="gradcam", help="gradcam, gradcam++, eigencam, ... (with --cam-dir)")
    ap.add_argument("--alpha", type=float, default=DEFAULT_OPACITY,
                    help=f"heatmap opacity where it is highest (with --cam-dir; default {DEFAULT_OPACITY})")
    add_bundle_args(ap)
    ap.add_argument("--threads", type=int, default=None,
                    help=f"torch threads (default {THREADS}; with --ray: per actor, default {ACTOR_THREADS})")
    ap.add_argument("--no-cam", action="store_true", help="skip Grad-CAM (no cam_peak; a little faster)")
    ap.add_argument("--reveal", action="store_true",
                    help="also print the probability of images that fail the X-ray check")
    add_ray_args(ap)
    args = resolve_bundle(ap.parse_args(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    if args.target_recall is not None and not 0.0 < args.target_recall < 1.0:
        ap.error("--target-recall must lie strictly between 0 and 1")
    if args.actors is not None and (args.ray is None or args.actors < 1):
        ap.error("--actors needs --ray and at least 1")
    if args.cam_dir or not args.no_cam:
        from model.gradcam import method_name

        try:
            args.cam_method = method_name(args.cam_method)
        except ValueError as exc:
            ap.error(str(exc))
    if not Path(args.model).is_file():
        print(f"error: model file not found: {args.model}", file=sys.stderr)
        return 2
    files = find_images(args.images)
    if not files:
        print("error: no PNG, JPEG or DICOM files found in the folders given", file=sys.stderr)
        return 2
    cam_dir = Path(args.cam_dir) if args.cam_dir else None
    if cam_dir:
        cam_dir.mkdir(parents=True, exist_ok=True)
    options = score_options(args, cam_dir)
    quiet = bool(args.json or args.csv)
    rows = []
    for row in (score_on_ray(files, args, options, cam_dir) if args.ray else score_here(files, args, options, cam_dir)):
        rows.append(row)
        if not quiet:
            print(line(row))
    n_err = sum(1 for r in rows if r.get("error"))
    if args.csv:
        write_csv(args.csv, rows)
        n_flag = sum(1 for r in rows if r.get("is_fracture"))
        n_na = sum(1 for r in rows if not r.get("error") and not r.get("is_xray"))
        print(f"{len(rows)} files: {n_flag} fracture suspected, {len(rows) - n_flag - n_na - n_err} no fracture "
              f"detected, {n_na} not assessed (not an X-ray), {n_err} unreadable; worklist written to {args.csv}",
              file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 1 if n_err == len(files) else 0


def score_options(args, cam_dir: Path | None) -> dict:
    """score()'s keyword options from the command's flags: no Grad-CAM for --no-cam or a --csv worklist unless
    --cam-dir asks for the overlays."""
    return {"target_recall": args.target_recall, "reveal": args.reveal, "alpha": args.alpha,
            "cam_method": None if (args.no_cam or args.csv) and not cam_dir else args.cam_method}


def score_here(files, args, options: dict, cam_dir: Path | None):
    """The rows of `files`, scored in this process (a progress bar on stderr with --csv)."""
    from tqdm import tqdm

    from model.common import setup_cpu_threads
    from model.inference import Predictor

    setup_cpu_threads(args.threads or THREADS)
    with Predictor(args.model, args.calibration, args.xray_check) as p:
        for f, name in tqdm(files, desc="scoring", unit="image", file=sys.stderr, disable=not args.csv,
                            mininterval=1):
            yield score(p, f, name, cam_png=str(cam_path(cam_dir, f, name)) if cam_dir else None, **options)


def score_on_ray(files, args, options: dict, cam_dir: Path | None):
    """The rows of `files`, scored by a Ray Data actor pool (model/cluster.py), in the same order and with
    the same values as score_here."""
    from model.cluster import RaySession, absolute, read_file, run_pool

    # the actors write the overlays at absolute paths (their working folder is not ours); rows name them as here
    cams = [str(cam_path(cam_dir, f, name)) if cam_dir else "" for f, name in files]
    items = [{"path": absolute(f), "name": name, "cam_png": absolute(cam) if cam else "", "cam_shown": cam}
             for (f, name), cam in zip(files, cams)]
    kwargs = {"model": absolute(args.model), "calibration": absolute(args.calibration),
              "xray_check": absolute(args.xray_check), "threads": args.threads or ACTOR_THREADS, "options": options}
    with RaySession(args.ray) as session:
        n = session.actors(args.actors)
        log.info("scoring %d file(s) on Ray with %d actor(s)", len(items), n)
        yield from run_pool(items, ScoreActor, kwargs, n, read=read_file, progress="scoring" if args.csv else None)


if __name__ == "__main__":
    sys.exit(main())
