"""Does the Grad-CAM land on the fracture? And does the Predictor leak memory over many CAM calls?

    python -m scripts.eval_cam --model assets/model.pt --data ../shared/data/fracatlas --out assets/report/cam

On the FracAtlas TEST images that carry fracture boxes (annotations/COCO_fracture_masks_512.json, boxes in
stored-image pixels), using the CAM the Predictor returns (original image geometry, letterbox removed):
  pointing game   the CAM maximum lies inside a fracture box (a 5 px tolerance, as usual for the metric)
  energy in box   the fraction of the CAM's total mass that lies inside the boxes
The same for the localisation head's heatmap when the model has one (model file meta "loc_head"),
and for its most confident box ("top box": its centre inside a fracture box, same tolerance).
Baselines: a centre Gaussian map (the "fractures are near the middle" prior) and the box-area fraction
(what a uniform map puts in the boxes). pytorch-grad-cam's ROAD metric (ROADCombined: (LeRF - MoRF) / 2
of the fracture logit after imputing pixels, higher = the map ranks pixels by their effect on the logit)
is computed on a subset against a random smooth map. Sanity check: the same CAM from a randomly
initialised network of the same architecture must score worse.
--memory-calls N runs N Predictor.predict() calls with Grad-CAM on one image and records the RSS.
Nothing here chooses anything: it only measures (the test split is used for reporting only).
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.boxes import read_coco_boxes
from model.common import REPORT_DIR, SHARED_DIR, SPLITS_DIR, add_bundle_args, command_parser, resolve_bundle, shown

ROOT = Path(__file__).resolve().parent.parent

from model.metrics import (  # noqa: E402
    POINT_TOLERANCE,
    bootstrap_means,
    localisation,
    localisation_point,
    summarise,
)

log = logging.getLogger("eval_cam")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def boxed_test_images(root: Path, splits_dir: Path, split: str = "test") -> list[tuple[Path, np.ndarray]]:
    """(image path, its (K, 4) [x0, y0, x1, y1] fracture boxes) for each fractured image of the split."""
    import pandas as pd

    boxes = read_coco_boxes(root)
    df = pd.read_csv(splits_dir / f"{root.resolve().name}.csv")
    test = df[(df.split == split) & (df.label == 1)]
    out = []
    for image_id in sorted(test.image_id.astype(str)):
        name = Path(image_id).name
        if name in boxes and (root / image_id).is_file():
            out.append((root / image_id, boxes[name]))
    return out


def centre_gaussian(shape: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-(((xx - (w - 1) / 2) / (sigma * w)) ** 2 + ((yy - (h - 1) / 2) / (sigma * h)) ** 2) / 2).astype(
        np.float32)


def random_smooth(shape: tuple[int, int], rng: np.random.Generator, cells: int = 10) -> np.ndarray:
    """A random map with CAM-like smoothness (a coarse uniform grid, bilinearly upsampled)."""
    h, w = shape
    coarse = rng.random((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BILINEAR))


def to_square(cam: np.ndarray, size: int) -> np.ndarray:
    """An original-geometry map -> the letterboxed (size x size) square (padding = 0)."""
    from model.preprocess import letterbox_geometry

    lb = letterbox_geometry(cam.shape[1], cam.shape[0], size)
    out = np.zeros((size, size), np.float32)
    out[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = np.asarray(
        Image.fromarray(cam.astype(np.float32), mode="F").resize((lb.new_w, lb.new_h), Image.Resampling.BILINEAR))
    return out


class _FractureOnly(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[:, :1]


def road_scores(model, meta, items, maps_by_name, percentiles) -> dict:
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    from model.preprocess import preprocess

    metric = ROADCombined(percentiles=percentiles)
    wrapped = _FractureOnly(model).eval()
    size = int(meta.img_size)
    out = {k: [] for k in maps_by_name}
    for i, (path, _) in enumerate(items):
        prep = preprocess(path, meta)
        x = prep.tensor.unsqueeze(0)
        for name, maps in maps_by_name.items():  # the maps are in the image's orientation; x is in its pose
            film = maps[i] if prep.straight is None else prep.straight.apply_array(maps[i])  # onto the film read
            sq = to_square(prep.pose.apply_array(film), size)[None]
            out[name].append(float(np.ravel(metric(x, sq, [BinaryClassifierOutputTarget(1)], wrapped))[0]))
    return {k: {"n": len(v), "road_combined": round(float(np.mean(v)), 4),
                "road_combined_sd": round(float(np.std(v)), 4)} for k, v in out.items()}


def random_model_file(meta, path: Path, seed: int = 0) -> Path:
    from model.network import FractureNet, save_model

    torch.manual_seed(seed)
    net = FractureNet(meta.arch, n_regions=len(meta.region_names), loc_head=bool(meta.loc_head),
                      polarity_head=bool(meta.polarity_head)).eval()
    save_model(path, net, meta.replace(init="random (untrained sanity check)"))
    return path


def memory_run(predictor, image: Path, calls: int) -> dict:
    marks, t0 = [], time.time()
    predictor.predict(image, cam_method="gradcam")  # warm-up: builds the CAM object, allocator pools
    gc.collect()
    start = rss_mb()
    for i in range(1, calls + 1):
        res = predictor.predict(image, cam_method="gradcam")
        del res
        if i in (1, 10, 50) or i % 100 == 0 or i == calls:
            gc.collect()
            marks.append({"call": i, "rss_mb": round(rss_mb(), 1)})
    hooks = None
    eng = getattr(predictor, "engine", None)
    if eng is not None and hasattr(eng, "n_hooks"):
        hooks = int(eng.n_hooks)
    return {"calls": calls, "image": image.name, "rss_after_warmup_mb": round(start, 1), "marks": marks,
            "growth_mb_first100_to_end": round(marks[-1]["rss_mb"] - next(m["rss_mb"] for m in marks
                                                                          if m["call"] >= min(100, calls)), 1),
            "growth_mb_total": round(marks[-1]["rss_mb"] - start, 1), "hooks_on_cam_layer_after": hooks,
            "seconds_per_call": round((time.time() - t0) / (calls + 1), 3), "torch_threads": torch.get_num_threads()}


def table(res: dict) -> str:
    lines = ["| map | n | pointing game (95% CI) | map energy in boxes (95% CI) |", "|---|---|---|---|"]
    for name, s in res["localisation"].items():
        energy = ("n/a" if s["energy_in_boxes"] is None else f"{s['energy_in_boxes']:.3f} "
                  f"({s['energy_in_boxes_ci95'][0]:.2f}-{s['energy_in_boxes_ci95'][1]:.2f})")
        lines.append(f"| {name} | {s['n']} | {s['pointing_game']:.3f} ({s['pointing_game_ci95'][0]:.2f}-"
                     f"{s['pointing_game_ci95'][1]:.2f}) | {energy} |")
    lines.append(f"\nMean box area fraction (what a uniform map puts inside the boxes): "
                 f"{res['mean_box_area_fraction']:.3f}.")
    if res.get("road"):
        lines += ["", f"ROAD (pytorch-grad-cam ROADCombined, percentiles {res['road_percentiles']}, "
                      "higher = better; fracture logit):", "", "| map | n | ROAD combined (sd) |", "|---|---|---|"]
        for name, s in res["road"].items():
            lines.append(f"| {name} | {s['n']} | {s['road_combined']:+.3f} ({s['road_combined_sd']:.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    from model.common import setup_cpu_threads
    from model.inference import Predictor

    ap = command_parser(__spec__, __doc__)
    add_bundle_args(ap, ("model",))
    ap.add_argument("--data", action="append", default=None,
                    help="the FracAtlas root with its fracture boxes (default ../shared/data/fracatlas; one root)")
    ap.add_argument("--splits-dir", default=str(SPLITS_DIR))
    ap.add_argument("--out", default=str(REPORT_DIR / "cam"))
    ap.add_argument("--methods", default="gradcam,gradcam++,eigencam", help="CAM methods to localise")
    ap.add_argument("--max-images", type=int, default=0, help="0 = all boxed test images")
    ap.add_argument("--road-n", type=int, default=10, help="images for ROAD (slow: a sparse solve per map)")
    ap.add_argument("--road-percentiles", default="50")
    ap.add_argument("--memory-calls", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", default="test", choices=["test", "val"],
                    help="test to report; val to choose (e.g. the CAM layer) without reading test")
    ap.add_argument("--cam-layer", default=None, help="override the model file's Grad-CAM layer")
    args = resolve_bundle(ap.parse_args(argv))
    if args.data and len(args.data) > 1:
        ap.error("--data: give one data root (the one whose fracture boxes are measured)")
    args.data = args.data[0] if args.data else str(SHARED_DIR / "data" / "fracatlas")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    setup_cpu_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from model.common import file_sha256

    items = boxed_test_images(Path(args.data), Path(args.splits_dir), args.split)
    if args.max_images:
        items = items[: args.max_images]
    log.info("%d boxed %s images", len(items), args.split)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    p = Predictor(args.model, calibration_path=None, xray_path=None, cam_layer=args.cam_layer)
    meta = p.meta.replace(cam_layer=p.engine.layer_name)
    rng = np.random.default_rng(0)
    maps: dict[str, list[np.ndarray]] = {f"{m} (trained)": [] for m in methods}
    head, top_boxes = [], []
    t0 = time.time()
    for path, _ in items:
        for m in methods:
            r = p.predict(path, cam_method=m, reveal=True)
            maps[f"{m} (trained)"].append(r["cam"])
            if m == methods[0] and r.get("loc_map") is not None:
                head.append(r["loc_map"])
                top_boxes.append(r["boxes"][0] if r["boxes"] else None)
    if head:
        maps["localisation head (trained)"] = head
    log.info("trained-network maps: %.1fs", time.time() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        rp = Predictor(str(random_model_file(meta, Path(tmp) / "random.pt")), calibration_path=None, xray_path=None)
        maps["gradcam (random-init network)"] = [rp.predict(path, cam_method="gradcam")["cam"] for path, _ in items]
    shapes = [m.shape for m in maps[f"{methods[0]} (trained)"]]
    maps["centre Gaussian (baseline)"] = [centre_gaussian(s) for s in shapes]
    maps["random smooth map (baseline)"] = [random_smooth(s, rng) for s in shapes]
    loc = {}
    for name, ms in maps.items():
        loc[name] = summarise([localisation(m, b) for m, (_, b) in zip(ms, items)])
    if head:
        hits = np.array([b is not None and localisation_point(b, bx) for b, (_, bx) in zip(top_boxes, items)], float)
        loc["localisation head: top box centre in a fracture box"] = {
            "n": len(hits), "pointing_game": round(float(hits.mean()), 4),
            "pointing_game_ci95": bootstrap_means(hits)[0],
            "energy_in_boxes": None, "energy_in_boxes_ci95": None,
            "images_with_a_box": int(sum(b is not None for b in top_boxes))}
    res = {"model": shown(args.model), "model_sha256": file_sha256(args.model), "arch": meta.arch,
           "cam_layer": meta.cam_layer, "data": Path(args.data).resolve().name, "split": args.split,
           "n_images": len(items), "tolerance_px": POINT_TOLERANCE, "localisation": loc,
           "mean_box_area_fraction": round(float(np.mean([localisation(m, b)["area"] for m, (_, b) in
                                                          zip(maps["centre Gaussian (baseline)"], items)])), 4)}
    if args.road_n > 0:
        pct = [int(v) for v in args.road_percentiles.split(",")]
        sub = items[: args.road_n]
        t1 = time.time()
        road_maps = {k: maps[k][: len(sub)] for k in (f"{methods[0]} (trained)", "random smooth map (baseline)")}
        res["road"] = road_scores(p.model, meta, sub, road_maps, pct)
        res["road"].update(road_scores(p.model, meta, sub, {"gradcam (random-init network) on trained logit":
                                                            maps["gradcam (random-init network)"][: len(sub)]},
                                       pct))
        res["road_percentiles"] = pct
        log.info("ROAD: %.1fs", time.time() - t1)
    if args.memory_calls > 0 and items:
        log.info("memory: %d Grad-CAM calls", args.memory_calls)
        res["memory"] = memory_run(p, items[0][0], args.memory_calls)
        (out_dir / "memory.json").write_text(json.dumps(res["memory"], indent=2))
    (out_dir / "cam_eval.json").write_text(json.dumps(res, indent=2))
    md = table(res)
    if "memory" in res:
        m = res["memory"]
        md += (f"\nMemory: {m['calls']} Predictor.predict() calls with Grad-CAM on one image: RSS "
               f"{m['rss_after_warmup_mb']:.0f} MB after warm-up, "
               + ", ".join(f"{k['rss_mb']:.0f} MB at call {k['call']}" for k in m["marks"])
               + f" (growth {m['growth_mb_total']:+.1f} MB; {m['seconds_per_call']:.2f} s per call).\n")
    (out_dir / "cam_eval.md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
