"""`python -m app`: serve the FractureLens page on http://127.0.0.1:7860 (see --help)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import logging
import os
import signal
import sys
from pathlib import Path

from app.retention import DEFAULT_INTERVAL, DEFAULT_MAX_AGE, Retention, private_temp_dir
from model.common import EXAMPLES_DIR, REPORT_DIR, add_bundle_args, resolve_bundle

DEFAULT_EXAMPLES = EXAMPLES_DIR  # three FracAtlas test-split X-rays (CC BY 4.0)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m app", description="FractureLens web app (Gradio).")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; "
                    "0.0.0.0 exposes the app to your network)")
    ap.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ap.add_argument("--share", action="store_true",
                    help="ask Gradio for a temporary public *.gradio.live link (needs the internet)")
    add_bundle_args(ap)
    ap.add_argument("--report-dir", default=str(REPORT_DIR),
                    help="where the model card reads test metrics and plots (default assets/report)")
    ap.add_argument("--examples", default=None,
                    help=f"folder of example X-rays to offer (default {DEFAULT_EXAMPLES} when it exists)")
    ap.add_argument("--max-file-size", type=float, default=50, metavar="MB", help="upload limit (default 50 MB)")
    ap.add_argument("--upload-grace", type=float, default=20, metavar="S",
                    help="delete each upload this many seconds after it is read (default 20; the "
                    "grace lets two users send the same file at once)")
    ap.add_argument("--keep-files", type=float, default=DEFAULT_MAX_AGE, metavar="S",
                    help=f"delete every file in the app's temp folder (uploads never analysed, displayed "
                    f"images) once it is this many seconds old (default {DEFAULT_MAX_AGE:g}; checked every "
                    f"{DEFAULT_INTERVAL:g} s)")
    ap.add_argument("--pacs", default=None, metavar="URL",
                    help="DICOMweb root of a PACS (e.g. http://127.0.0.1:8042/dicom-web): adds a Worklist tab. "
                    "Credentials from DICOMWEB_USER / DICOMWEB_PASSWORD or --pacs-credentials, never on the "
                    "command line; if the server refuses them or cannot be reached at start, the app exits "
                    "(code 2 or 3) with one line saying why")
    ap.add_argument("--pacs-credentials", default=None, metavar="FILE",
                    help="file with the PACS user and password (two lines, or JSON {\"user\": ..., "
                    "\"password\": ...}), as for python -m pacs scan --credentials")
    ap.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for the network (default 1: on a busy 2-core machine 2 threads were far "
                         "slower, see assets/report/inference_benchmark_2threads_busy.json)")
    return resolve_bundle(ap.parse_args(argv))


def _fail(msg: str) -> None:
    print(f"FractureLens: {msg}", file=sys.stderr)
    raise SystemExit(1)


def check_port(host: str, port: int) -> None:
    """Fail in one line, before the model loads, when the port cannot be listened on (in use, or a
    privileged one); the server itself binds it again a few seconds later."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        _fail(f"cannot listen on {host}:{port} (unknown host; check --host)")
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            s.bind(addr)
        except OSError as exc:
            why = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or type(exc).__name__)
            _fail(f"could not start the server on {host}:{port} ({why}; choose another with --port N)")


def one_line_rejections() -> None:
    """Gradio prints a full traceback for every request it rejects (a forged file path, a value its
    preprocessing refuses), and the traceback's message can echo the path the client sent. Make that
    one line naming only the exception type. The app's own handlers catch their errors themselves
    (one line for a rejected upload, a traceback without user data for a bug)."""
    import traceback
    import types

    import gradio.queueing
    import gradio.routes
    import gradio.utils

    def print_exc(*_a, **_k):
        exc = sys.exc_info()[1]
        print(f"FractureLens: a request was rejected ({type(exc).__name__})", file=sys.stderr, flush=True)

    quiet = types.SimpleNamespace(**{n: getattr(traceback, n) for n in dir(traceback) if not n.startswith("_")})
    quiet.print_exc = print_exc
    for mod in (gradio.queueing, gradio.routes, gradio.utils):
        if getattr(mod, "traceback", None) is traceback:
            mod.traceback = quiet


def connect_pacs(url: str, credentials: str | None):
    """A DICOMweb client for the server, checked with one cheap request; exits with one clear line
    (BridgeError's code: 2 credentials refused or unreadable, 3 unreachable, 1 other) when that fails."""
    from pacs.bridge import BridgeError, connect
    try:  # connect() also holds the HTTP libraries' request logs (URLs with UIDs) at WARNING
        return connect(url, credentials)
    except BridgeError as exc:
        print(f"FractureLens: --pacs: {exc}", file=sys.stderr)
        raise SystemExit(exc.code) from None


def main(argv=None) -> None:
    args = parse_args(argv)
    check_port(args.host, args.port)  # before anything slow: a busy port is reported at once
    pacs_client = connect_pacs(args.pacs, args.pacs_credentials) if args.pacs else None  # before the model loads
    model = Path(args.model)
    if not model.is_file():
        _fail(f"model file not found: {model} (train one with `python -m model.train`, or pass --model PATH)")
    calibration = Path(args.calibration)
    if not calibration.is_file():
        print(f"FractureLens: calibration file not found: {calibration}; showing uncalibrated scores at "
              "the model file's own threshold (make one with `python -m model.calibrate fit`)", file=sys.stderr)

    # Before gradio is imported: no analytics/version pings, and uploads in a private temp folder
    # (inside $GRADIO_TEMP_DIR when that is set) that is removed when the app stops; each upload is
    # deleted as soon as it is read and Gradio deletes the images it serves after 15 minutes.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    tmp = private_temp_dir()

    from app.handlers import Handlers
    from app.ui import build_demo, find_examples, launch_kwargs
    from model.common import setup_cpu_threads
    from model.inference import Predictor

    setup_cpu_threads(args.threads)
    one_line_rejections()
    logging.basicConfig(level=logging.WARNING, format="FractureLens: %(message)s", stream=sys.stderr)
    try:
        predictor = Predictor(model_path=str(model), calibration_path=str(calibration),
                              xray_path=str(args.xray_check), device=args.device)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        _fail(f"could not load the model {model} ({type(exc).__name__}: {exc})")

    examples_dir = args.examples or (str(DEFAULT_EXAMPLES) if DEFAULT_EXAMPLES.is_dir() else None)
    if args.examples and not Path(args.examples).is_dir():
        print(f"FractureLens: examples folder not found: {args.examples} (no examples shown)", file=sys.stderr)
    examples = find_examples(examples_dir)

    handlers = Handlers(predictor, upload_root=tmp, max_file_mb=args.max_file_size,
                        delete_delay=args.upload_grace)
    worklist = None
    if pacs_client is not None:
        from pacs.worklist import Worklist

        worklist = Worklist(pacs_client, predictor.model_sha256)  # this model file's results
    demo = build_demo(handlers, examples=examples, report_dir=Path(args.report_dir), worklist=worklist)
    demo.queue(max_size=128, default_concurrency_limit=4)  # ~35 s of work at most; beyond: "queue is full"
    try:
        # Gradio's own startup text (its advice names launch() arguments and environment variables, and
        # an offline --share prints eight lines) is replaced by the lines below, which name our flags.
        with contextlib.redirect_stdout(io.StringIO()):
            demo.launch(
                server_name=args.host,
                server_port=args.port,
                share=args.share,
                max_file_size=f"{args.max_file_size:g}mb",
                allowed_paths=[str(Path(p).parent) for p, _ in examples],
                prevent_thread_lock=True,
                show_error=True,
                quiet=True,
                **launch_kwargs(),
            )
    except OSError as exc:
        busy = "port" in str(exc).lower()
        _fail(f"could not start the server on {args.host}:{args.port} ("
              + ("the port is in use; choose another with --port N" if busy else type(exc).__name__) + ")")
    # what exists now (the example X-rays' and the model card's copies) is the app's own, never swept
    retention = Retention(tmp, handlers.uploads, max_age=args.keep_files).start()
    local = f"http://{args.host}:{args.port}"
    if args.share and demo.share_url:
        print(f"FractureLens: serving on {local} and at the public link {demo.share_url} (stop with Ctrl+C)",
              flush=True)
    elif args.share:
        print(f"FractureLens: no public link (--share needs the internet); serving locally on {local}", flush=True)
    else:
        print(f"FractureLens: serving on {local} (stop with Ctrl+C; --share asks for a public link, "
              "--port N picks another port)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the temp folder is removed on `kill` too
    # Ctrl+C / SIGINT stops the app and removes the folder even when it was started from a background
    # job (`python -m app &`, a CI script), whose shell makes it inherit SIGINT as ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
        retention.stop()


if __name__ == "__main__":
    main()
