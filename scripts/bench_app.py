"""Benchmark the app end to end: start `python -m app`, time /predict through gradio_client and through
plain HTTP (the README's curl flow), and time the target-recall slider's re-decision (handler alone, server
round trip, and in the browser).

    python -m scripts.bench_app            # writes assets/report/app_benchmark.json

Uses a FracAtlas image from ../shared/data when present, else a synthetic radiograph-like PNG.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from app.handlers import MAP_LOCALISATION
from app.serve import running_app
from model.common import (
    REPORT_DIR,
    SHARED_DIR,
    add_bundle_args,
    command_parser,
    file_sha256,
    resolve_bundle,
    shown,
)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


FRACATLAS = SHARED_DIR / "data" / "fracatlas" / "images" / "Fractured"
CHROMIUM = "/usr/bin/chromium"


def pick_image(tmp: Path) -> tuple[Path, str]:
    if FRACATLAS.is_dir():
        files = sorted(FRACATLAS.glob("*.jpg"))
        if files:
            return files[len(files) // 2], "FracAtlas image (../shared/data)"
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    img = Image.new("L", (512, 410), 12)
    d = ImageDraw.Draw(img)
    d.ellipse([60, -40, 450, 450], fill=70)
    d.rounded_rectangle([215, 20, 275, 190], radius=20, fill=215)
    d.rounded_rectangle([220, 205, 280, 390], radius=20, fill=205)
    a = np.asarray(img.filter(ImageFilter.GaussianBlur(3)), np.float32)
    a += np.random.default_rng(0).normal(0, 6, a.shape)
    p = tmp / "synthetic_xray.png"
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(p)
    return p, "synthetic 512x410 PNG (../shared/data absent)"


def stats_ms(xs: list[float]) -> dict:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) > 1 else xs * 9
    return {"n": len(xs), "median_ms": round(statistics.median(xs), 2), "p90_ms": round(q[8], 2),
            "mean_ms": round(statistics.fmean(xs), 2), "min_ms": round(xs[0], 2), "max_ms": round(xs[-1], 2)}


def bench_handler(model: str, calibration: str, xray_check: str, image: Path, n: int) -> dict:
    """The slider's handler alone, in this process (what runs on the server per slider move)."""
    import torch

    torch.set_num_threads(2)
    from app.handlers import Handlers
    from model.inference import Predictor

    h = Handlers(Predictor(model_path=model, calibration_path=calibration, xray_path=xray_check, device="cpu"))
    v = h.analyze(str(image), 0.95)
    if v["state"] is None:
        raise SystemExit(f"analysis failed: {v['message']}")
    times = []
    for i in range(n):
        t = 0.80 + 0.01 * (i % 20)
        t0 = time.perf_counter()
        h.redecide(v["state"], t)
        times.append((time.perf_counter() - t0) * 1000)
    return stats_ms(times)


def bench_http(url: str, image: Path, n: int) -> dict:
    """/predict as the README's curl example makes it, with plain HTTP (httpx, which Gradio installs): upload,
    call, read the event stream to the result. gradio_client waits for each message of a job in steps of 50 ms
    (its utils polls its message queue with time.sleep(0.05)), which this path does not."""
    import httpx

    def once(h: httpx.Client) -> None:
        with open(image, "rb") as fh:
            path = h.post(url + "/gradio_api/upload", files={"files": (image.name, fh)}).json()[0]
        event = h.post(url + "/gradio_api/call/predict",
                       json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 0.95]}).json()["event_id"]
        with h.stream("GET", f"{url}/gradio_api/call/predict/{event}") as r:
            for line in r.iter_lines():
                if line.startswith("event: error"):
                    raise RuntimeError("the /predict call failed")
                if line.startswith("data:") and "probability" in line:
                    return
        raise RuntimeError("no result in the event stream")

    with httpx.Client(timeout=60) as h:
        for _ in range(3):
            once(h)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            once(h)
            times.append((time.perf_counter() - t0) * 1000)
    return stats_ms(times)


def bench_browser(url: str, image: Path, moves: int) -> dict | None:
    """User-visible slider latency: key press on the slider -> new threshold text on the page."""
    if not Path(CHROMIUM).exists():
        return None
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                    "--disable-background-networking"])
        page = b.new_page()
        page.goto(url, wait_until="load")
        page.locator("#xray input[type=file]").set_input_files(str(image))
        expect(page.locator("#pred .output-class")).not_to_be_empty(timeout=60000)
        rng = page.locator("#recall input[type=range]")
        times = []
        for i in range(moves):
            key = "ArrowLeft" if (i // 5) % 2 == 0 else "ArrowRight"
            old = page.locator("#oppoint").inner_text()
            rng.focus()
            t0 = time.perf_counter()
            rng.press(key)
            page.wait_for_function(
                "old => document.querySelector('#oppoint').innerText !== old", arg=old, timeout=10000,
                polling="raf",
            )
            times.append((time.perf_counter() - t0) * 1000)
        b.close()
    return stats_ms(times)


def main() -> None:
    ap = command_parser(__spec__, __doc__)
    add_bundle_args(ap)
    ap.add_argument("--image", default=None, help="X-ray to send (default: a FracAtlas image or a synthetic one)")
    ap.add_argument("-n", type=int, default=30, help="timed /predict calls (default 30)")
    ap.add_argument("--out", default=str(REPORT_DIR / "app_benchmark.json"))
    args = resolve_bundle(ap.parse_args())

    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as tmp:
        image, image_desc = (Path(args.image), "given image") if args.image else pick_image(Path(tmp))
        from PIL import Image

        size = list(Image.open(image).size)
        t_start = time.perf_counter()
        server_args = ["--model", args.model, "--calibration", args.calibration, "--xray-check", args.xray_check,
                       "--examples", tmp]
        with running_app(server_args) as (url, _):
            startup_s = time.perf_counter() - t_start
            client = Client(url, verbose=False)
            for _ in range(3):  # warm-up
                client.predict(handle_file(str(image)), 0.95, api_name="/predict")
            times = []
            for _ in range(args.n):
                t0 = time.perf_counter()
                out = client.predict(handle_file(str(image)), 0.95, api_name="/predict")
                times.append((time.perf_counter() - t0) * 1000)
            http = bench_http(url, image, args.n)
            redecide_rt = []
            for i in range(20):
                t0 = time.perf_counter()
                # (target recall, reveal withheld result, heatmap opacity, heatmap kind), as the page sends them
                client.predict(0.80 + 0.01 * i, False, 0.4, MAP_LOCALISATION, api_name="/redecide")
                redecide_rt.append((time.perf_counter() - t0) * 1000)
            browser = bench_browser(url, image, moves=20)
        handler = bench_handler(args.model, args.calibration, args.xray_check, image, n=500)

    predict = stats_ms(times)
    report = {
        "what": "End-to-end /predict through gradio_client and through plain HTTP on a local server (upload + "
                "queue + decode + network + Grad-CAM + calibration + JSON), and the target-recall slider's re-decision",
        "command": "python -m scripts.bench_app",
        "model": {"file": shown(args.model), "sha256": file_sha256(args.model)},
        "image": {"source": image_desc, "size": size},
        "server_startup_s": round(startup_s, 1),
        "predict_endpoint": predict,
        "predict_median_under_300ms": predict["median_ms"] < 300,
        "predict_endpoint_plain_http": http,
        "predict_plain_http_median_under_300ms": http["median_ms"] < 300,
        "last_result": {k: out[k] for k in ("decision", "probability", "threshold", "is_xray")},
        "slider_redecide": {
            "handler_only": handler,
            "server_round_trip_gradio_client": stats_ms(redecide_rt),
            "browser_keypress_to_new_threshold": browser,
            "note": "no network call: re-decides from the cached probability with Predictor.decide",
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    slider = report["slider_redecide"]
    print(json.dumps({"predict": predict, "predict_plain_http": http,
                      "slider": {k: v for k, v in slider.items() if k != "note"}}, indent=1))
    rows = [("`/predict` via gradio_client", predict), ("`/predict` via plain HTTP (upload, call, event stream)", http),
            ("slider re-decision, handler only", handler),
            ("slider re-decision, server round trip (gradio_client)", slider["server_round_trip_gradio_client"])]
    if browser:
        rows.append(("slider, browser key press to new threshold on screen", browser))
    print("\n| what | n | median ms | p90 ms |\n|---|---|---|---|")
    for name, st in rows:
        print(f"| {name} | {st['n']} | {st['median_ms']:.2f} | {st['p90_ms']:.2f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
