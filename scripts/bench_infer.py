"""Per-image CPU latency of the shipped model (2 threads): preprocessing, network, and the whole
Predictor call with and without Grad-CAM. Writes assets/report/inference_benchmark.json.

    python -m scripts.bench_infer [--model assets/model.pt] [--n 50]
"""
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from model.common import (
    REPORT_DIR,
    SHARED_DIR,
    add_bundle_args,
    command_parser,
    resolve_bundle,
    setup_cpu_threads,
    shown,
)
from model.network import load_model
from model.preprocess import preprocess


def timed(fn, n):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return {"median_ms": round(statistics.median(ts), 1), "p90_ms": round(sorted(ts)[int(0.9 * len(ts)) - 1], 1)}


def main():
    ap = command_parser(__spec__, __doc__)
    add_bundle_args(ap, ("model",))
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPORT_DIR / "inference_benchmark.json"))
    args = resolve_bundle(ap.parse_args())
    setup_cpu_threads(args.threads)
    shared = sorted((SHARED_DIR / "data" / "fracatlas" / "images" / "Fractured").glob("*.jpg"))
    if shared:
        image = shared[0]
    else:
        from model.synthetic import xray_like

        image = Path("/tmp/bench_xray.png")
        xray_like(0, True, size=(373, 454)).save(image)
    model, meta = load_model(args.model)
    x = preprocess(image, meta).tensor
    res = {"model": shown(args.model), "arch": meta.arch, "img_size": meta.img_size, "threads": args.threads,
           "load_average_at_start": [round(x, 2) for x in __import__("os").getloadavg()],
           "cpu": platform.processor() or platform.machine(), "image_pixels": None, "n": args.n}

    def forward():
        with torch.inference_mode():
            model(x.unsqueeze(0))

    res["preprocess"] = timed(lambda: preprocess(image, meta), args.n)
    res["network_batch1"] = timed(forward, args.n)
    try:
        from model.inference import Predictor

        pred = Predictor(model_path=args.model)
        res["predictor_no_cam"] = timed(lambda: pred.predict(image, cam_method=None), args.n)
        res["predictor_with_gradcam"] = timed(lambda: pred.predict(image, cam_method="gradcam"), args.n)
    except ImportError:
        pass
    from PIL import Image

    res["image_pixels"] = list(Image.open(image).size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
