"""FractureLens and a PACS (DICOMweb).

    python -m pacs scan --url http://127.0.0.1:8042/dicom-web [--credentials FILE] [--target-recall R] [--json]
    python -m pacs orthanc            # a throwaway demo Orthanc on loopback (prints its URL and demo user)

scan: finds the projection radiographs (modality CR, DX or RG) that have no FractureLens result yet
(QIDO-RS), fetches each (WADO-RS), scores it at the target recall and stores into its study (STOW-RS) a
Secondary Capture with the fracture map, the boxes, the probability against the threshold and the decision
burnt in (series "FractureLens overlay - NOT FOR DIAGNOSTIC USE") and a TID 1500 SR with the probability,
decision and its strength, threshold, model and boxes (series "FractureLens report - NOT FOR DIAGNOSTIC
USE"): one series of each per study. A second run writes nothing new;
a killed run resumes where it stopped. Other modalities are skipped and counted; an instance that cannot be
read is counted as failed with its reason and the run goes on.

--ray [local|auto|ADDRESS] [--actors N]: the same scan on a Ray Data actor pool (pacs/cluster.py; needs
`pip install -r requirements-scale.txt`): this command lists the new instances, each actor fetches, scores
and stores them with one Predictor (one torch thread each: --threads) and its own DICOMweb client, which
reads the credentials as below (on a cluster: a --credentials file every node can read, or the variables set
on every node). The same objects and UIDs as without --ray; a second run writes nothing.

Credentials (never on the command line): the environment variables DICOMWEB_USER and DICOMWEB_PASSWORD, or
--credentials FILE holding either two lines (user, then password) or JSON {"user": ..., "password": ...}.
No credentials: no authentication.

Exit codes: 0 done (even with failed instances; see the summary), 1 error, 2 credentials refused (HTTP 401/403)
or unreadable credentials file, 3 server unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from calibration import DEFAULT_TARGET
from model.cluster import ACTOR_THREADS, THREADS, add_ray_args
from model.common import add_bundle_args, resolve_bundle
from model.drawing import DEFAULT_OPACITY


def cmd_scan(args) -> int:
    from model.common import setup_cpu_threads
    from model.inference import Predictor
    from pacs.bridge import BridgeError, connect, scan

    log = logging.getLogger("pacs")
    try:
        try:
            client = connect(args.url, args.credentials)
        except BridgeError as exc:  # the server given by --url refused or is absent: say which flag
            raise BridgeError(f"--url: {exc}", exc.code) from None
        setup_cpu_threads(args.threads or THREADS)
        try:
            predictor = Predictor(args.model, args.calibration, args.xray_check)
        except (OSError, ValueError) as exc:
            raise BridgeError(f"could not load the model ({type(exc).__name__}: {exc})") from None
        target = predictor.default_target if args.target_recall is None else args.target_recall
        if args.ray:  # the driver lists the work; the actors fetch, score and store (pacs/cluster.py)
            from pacs.bridge import log_failures, plan
            from pacs.cluster import scan_on_ray

            sha = predictor.model_sha256
            predictor.close()
            del predictor  # each actor loads its own
            todo, summary = plan(client, sha, args.limit, args.retry_failed)
            summary = scan_on_ray(todo, summary, args, target)
            log_failures(summary)
        else:
            summary = scan(client, predictor, target, progress=not args.no_progress, alpha=args.alpha,
                           limit=args.limit, retry_failed=args.retry_failed)
    except BridgeError as exc:
        log.error("%s", exc)
        return exc.code
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(summary.text())
    return 0


def cmd_orthanc(args) -> int:
    import time

    from pacs.orthanc import OrthancServer, missing_reason

    reason = missing_reason()
    if reason:
        print(f"cannot start Orthanc: {reason}", file=sys.stderr)
        return 1
    import signal

    def _end(signum, _frame):  # closing the terminal (SIGHUP) or `kill` (SIGTERM) ends it like Ctrl-C
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _end)
    # Ctrl-C too, also when started from a shell's background job (which inherits SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    srv = OrthancServer(http_port=args.port or None)
    try:  # everything after the storage folder exists, so that a signal at any point still cleans up
        srv.start()
        print(f"Orthanc (demo, loopback only) at {srv.url}/app/explorer.html\nDICOMweb root: {srv.dicomweb_url}\n"
              f"demo credentials (from pacs/orthanc.json): user {srv.user!r}, password in pacs/orthanc.json\n"
              f"storage (deleted on exit): {srv.workdir}\nCtrl-C stops it.", flush=True)
        while srv.proc is not None and srv.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:  # Orthanc stopped and its storage (DICOMs with patient names) removed, whatever ended us
        srv.stop()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pacs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("scan", help="score the radiographs on a DICOMweb server that have no result yet")
    s.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    s.add_argument("--credentials", default=None,
                   help="file with the user and password (two lines, or JSON); default: DICOMWEB_USER/_PASSWORD")
    s.add_argument("--target-recall", type=float, default=None,
                   help=f"operating point (default: the calibration's default target, {DEFAULT_TARGET} when it has "
                   "none), as in the app and model.predict")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--limit", type=int, default=None, help="score at most this many instances in this run")
    s.add_argument("--alpha", type=float, default=DEFAULT_OPACITY,
                   help=f"heatmap opacity in the Secondary Capture where the map is high (default {DEFAULT_OPACITY})")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--retry-failed", action="store_true",
                   help="also try again the instances this model file failed on before (recorded on the PACS as "
                   "a failure report; skipped otherwise)")
    add_bundle_args(s)
    s.add_argument("--threads", type=int, default=None,
                   help=f"torch threads (default {THREADS}; with --ray: per actor, default {ACTOR_THREADS})")
    add_ray_args(s)
    s.set_defaults(func=cmd_scan)
    o = sub.add_parser("orthanc", help="start a demo Orthanc on loopback with pacs/orthanc.json")
    o.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    o.set_defaults(func=cmd_orthanc)
    args = ap.parse_args(argv)
    if args.command == "scan":
        resolve_bundle(args)
    if args.command == "scan" and args.actors is not None and (args.ray is None or args.actors < 1):
        ap.error("--actors needs --ray and at least 1")
    if args.command == "scan" and args.target_recall is not None and not 0.0 < args.target_recall < 1.0:
        ap.error("--target-recall must lie strictly between 0 and 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
