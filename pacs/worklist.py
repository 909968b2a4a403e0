"""The PACS worklist behind the app's Worklist tab: pure functions and one class, testable without Gradio.

- `Worklist.entries()` lists the projection radiographs (CR, DX, RG) on a DICOMweb server (QIDO-RS) and
  reads, for each, the FractureLens SR the bridge wrote (pacs/results.py; parsed with highdicom): probability,
  decision, X-ray check, the model's body region. SRs are cached in memory by their UID (bounded).
- `order()` sorts them: scored instances by fracture probability (highest first), then instances not scored
  yet, then instances that failed the X-ray check ("Not assessed"; their probability is withheld in the SR),
  then instances the analysis failed on ("failed: reason", from the bridge's failure SR for this model file).
  Other modalities (CT, MR, ...) and FractureLens's own series are not listed.
- `rows()` builds the table at any target recall: the decision is recomputed from the SR's probability by a
  `decide(probability, target_recall, is_xray)` function (the app passes `Predictor.decide`; no network).
  Patient name, ID and study date are columns only when asked for (`show_identifiers`).
- `Worklist.thumbnail()` is a small PNG of the image as a data URI (WADO-RS rendered, else the instance
  decoded with model.preprocess.decode_image), cached in memory by SOP Instance UID (bounded). Nothing is
  written to disk here.

Nothing here logs patient data (no names, IDs, UIDs, tag values); errors become pacs.bridge.BridgeError with a
message that names no UID or URL.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from model.common import prob_text
from model.decision import NOT_ASSESSED as DECISION_NOT_ASSESSED
from model.xray.kinds import PROJECTION_MODALITIES
from pacs import results
from pacs.bridge import (
    OWN_SERIES,
    TAG_DESCRIPTION,
    TAG_MODALITY,
    TAG_SERIES,
    TAG_SOP,
    TAG_STUDY,
    BridgeError,
    _value,
    dataset_bytes,
    http_error,
)

TAG_BODY_PART, TAG_PATIENT_NAME, TAG_PATIENT_ID, TAG_STUDY_DATE = "00180015", "00100010", "00100020", "00080020"
NOT_SCORED, NOT_ASSESSED, SCORED, FAILED = "not scored yet", "not assessed", "scored", "failed"
THUMB_SIZE = 96  # longest side of a thumbnail, pixels
COLUMNS = ("Rank", "Image", "Fracture probability", "Decision at this target", "Modality", "Body region",
           "X-ray check", "Status")
ID_COLUMNS = ("Patient name", "Patient ID", "Study date")
@dataclass(frozen=True)
class SrResult:
    """What the app needs from one FractureLens SR."""

    probability: float | None  # None when the image failed the X-ray check (withheld)
    decision: str  # the decision stored by the bridge (at its target recall)
    xray_check: str  # "Passed" or "Failed: <reason>"
    region: str | None  # the model's body region
    threshold: float | None = None
    target_recall: float | None = None
    failure: str | None = None  # the reason, for a failure SR (results.failure_report)

    @property
    def is_xray(self) -> bool:
        return self.xray_check == "Passed"


@dataclass
class Entry:
    study: str
    series: str
    sop: str
    modality: str
    body_part: str | None = None  # the source's BodyPartExamined
    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""
    result: SrResult | None = None
    thumbnail: str | None = field(default=None, repr=False)  # data URI

    @property
    def status(self) -> str:
        if self.result is None:
            return NOT_SCORED
        if self.result.failure is not None:
            return FAILED
        return SCORED if self.result.is_xray and self.result.probability is not None else NOT_ASSESSED


def parse_sr(ds) -> SrResult:
    """The image-level group of a FractureLens TID 1500 SR (highdicom's SR parsing). Raises ValueError when
    the SR holds no FractureLens image group."""
    import highdicom as hd

    doc = hd.sr.Comprehensive3DSR.from_dataset(ds, copy=False)
    groups = doc.content.get_image_measurement_groups()
    if not groups:
        raise ValueError("no image measurement group")
    g = groups[0]
    nums = {m.name.value: float(m.value) for m in g.get_measurements() if m.name.scheme_designator == results.SCHEME}
    evals = {q.name.value: q.value.meaning for q in g.get_qualitative_evaluations()
             if q.name.scheme_designator == results.SCHEME}
    if results.DECISION.value not in evals:
        raise ValueError("no FractureLens decision")
    failed = evals[results.DECISION.value] == results.ANALYSIS_FAILED.meaning
    return SrResult(probability=nums.get(results.FRACTURE_PROBABILITY.value),
                    decision=evals[results.DECISION.value],
                    xray_check=evals.get(results.XRAY_CHECK.value, "" if failed else "unknown"),
                    region=evals.get(results.BODY_REGION.value),
                    threshold=nums.get(results.THRESHOLD.value),
                    target_recall=nums.get(results.TARGET_RECALL.value),
                    failure=evals.get(results.FAILURE_REASON.value, "unknown") if failed else None)


def order(entries: list[Entry]) -> list[Entry]:
    """Scored by probability (highest first), then not scored yet, then not assessed, then failed; stable
    otherwise."""
    rank = {SCORED: 0, NOT_SCORED: 1, NOT_ASSESSED: 2, FAILED: 3}

    def key(e: Entry):
        p = e.result.probability if e.status == SCORED else 0.0
        return rank[e.status], -float(p)

    return sorted(entries, key=key)


def rows(entries: list[Entry], decide: Callable[..., dict], target_recall: float,
         show_identifiers: bool = False) -> tuple[list[str], list[list]]:
    """(headers, rows) in the order given; the decision recomputed at target_recall with decide()."""
    headers = list(COLUMNS) + (list(ID_COLUMNS) if show_identifiers else [])
    out = []
    for i, e in enumerate(entries, start=1):
        r = e.result
        if e.status == SCORED:
            decision = decide(float(r.probability), target_recall, is_xray=True)["decision"]
        elif e.status == NOT_ASSESSED:
            decision = DECISION_NOT_ASSESSED
        else:
            decision = ""
        # the model's region (not for an image that failed the X-ray check), else the source's BodyPartExamined
        region = (r.region if e.status == SCORED and r.region else None) or (e.body_part or "").lower()
        thumb = f"![thumbnail {i}]({e.thumbnail})" if e.thumbnail else ""
        status = f"{FAILED}: {r.failure}" if e.status == FAILED else e.status
        row = [i, thumb, ("" if e.status != SCORED else prob_text(r.probability)), decision, e.modality, region,
               "" if r is None else r.xray_check, status]
        if show_identifiers:
            row += [e.patient_name, e.patient_id, e.study_date]
        out.append(row)
    return headers, out


def _person_name(item: dict) -> str:
    v = item.get(TAG_PATIENT_NAME, {}).get("Value")
    if not v:
        return ""
    v = v[0]
    return str(v.get("Alphabetic", "")) if isinstance(v, dict) else str(v)


class _Lru:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key, value) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


class Worklist:
    """The radiographs on one DICOMweb server with their FractureLens results (see the module docstring)."""

    def __init__(self, client, model_sha256: str, max_entries: int = 500, thumb_size: int = THUMB_SIZE,
                 cache_size: int = 1024):
        """model_sha256: the model file whose results are listed (results of other model files count as
        "not scored yet": the bridge scores those images again with this one)."""
        self.client = client
        self.model_sha256 = model_sha256
        self.max_entries = max_entries
        self.thumb_size = thumb_size
        self._sr = _Lru(cache_size)  # SR SOP UID -> SrResult | None (None: unreadable)
        self._thumbs = _Lru(cache_size)  # source SOP UID -> data URI | ""
        self.truncated = False

    def _qido(self, what: str, fn, *args, **kw):
        import requests

        try:
            return fn(*args, **kw)
        except requests.RequestException as exc:
            raise http_error(exc, what) from None

    def entries(self, thumbnails: bool = True) -> list[Entry]:
        """Every radiograph instance (at most max_entries, see .truncated), ordered by order()."""
        c = self.client
        series = self._qido("the search (QIDO-RS)", c.search_for_series,
                            fields=[TAG_MODALITY, TAG_DESCRIPTION, TAG_BODY_PART], get_remaining=True)
        by_study: dict[str, list[dict]] = {}
        for s in series:
            by_study.setdefault(_value(s, TAG_STUDY), []).append(s)
        out: list[Entry] = []
        self.truncated = False
        for study, items in by_study.items():
            reports = {}  # SR SOP UID -> SR series UID
            for s in items:
                if _value(s, TAG_DESCRIPTION) == results.SR_SERIES_DESCRIPTION:
                    for i in self._qido("the search (QIDO-RS)", c.search_for_instances, study, _value(s, TAG_SERIES),
                                        get_remaining=True):
                        reports[_value(i, TAG_SOP)] = _value(s, TAG_SERIES)
            for s in items:
                modality = str(_value(s, TAG_MODALITY) or "").upper()
                if _value(s, TAG_DESCRIPTION) in OWN_SERIES or modality not in PROJECTION_MODALITIES:
                    continue
                instances = self._qido("the search (QIDO-RS)", c.search_for_instances, study, _value(s, TAG_SERIES),
                                       fields=[TAG_PATIENT_NAME, TAG_PATIENT_ID, TAG_STUDY_DATE], get_remaining=True)
                for inst in instances:
                    if len(out) >= self.max_entries:
                        self.truncated = True
                        break
                    sop = _value(inst, TAG_SOP)
                    e = Entry(study=study, series=_value(s, TAG_SERIES), sop=sop, modality=modality,
                              body_part=_value(s, TAG_BODY_PART) or _value(inst, TAG_BODY_PART),
                              patient_name=_person_name(inst), patient_id=str(_value(inst, TAG_PATIENT_ID) or ""),
                              study_date=str(_value(inst, TAG_STUDY_DATE) or ""))
                    sr = results.sr_uid(sop, self.model_sha256)
                    failure = results.failure_uid(sop, self.model_sha256)
                    if sr in reports:
                        e.result = self._result(study, reports[sr], sr)
                    elif failure in reports:  # this model file failed on it (and no later run succeeded)
                        e.result = self._result(study, reports[failure], failure)
                    out.append(e)
        out = order(out)
        if thumbnails:
            for e in out:
                e.thumbnail = self.thumbnail(e) or None
        return out

    def _result(self, study: str, series: str, sr_sop: str) -> SrResult | None:
        cached = self._sr.get(sr_sop)
        if cached is not None:
            return cached or None
        ds = self._qido("retrieving a report (WADO-RS)", self.client.retrieve_instance, study, series, sr_sop)
        try:
            res = parse_sr(ds)
        except Exception:  # noqa: BLE001 - an SR we cannot read counts as "not scored yet"
            self._sr.put(sr_sop, False)
            return None
        self._sr.put(sr_sop, res)
        return res

    def thumbnail(self, e: Entry) -> str:
        """A PNG data URI (longest side thumb_size), or "" when the image cannot be rendered or decoded."""
        import requests
        from PIL import Image

        cached = self._thumbs.get(e.sop)
        if cached is not None:
            return cached
        img = None
        try:
            data = self.client.retrieve_instance_rendered(e.study, e.series, e.sop, media_types=("image/png",))
            img = Image.open(io.BytesIO(data))
            img.load()
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code in (401, 403):
                raise http_error(exc, "retrieving a thumbnail") from None
        except requests.RequestException as exc:
            raise http_error(exc, "retrieving a thumbnail") from None
        except Exception:  # noqa: BLE001 - not an image the server can render: decode it ourselves below
            img = None
        if img is None:
            try:
                from model.preprocess import decode_image

                img = decode_image(self.fetch(e))
            except BridgeError:
                raise
            except Exception:  # noqa: BLE001 - no thumbnail for an unreadable instance
                self._thumbs.put(e.sop, "")
                return ""
        img = img.convert("L") if img.mode not in ("L", "RGB") else img
        img.thumbnail((self.thumb_size, self.thumb_size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        self._thumbs.put(e.sop, uri)
        return uri

    def fetch(self, e: Entry) -> bytes:
        """The instance as DICOM bytes (WADO-RS), in memory."""
        ds = self._qido("retrieving an instance (WADO-RS)", self.client.retrieve_instance, e.study, e.series, e.sop)
        return dataset_bytes(ds)


def source_text(e: Entry, rank: int, total: int, show_identifiers: bool = False) -> str:
    """What the Analyse tab says an opened worklist row is: its rank, modality and body part, and the patient
    and study date only when identifiers are shown."""
    text = f"PACS worklist: rank {rank} of {total} · {e.modality or 'modality not given'} · body part " \
           f"{(e.body_part or 'not given').lower()}"
    if show_identifiers:
        text += (f" · patient {e.patient_name or 'no name'} (ID {e.patient_id or 'none'})"
                 f" · study date {e.study_date or 'not given'}")
    return text


def counts_text(entries: list[Entry], truncated: bool = False) -> str:
    """One line: how many instances in each state (no identifiers)."""
    n = {s: sum(e.status == s for e in entries) for s in (SCORED, NOT_SCORED, NOT_ASSESSED, FAILED)}
    more = " (the first ones only: the list is capped)" if truncated else ""
    return (f"{len(entries)} radiograph instance(s){more}: {n[SCORED]} scored, {n[NOT_SCORED]} not scored yet, "
            f"{n[NOT_ASSESSED]} not assessed, {n[FAILED]} failed")
