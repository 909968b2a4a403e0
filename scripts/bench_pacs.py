"""End-to-end throughput of the PACS bridge on this machine: a local Orthanc (pacs/orthanc.py) holding N
synthetic CR instances (model.synthetic.radiograph_instance: the committed example radiographs, 12 bits in
16) in studies of 3; one scan (QIDO search, WADO fetch, score with Grad-CAM, build SC + SR, STOW) timed per
stage, then a second scan that must write nothing. Writes assets/report/pacs.json.

    python -m scripts.bench_pacs [--n 30] [--size 1024 1280] [--threads 2] [--out assets/report/pacs.json]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from model.common import command_parser


def main(argv=None) -> int:
    from pydicom.uid import generate_uid

    from model.common import setup_cpu_threads
    from model.inference import Predictor
    from model.synthetic import radiograph_instance
    from pacs.bridge import make_client, scan
    from pacs.orthanc import OrthancServer, missing_reason

    ap = command_parser(__spec__, __doc__)
    ap.add_argument("--n", type=int, default=30, help="instances")
    ap.add_argument("--size", type=int, nargs=2, default=[1024, 1280], metavar=("W", "H"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--out", default="assets/report/pacs.json")
    args = ap.parse_args(argv)
    if missing_reason():
        print(f"cannot run: {missing_reason()}", file=sys.stderr)
        return 1
    setup_cpu_threads(args.threads)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    t = time.perf_counter()
    instances = []
    study = None
    for i in range(args.n):
        study = generate_uid() if i % 3 == 0 else study
        instances.append(radiograph_instance("CR", study, size=tuple(args.size), seed=i)[1])
    make_s = time.perf_counter() - t
    with OrthancServer() as srv:
        t = time.perf_counter()
        for data in instances:
            srv.store(data)
        upload_s = time.perf_counter() - t
        t = time.perf_counter()
        predictor = Predictor()
        load_s = time.perf_counter() - t
        client = make_client(srv.dicomweb_url, srv.user, srv.password)
        t = time.perf_counter()
        first = scan(client, predictor, args.target_recall, progress=True)
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        second = scan(client, predictor, args.target_recall, progress=False)
        second_s = time.perf_counter() - t
    report = {
        "command": "python -m scripts.bench_pacs " + " ".join(argv if argv is not None else sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": args.threads, "python": platform.python_version(),
                    "load_average_at_start": load_at_start},
        "server": "Orthanc 1.10.1 + DICOMweb plugin 1.7 (Debian), loopback, SQLite index",
        "instances": args.n, "image_pixels": args.size, "modality": "CR", "studies": (args.n + 2) // 3,
        "setup_seconds": {"make_instances": round(make_s, 2), "upload": round(upload_s, 2),
                          "load_model": round(load_s, 2)},
        "first_scan": {**first.as_dict(), "wall_seconds": round(first_s, 2),
                       "instances_per_minute": round(60 * first.scored / first_s, 1) if first_s else None,
                       "seconds_per_instance": {k: round(v / max(first.scored, 1), 3)
                                                for k, v in first.seconds.items() if k != "search"}},
        "second_scan": {**second.as_dict(), "wall_seconds": round(second_s, 2)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{first.scored} of {args.n} scored in {first_s:.1f} s: {report['first_scan']['instances_per_minute']} "
          f"instances/min end to end; second scan {second_s:.2f} s, {second.scored} written -> {args.out}")
    return 0 if first.scored == args.n and second.scored == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
