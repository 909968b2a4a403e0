"""Load and soak benchmark of the running app (`python -m app`), through gradio_client's /predict.

    python -m scripts.bench_load            # writes assets/report/load.json

load   for 1, 10, 50 and 100 concurrent clients (each its own gradio_client.Client, one call each,
       started together): p50 / p95 / max latency per call and the calls answered per second.
batch  what batching requests through the network would gain: the forward pass (with the flip TTA the
       model file asks for) of 1 image vs a batch of 4, per image, on the app's one thread. Gradio's
       batch=True is worth its complexity only if that gain is large (see "decision").
soak   --soak N sequential calls (default 1000) mixing valid X-rays (PNG, JPEG, 16-bit PNG, RGBA,
       DICOM) with invalid inputs (not an image, empty, truncated PNG, a photo-sized colour image): the
       server's RSS at the start and the end (+/- 100 MB is the target) and the files in its temp
       folder before and after (after --keep-files has passed: none may accumulate).
Inputs are the committed example X-rays (model.synthetic.example_radiograph) in several forms, so it runs on
a fresh clone. Numbers depend on the machine and on what else runs on it (recorded in the output).
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from app.serve import running_app
from model.common import EXAMPLES_DIR, REPORT_DIR, add_bundle_args, command_parser, resolve_bundle
from model.synthetic import dicom_bytes, example_radiograph

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

KEEP = 20.0  # --keep-files for the benchmark server (short, so the soak can check the folder)


def server_pid(port: str) -> int:
    out = subprocess.run(["pgrep", "-f", "--", f"-m app --host 127.0.0.1 --port {port}"], capture_output=True,
                         text=True)
    return int(out.stdout.split()[0])


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def files_in(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3)


def load_level(url: str, image: Path, n: int) -> dict:
    from gradio_client import Client, handle_file

    clients = [Client(url, verbose=False) for _ in range(n)]
    lat, errors = [], []
    start = threading.Barrier(n)

    def call(c):
        start.wait()
        t = time.perf_counter()
        try:
            c.predict(handle_file(str(image)), 0.95, api_name="/predict")
            lat.append(time.perf_counter() - t)
        except Exception as exc:  # noqa: BLE001 - counted
            errors.append(type(exc).__name__)

    threads = [threading.Thread(target=call, args=(c,)) for c in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    return {"clients": n, "answered": len(lat), "errors": errors, "p50_s": pct(lat, 50), "p95_s": pct(lat, 95),
            "max_s": round(max(lat), 3), "calls_per_s": round(len(lat) / wall, 2)}


def batch_gain(model_path: str) -> dict:
    import torch

    from model.network import load_model
    from model.preprocess import letterbox, normalize

    torch.set_num_threads(1)
    model, meta = load_model(model_path)
    sq = np.stack([letterbox(example_radiograph(s), int(meta.img_size))[0] for s in range(4)])
    x = normalize(sq, meta.mean, meta.std)

    def per_image(batch):
        times = []
        with torch.inference_mode():
            for _ in range(6):
                t = time.perf_counter()
                for i in range(0, 4, batch):
                    xb = x[i : i + batch]
                    model(xb)
                    if meta.tta:
                        model(torch.flip(xb, dims=[-1]))
                times.append((time.perf_counter() - t) / 4)
        return float(np.median(times[1:])) * 1000

    one, four = per_image(1), per_image(4)
    return {"forward_ms_per_image_batch1": round(one, 1), "forward_ms_per_image_batch4": round(four, 1),
            "throughput_gain": round(one / four, 2), "threads": 1}


def soak_inputs(tmp: Path) -> list[tuple[Path, bool]]:
    """(file, is valid) pairs cycled through by the soak."""
    a = example_radiograph(3, (520, 640))
    out = []

    def save(name, data, valid):
        p = tmp / name
        p.write_bytes(data)
        out.append((p, valid))

    for fmt, name in (("PNG", "x.png"), ("JPEG", "x.jpg")):
        b = io.BytesIO()
        a.save(b, format=fmt)
        save(name, b.getvalue(), True)
    b = io.BytesIO()
    Image.fromarray(np.asarray(a, np.uint16) * 257).save(b, format="PNG")
    save("x16.png", b.getvalue(), True)
    b = io.BytesIO()
    a.convert("RGBA").save(b, format="PNG")
    save("xrgba.png", b.getvalue(), True)
    save("x.dcm", dicom_bytes(np.asarray(a, np.uint16) * 16, "DX"), True)
    for ex in sorted((EXAMPLES_DIR).glob("*.png"))[:1]:
        out.append((ex, True))
    save("not_an_image.png", b"hello, this is text", False)
    save("empty.png", b"", False)
    b = io.BytesIO()
    a.save(b, format="PNG")
    save("truncated.png", b.getvalue()[:300], False)
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(b, format="JPEG")
    save("colour_photo.jpg", b.getvalue(), True)  # analysed, but "Not assessed"
    return out


def soak(url: str, pid: int, temp: Path, tmp: Path, n: int) -> dict:
    from gradio_client import Client, handle_file

    inputs = soak_inputs(tmp)
    c = Client(url, verbose=False)
    for p, _ in inputs[:3]:  # warm up
        c.predict(handle_file(str(p)), 0.95, api_name="/predict")
    time.sleep(KEEP + 12)
    rss0, files0 = rss_mb(pid), files_in(temp)
    ok = rejected = unexpected = 0
    samples = []
    t0 = time.perf_counter()
    for i in range(n):
        p, valid = inputs[i % len(inputs)]
        try:
            c.predict(handle_file(str(p)), 0.95, api_name="/predict")
            ok += 1
            unexpected += not valid
        except Exception:  # noqa: BLE001 - a rejected input: the message comes back as an error
            rejected += 1
            unexpected += valid
        if i % 100 == 99:
            samples.append(round(rss_mb(pid), 1))
    wall = time.perf_counter() - t0
    time.sleep(KEEP + 12)  # let --keep-files pass
    rss1, files1 = rss_mb(pid), files_in(temp)
    return {"calls": n, "answered": ok, "rejected": rejected, "unexpected_outcomes": unexpected,
            "seconds": round(wall, 1), "rss_start_mb": round(rss0, 1), "rss_end_mb": round(rss1, 1),
            "rss_change_mb": round(rss1 - rss0, 1), "rss_every_100_calls_mb": samples,
            "temp_files_start": files0, "temp_files_end": files1,
            "targets": {"rss_flat_within_100_mb": abs(rss1 - rss0) <= 100,
                        "no_temp_file_accumulation": files1 <= files0}}


def main() -> None:
    ap = command_parser(__spec__, __doc__)
    add_bundle_args(ap, ("model",))
    ap.add_argument("--levels", default="1,10,50,100")
    ap.add_argument("--soak", type=int, default=1000)
    ap.add_argument("--out", default=str(REPORT_DIR / "load.json"))
    args = resolve_bundle(ap.parse_args())
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_at_start": os.getloadavg()}, "server": "python -m app (defaults: 1 network "
              "thread, one analysis at a time; --keep-files %g)" % KEEP}
    result["batch"] = batch_gain(args.model)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as temp_root:
        tmp, temp_root = Path(tmp), Path(temp_root)
        image = tmp / "xray.png"
        example_radiograph(1, (600, 760)).save(image)
        with running_app(["--keep-files", str(KEEP)], env={"GRADIO_TEMP_DIR": str(temp_root)}) as (url, _log):
            pid = server_pid(url.rsplit(":", 1)[1])
            from gradio_client import Client, handle_file

            warm = Client(url, verbose=False)
            for _ in range(3):  # the first calls pay for lazy initialisation
                warm.predict(handle_file(str(image)), 0.95, api_name="/predict")
            result["load"] = []
            for n in (int(v) for v in args.levels.split(",")):
                result["load"].append(load_level(url, image, n))
                print(json.dumps(result["load"][-1]), flush=True)
            if args.soak:
                result["soak"] = soak(url, pid, temp_root, tmp, args.soak)
                print(json.dumps(result["soak"]), flush=True)
    gain = result["batch"]["throughput_gain"]
    result["decision"] = (f"batching 4 images through the network would raise throughput {gain:.2f}x per image "
                          f"on this CPU; " + ("worth adding Gradio's batch=True" if gain >= 1.3 else
                                              "not worth the added latency and code, so requests are not batched"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("batch", "decision")}, indent=2))


if __name__ == "__main__":
    main()
