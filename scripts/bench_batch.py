"""Batch throughput of the worklist path: one process vs Ray Data with 1 and 2 actors (model/cluster.py), on
N FracAtlas images (every k-th file of the sorted image list: a speed sample, nothing is chosen on labels).

    python -m scripts.bench_batch [--data ../shared/data/fracatlas] [--n 200] [--actors 1 2]

Each setting scores the same files exactly as `python -m model.predict FILES --csv` does (no Grad-CAM): the
single process with one torch thread (--threads 1, one analysis per thread, like an actor) and with two, and
`--ray --actors N` with one thread per actor, each starting and stopping its own private local Ray. Reported:
end-to-end seconds (model load and, for Ray, its start-up and every actor's model load included), the steady
rate (images per second over the second half of the rows, which is what an archive of 200,000 images sees),
the ratios to the one-thread process, the largest resident memory of an actor, and whether every row equals the
single process's. Run on an idle machine. Writes assets/report/batch_benchmark.json and .md.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from argparse import Namespace
from pathlib import Path

from model.common import REPORT_DIR, SHARED_DIR, add_bundle_args, command_parser, resolve_bundle, shown
from model.drawing import DEFAULT_OPACITY
from scripts.bench_load import rss_mb


def sample_files(root: Path, n: int) -> list[tuple[str, str]]:
    files = sorted(p for p in (root / "images").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < n:
        raise SystemExit(f"error: {len(files)} images under {root / 'images'}, {n} asked for")
    step = len(files) / n
    picked = [files[int(i * step)] for i in range(n)]
    return [(str(p), p.name) for p in picked]


class ActorMemory:
    """The largest resident set (MiB) of each Ray actor process scoring files, sampled every 0.5 s."""

    def __init__(self, marker: str = "ScoreActor"):
        self.marker, self.peak, self._stop = marker.encode(), {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.5):
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                try:
                    if self.marker not in (d / "cmdline").read_bytes():
                        continue
                    rss = rss_mb(int(d.name))
                except (OSError, IndexError, ValueError):
                    continue
                self.peak[d.name] = max(self.peak.get(d.name, 0), rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed_rows(rows) -> tuple[list[dict], list[float], float]:
    t0 = time.perf_counter()
    out, stamps = [], []
    for row in rows:
        out.append(row)
        stamps.append(time.perf_counter() - t0)
    return out, stamps, time.perf_counter() - t0


def summarise(name: str, stamps: list[float], total: float, n: int) -> dict:
    half = n // 2
    steady = (n - half) / (stamps[-1] - stamps[half - 1]) if n > 1 and stamps[-1] > stamps[half - 1] else None
    return {"setting": name, "images": n, "seconds_end_to_end": round(total, 1),
            "images_per_s_end_to_end": round(n / total, 3), "seconds_to_first_row": round(stamps[0], 1),
            "images_per_s_steady": None if steady is None else round(steady, 3)}


def main(argv=None) -> int:
    from model.predict import score_here, score_on_ray, score_options

    ap = command_parser(__spec__, __doc__)
    ap.add_argument("--data", default=str(SHARED_DIR / "data" / "fracatlas"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    add_bundle_args(ap)
    ap.add_argument("--out", default=str(REPORT_DIR / "batch_benchmark.json"))
    args = resolve_bundle(ap.parse_args(argv))
    files = sample_files(Path(args.data), args.n)
    res = {"command": " ".join(["python -m scripts.bench_batch", *(argv or [])]), "data": shown(args.data),
           "model": shown(args.model), "n": args.n, "cpu": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "runs": []}
    # model.predict's defaults, without Grad-CAM as in a --csv worklist (csv=None: no progress bar while timing)
    base_args = Namespace(model=args.model, calibration=args.calibration, xray_check=args.xray_check, csv=None,
                          ray=None, actors=None, threads=1, target_recall=None, reveal=False, alpha=DEFAULT_OPACITY,
                          no_cam=True, cam_method=None)
    options = score_options(base_args, None)
    reference = None
    for threads in (1, 2):
        base_args.threads = threads
        rows, stamps, total = timed_rows(score_here(files, base_args, options, None))
        run = summarise(f"one process, {threads} thread{'s' * (threads > 1)}", stamps, total, len(files))
        reference = reference or rows
        run["rows_equal_one_thread"] = rows == reference
        res["runs"].append(run)
        print(json.dumps(run), flush=True)
    for n_actors in args.actors:
        base_args.ray, base_args.actors, base_args.threads = "local", n_actors, 1
        with ActorMemory() as mem:
            rows, stamps, total = timed_rows(score_on_ray(files, base_args, options, None))
        run = summarise(f"Ray Data, {n_actors} actor{'s' * (n_actors > 1)} (1 thread each)", stamps, total,
                        len(files))
        run["rows_equal_one_thread"] = rows == reference
        run["actor_rss_mib_max"] = round(max(mem.peak.values()), 0) if mem.peak else None
        res["runs"].append(run)
        print(json.dumps(run), flush=True)
    one = res["runs"][0]
    for run in res["runs"]:
        run["ratio_steady"] = round(run["images_per_s_steady"] / one["images_per_s_steady"], 2)
        run["ratio_end_to_end"] = round(run["images_per_s_end_to_end"] / one["images_per_s_end_to_end"], 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    lines = ["| setting | end to end (s) | images/s end to end | images/s steady | x one thread (steady / end to end) "
             "| first row (s) | actor RSS (MiB) | rows equal |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['setting']} | {r['seconds_end_to_end']} | {r['images_per_s_end_to_end']} | "
                     f"{r['images_per_s_steady']} | {r['ratio_steady']} / {r['ratio_end_to_end']} | "
                     f"{r['seconds_to_first_row']} | {r.get('actor_rss_mib_max') or ''} | "
                     f"{r['rows_equal_one_thread']} |")
    out.with_suffix(".md").write_text(
        f"# Batch throughput ({args.n} FracAtlas images, {res['cpus']} CPUs, `{res['command']}`)\n\n"
        + "\n".join(lines) + "\n\nSteady: images per second over the second half of the rows. Load average at "
        f"start: {res['load_average_at_start']}.\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
