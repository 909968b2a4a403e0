"""`python -m pacs scan --ray`: the bridge's work spread over a Ray Data actor pool (model/cluster.py).

The driver lists what is new (QIDO-RS, pacs.bridge.find_work, as without Ray); each actor holds one DICOMweb
client and one Predictor and, for each instance, fetches, scores and stores it with pacs.bridge.process, the
single-process step itself: the same objects, the same UIDs (source UID + model sha256), so the run stays
idempotent and a second run writes nothing. One bad instance is counted, never raised; a refused login or an
unreachable server (BridgeError) ends the run as it does without Ray.

Credentials reach the actors as the bridge takes them: each actor reads --credentials FILE (it must be
readable on every node) or its own DICOMWEB_USER / DICOMWEB_PASSWORD (a local Ray's workers inherit the
command's environment; on a cluster, set them where the nodes start). They never go on a command line or
into Ray's object store.
"""

from __future__ import annotations

import json

from pacs.bridge import BridgeError, Summary, Todo, connect, process


class ScanActor:
    """One DICOMweb client and one Predictor per actor; a batch of instances in, one JSON row each out:
    {"summary": Summary.as_dict()} or {"fatal": message, "code": exit code}."""

    def __init__(self, url: str, credentials: str | None, model: str, calibration: str, xray_check: str,
                 threads: int, target_recall: float, alpha: float):
        from model.cluster import quiet_worker
        from model.common import setup_cpu_threads
        from model.inference import Predictor

        quiet_worker()
        setup_cpu_threads(threads)
        self.target_recall, self.alpha = target_recall, alpha
        self.fatal: BridgeError | None = None
        try:
            self.client = connect(url, credentials)
        except BridgeError as exc:  # reported with the first batch, which ends the run
            self.fatal = exc
        self.predictor = Predictor(model, calibration, xray_check)

    def __call__(self, batch: dict) -> dict:
        out = []
        for study, series, sop in zip(batch["study"], batch["series"], batch["sop"]):
            if self.fatal is None:
                summary = Summary()
                try:
                    process(self.client, self.predictor, Todo(str(study), str(series), str(sop)), self.target_recall,
                            summary, self.alpha)
                except BridgeError as exc:
                    self.fatal = exc
                else:
                    out.append(json.dumps({"summary": summary.as_dict()}))
                    continue
            out.append(json.dumps({"fatal": str(self.fatal), "code": self.fatal.code}))
        return {"json": out}


def scan_on_ray(todo: list[Todo], summary: Summary, args, target_recall: float) -> Summary:
    """Process `todo` (pacs.bridge.plan, on the driver) on Ray; the actors' counts are added to `summary`.
    args: the scan command's (url, credentials, bundle files, threads per actor, alpha, ray, actors)."""
    from model.cluster import ACTOR_THREADS, RaySession, absolute, run_pool

    items = [{"study": t.study, "series": t.series, "sop": t.sop} for t in todo]
    kwargs = {"url": args.url, "credentials": absolute(args.credentials) if args.credentials else None,
              "model": absolute(args.model), "calibration": absolute(args.calibration),
              "xray_check": absolute(args.xray_check), "threads": args.threads or ACTOR_THREADS,
              "target_recall": target_recall, "alpha": args.alpha}
    if not items:
        return summary
    with RaySession(args.ray) as session:
        rows = run_pool(items, ScanActor, kwargs, session.actors(args.actors),
                        progress=None if args.no_progress else "FractureLens")
        for row in rows:
            if "fatal" in row:
                rows.close()
                raise BridgeError(row["fatal"], row["code"])
            summary.add(row["summary"])
    return summary
