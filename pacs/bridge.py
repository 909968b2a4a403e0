"""The PACS bridge: find projection radiographs without a FractureLens result on a DICOMweb server (QIDO-RS),
fetch them (WADO-RS), score them with the Predictor and store a Secondary Capture and an SR into the same study
(STOW-RS). See pacs/__main__.py for the command and pacs/results.py for the objects written.

Idempotence rule: the SR's SOPInstanceUID is derived from the source SOPInstanceUID and the model file's sha256
(pacs.results.sr_uid) and it lives in the study's "FractureLens report" series; a source counts as done when
that SR is listed there. So results are per model file: after a model update every image is scored again (the
earlier results stay in the study). The
SC and SR go in one STOW request, the SC first, so a run killed at any point leaves at most an SC without its
SR, which the next run rewrites under the same UID. A second run writes nothing; a killed run resumes.

Nothing here logs patient data: counts and reasons only (no names, IDs, UIDs or other tag values).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from model.drawing import DEFAULT_OPACITY
from model.xray.kinds import PROJECTION_MODALITIES
from pacs import results

log = logging.getLogger("pacs.bridge")

OWN_SERIES = (results.SC_SERIES_DESCRIPTION, results.SR_SERIES_DESCRIPTION)
TAG_STUDY, TAG_SERIES, TAG_SOP = "0020000D", "0020000E", "00080018"
TAG_MODALITY, TAG_DESCRIPTION, TAG_COUNT = "00080060", "0008103E", "00201209"


class BridgeError(Exception):
    """A failure that ends the run with a clear message (exit code in .code)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class Summary:
    scanned: int = 0  # instances seen in radiograph series (done or not)
    scored: int = 0  # scored and written back in this run
    skipped: Counter = field(default_factory=Counter)  # reason -> instances
    failed: Counter = field(default_factory=Counter)  # reason -> instances
    recorded: int = 0  # failures written to the PACS as failure SRs (not retried unless asked)
    decisions: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)  # stage -> seconds (fetch, score, build, store)

    def as_dict(self) -> dict:
        return {"scanned": self.scanned, "scored": self.scored, "skipped": dict(self.skipped),
                "failed": dict(self.failed), "failures_recorded": self.recorded, "decisions": dict(self.decisions),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}

    def add(self, d: dict) -> None:
        """Add the counts of another run's as_dict() (a Ray actor's, pacs/cluster.py)."""
        self.scanned += d.get("scanned", 0)
        self.scored += d.get("scored", 0)
        self.recorded += d.get("failures_recorded", 0)
        for mine, key in ((self.skipped, "skipped"), (self.failed, "failed"), (self.decisions, "decisions"),
                          (self.seconds, "seconds")):
            mine.update(d.get(key, {}))

    def text(self) -> str:
        def part(c: Counter) -> str:
            return ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) or "none"

        return (f"scanned {self.scanned} radiograph instance(s); scored and written back {self.scored}; "
                f"skipped {sum(self.skipped.values())} ({part(self.skipped)}); "
                f"failed {sum(self.failed.values())} ({part(self.failed)}"
                + (f"; {self.recorded} recorded on the PACS, not retried unless asked" if self.recorded else "")
                + ")")


def _value(item: dict, tag: str):
    v = item.get(tag, {}).get("Value")
    return v[0] if v else None


def http_error(exc: Exception, what: str) -> BridgeError:
    """A clear message for a server's refusal or absence (no URL: it may carry UIDs)."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return BridgeError("the DICOMweb server refused the credentials (HTTP 401): check DICOMWEB_USER / "
                               "DICOMWEB_PASSWORD or the credentials file given", code=2)
        if status == 403:
            return BridgeError(f"the DICOMweb server forbids {what} for this user (HTTP 403)", code=2)
        return BridgeError(f"the DICOMweb server answered HTTP {status} to {what}")
    if isinstance(exc, requests.ConnectionError):
        # no flag named here: the commands name their own (`--url` of pacs scan, `--pacs` of the app)
        return BridgeError("cannot reach the DICOMweb server (connection refused or host unknown): check its "
                           "address and that the server is running", code=3)
    if isinstance(exc, requests.Timeout):
        return BridgeError(f"the DICOMweb server did not answer {what} in time", code=3)
    return BridgeError(f"{what} failed ({type(exc).__name__})")


def make_client(url: str, user: str | None, password: str | None):
    """A dicomweb-client DICOMwebClient with HTTP basic authentication when a user is given."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if user is not None:
        session.auth = (user, password or "")
    return DICOMwebClient(url=url.rstrip("/"), session=session)


def read_credentials(path: str | None) -> tuple[str | None, str | None]:
    """(user, password) from --credentials FILE, else from DICOMWEB_USER / DICOMWEB_PASSWORD, else (None, None)."""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise BridgeError(f"cannot read the credentials file ({type(exc).__name__})", code=2) from None
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
                return str(data["user"]), str(data["password"])
            except (ValueError, KeyError, TypeError):
                raise BridgeError('the credentials file is not JSON {"user": ..., "password": ...}', code=2) from None
        lines = [ln.rstrip("\r") for ln in text.splitlines()]
        if len(lines) < 2 or not lines[0]:
            raise BridgeError("the credentials file needs two lines: user, then password", code=2)
        return lines[0], lines[1]
    user = os.environ.get("DICOMWEB_USER")
    return (user, os.environ.get("DICOMWEB_PASSWORD", "")) if user else (None, None)


# libraries whose DEBUG/INFO lines carry request URLs (with study, series and instance UIDs): keep them at WARNING
QUIET_LOGGERS = ("dicomweb_client", "urllib3", "highdicom")


def quiet_library_logs() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def connect(url: str, credentials: str | None = None):
    """A checked DICOMweb client: credentials from the file or the environment (read_credentials), then one
    cheap request, so that refused credentials or an absent server end here with a BridgeError. The HTTP
    libraries' request logs (their URLs hold UIDs) are held at WARNING first."""
    quiet_library_logs()
    user, password = read_credentials(credentials)
    client = make_client(url, user, password)
    check_server(client)
    return client


def check_server(client) -> None:
    """One cheap QIDO-RS request, so that refused credentials or an absent server are reported before the
    model is loaded."""
    import requests

    client.set_http_retry_params(retry=False)  # the library retries refused connections for ~30 s
    try:
        client.search_for_studies(limit=1)
    except requests.RequestException as exc:
        raise http_error(exc, "the search (QIDO-RS)") from None
    finally:
        client.set_http_retry_params()  # the library's defaults for the run (busy servers: 429, 503, ...)


@dataclass
class Todo:
    study: str
    series: str
    sop: str


RETRY_HINT = "failed before with this model (--retry-failed to try again)"


def find_work(client, summary: Summary, model_sha256: str, retry_failed: bool = False) -> list[Todo]:
    """QIDO-RS: every radiograph instance without an SR of this model file (counts the rest in summary.skipped).
    An instance whose failure this model file recorded (results.failure_report) is skipped unless retry_failed."""
    series = client.search_for_series(fields=[TAG_MODALITY, TAG_DESCRIPTION, TAG_COUNT], get_remaining=True)
    by_study: dict[str, list[dict]] = {}
    for s in series:
        by_study.setdefault(_value(s, TAG_STUDY), []).append(s)
    todo: list[Todo] = []
    for study, items in by_study.items():
        done = set()
        for s in items:
            if _value(s, TAG_DESCRIPTION) == results.SR_SERIES_DESCRIPTION:
                done |= {_value(i, TAG_SOP) for i in client.search_for_instances(study, _value(s, TAG_SERIES),
                                                                                  get_remaining=True)}
        for s in items:
            modality = str(_value(s, TAG_MODALITY) or "none").upper()
            if _value(s, TAG_DESCRIPTION) in OWN_SERIES:
                continue  # FractureLens's own output
            if modality not in PROJECTION_MODALITIES:
                summary.skipped[f"modality {modality}"] += int(_value(s, TAG_COUNT) or 0)
                continue
            for inst in client.search_for_instances(study, _value(s, TAG_SERIES), get_remaining=True):
                summary.scanned += 1
                sop = _value(inst, TAG_SOP)
                if results.sr_uid(sop, model_sha256) in done:
                    summary.skipped["already scored"] += 1
                elif results.failure_uid(sop, model_sha256) in done and not retry_failed:
                    summary.skipped[RETRY_HINT] += 1
                else:
                    todo.append(Todo(study, _value(s, TAG_SERIES), sop))
    return todo


def dataset_bytes(ds) -> bytes:
    """A retrieved pydicom dataset as DICOM bytes, in memory (what the Predictor reads)."""
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


def _store_failed(response) -> bool:
    return response is not None and len(getattr(response, "FailedSOPSequence", [])) > 0


FAILED = object()  # what _server_call returns for a failure it has counted


def _server_call(summary: Summary, stage: str, what: str, call):
    """call() against the server. A refused login (401/403) or an unreachable server ends the run
    (BridgeError); any other failure (an HTTP error, an instance the library cannot parse) is counted for
    this instance under `stage` and FAILED is returned."""
    import requests

    try:
        return call()
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise http_error(exc, what) from None
        summary.failed[f"{stage}: HTTP {status or '?'}"] += 1
    except requests.RequestException as exc:
        raise http_error(exc, what) from None
    except Exception as exc:  # noqa: BLE001 - e.g. an instance the library cannot parse
        summary.failed[f"{stage}: unreadable ({type(exc).__name__})"] += 1
    return FAILED


def process(client, predictor, item: Todo, target_recall: float, summary: Summary,
            alpha: float = DEFAULT_OPACITY) -> None:
    """Fetch, score and write back one instance; a problem with this instance is counted, never raised
    (a server-wide problem, 401 or unreachable, is raised as BridgeError)."""
    from model.preprocess import ImageError

    t = time.perf_counter()
    ds = _server_call(summary, "fetch", "retrieving an instance",
                      lambda: client.retrieve_instance(item.study, item.series, item.sop))
    if ds is FAILED:
        return
    summary.seconds["fetch"] += time.perf_counter() - t
    t = time.perf_counter()
    try:
        # the Secondary Capture shows the fracture map; Grad-CAM only for a model without a localisation head
        cam = None if predictor.meta.loc_head else "gradcam"
        res = predictor.predict(dataset_bytes(ds), target_recall=target_recall, cam_method=cam)
    except ImageError as exc:
        record_failure(client, predictor, item, ds, f"image: {exc}", summary)
        return
    except Exception as exc:  # noqa: BLE001 - one bad instance never stops the run
        record_failure(client, predictor, item, ds, f"image: {type(exc).__name__}", summary)
        return
    summary.seconds["score"] += time.perf_counter() - t
    t = time.perf_counter()
    try:
        sc = results.secondary_capture(ds, res, predictor.model_sha256, alpha)
        sr = results.structured_report(ds, res, predictor.meta, predictor.model_sha256)
    except Exception as exc:  # noqa: BLE001 - a source whose header highdicom refuses
        record_failure(client, predictor, item, ds, f"building the result objects ({type(exc).__name__})", summary)
        return
    summary.seconds["build"] += time.perf_counter() - t
    t = time.perf_counter()
    response = _server_call(summary, "store", "storing results",  # SR last: it marks "done"
                            lambda: client.store_instances([sc, sr], study_instance_uid=item.study))
    if response is FAILED:
        return
    summary.seconds["store"] += time.perf_counter() - t
    if _store_failed(response):
        summary.failed["store: the server refused an object"] += 1
        return
    summary.scored += 1
    summary.decisions[res["decision"]] += 1


def record_failure(client, predictor, item: Todo, ds, reason: str, summary: Summary) -> None:
    """Count the failure and write it into the study as a failure SR (results.failure_report: the reason,
    for this model file), so the worklist shows "failed: reason" and later scans skip the instance unless
    --retry-failed. A failure that cannot be written (a header highdicom refuses, a refused store) stays
    counted only, and the next scan tries the instance again."""
    summary.failed[reason] += 1
    try:
        sr = results.failure_report(ds, reason, predictor.meta, predictor.model_sha256)
    except Exception:  # noqa: BLE001 - nothing to record it in
        return
    response = _server_call(summary, "store", "storing a failure record",
                            lambda: client.store_instances([sr], study_instance_uid=item.study))
    if response is not FAILED and not _store_failed(response):
        summary.recorded += 1


def plan(client, model_sha256: str, limit: int | None = None, retry_failed: bool = False) -> tuple[list[Todo], Summary]:
    """The work of one pass (find_work, at most `limit` instances) and the summary counting the rest."""
    import requests

    summary = Summary()
    t = time.perf_counter()
    try:
        todo = find_work(client, summary, model_sha256, retry_failed)
    except requests.RequestException as exc:
        raise http_error(exc, "the search (QIDO-RS)") from None
    summary.seconds["search"] += time.perf_counter() - t
    if limit is not None:
        todo = todo[:limit]
    log.info("%d instance(s) to score, %d already scored, %d skipped for their modality", len(todo),
             summary.skipped.get("already scored", 0),
             sum(v for k, v in summary.skipped.items() if k.startswith("modality")))
    return todo, summary


def log_failures(summary: Summary) -> None:
    for reason, n in sorted(summary.failed.items()):
        log.warning("%d instance(s) failed: %s", n, reason)


def scan(client, predictor, target_recall: float, progress: bool = True, alpha: float = DEFAULT_OPACITY,
         limit: int | None = None, retry_failed: bool = False) -> Summary:
    """One pass over the server: find the work (plan), then process it here with a tqdm progress bar
    (stderr). retry_failed: also the instances whose failure this model file recorded."""
    from tqdm import tqdm

    todo, summary = plan(client, predictor.model_sha256, limit, retry_failed)
    for item in tqdm(todo, desc="FractureLens", unit="image", disable=not progress):
        process(client, predictor, item, target_recall, summary, alpha)
    log_failures(summary)
    return summary
