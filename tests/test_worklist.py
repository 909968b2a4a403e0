"""The PACS worklist (pacs/worklist.py) against a live Orthanc on loopback, with synthetic instances."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.helpers import SECRET_ID, SECRET_NAME
from tests.helpers import radiograph_instance as make_instance

pytestmark = pytest.mark.orthanc  # skipped without a local Orthanc (tests/conftest.py)


@pytest.fixture(scope="module")
def predictor():
    from model.inference import Predictor

    with Predictor() as p:
        yield p


@pytest.fixture(scope="module")
def scanned(predictor):
    """Two CRs with different pixels and a DX in study A, a CT beside them, a CR that fails the X-ray check in
    study B; all scanned by the bridge. Then a DX stored after the scan (not scored yet)."""
    from pydicom.uid import generate_uid

    from pacs.bridge import make_client, scan
    from pacs.orthanc import OrthancServer

    with OrthancServer() as srv:
        a, b = generate_uid(), generate_uid()
        inst = {"cr1": make_instance("CR", a, seed=1), "cr2": make_instance("CR", a, seed=2),
                "dx": make_instance("DX", a, seed=3),
                "ct": make_instance("CT", a, pixels=np.full((64, 64), 1000, np.uint16)),
                "photo": make_instance("CR", b, pixels=np.random.default_rng(0).integers(0, 4095, (256, 320))
                                       .astype(np.uint16)),
                "bad": make_instance("CR", b, corrupt=True)}
        for _, data in inst.values():
            srv.store(data)
        client = make_client(srv.dicomweb_url, srv.user, srv.password)
        summary = scan(client, predictor, 0.95, progress=False)
        assert summary.scored == 4 and summary.skipped["modality CT"] == 1, summary.text()
        assert summary.recorded == 1 and sum(summary.failed.values()) == 1, summary.text()  # the corrupt CR
        inst["late"] = make_instance("DX", b, seed=11)
        srv.store(inst["late"][1])
        yield srv, client, inst


def test_worklist_order_decisions_and_identifiers(scanned, predictor, caplog):
    from pacs import worklist as wl
    from pacs.bridge import quiet_library_logs

    srv, client, inst = scanned
    uid = {k: ds.SOPInstanceUID for k, (ds, _) in inst.items()}
    quiet_library_logs()  # as the app does (pacs.bridge.connect): the HTTP libraries log request URLs, which hold UIDs
    caplog.set_level(logging.DEBUG)  # every record of this test, checked at the end
    w = wl.Worklist(client, predictor.model_sha256)
    entries = w.entries()
    sops = [e.sop for e in entries]
    assert uid["ct"] not in sops  # only projection radiographs are listed
    assert len(entries) == 6
    assert [e.status for e in entries] == [wl.SCORED] * 3 + [wl.NOT_SCORED, wl.NOT_ASSESSED, wl.FAILED]
    assert sops[3] == uid["late"] and sops[4] == uid["photo"] and sops[5] == uid["bad"]
    assert "pixel data" in entries[5].result.failure
    probs = [e.result.probability for e in entries[:3]]
    assert probs == sorted(probs, reverse=True) and len(set(probs)) == 3  # the two CRs differ
    assert set(sops[:3]) == {uid["cr1"], uid["cr2"], uid["dx"]}

    # the probabilities are the Predictor's; the decision follows Predictor.decide at the table's target
    by_sop = {e.sop: e for e in entries}
    res = predictor.predict(inst["cr1"][1], target_recall=0.95, cam_method=None)
    assert by_sop[uid["cr1"]].result.probability == pytest.approx(res["probability"], abs=1e-4)
    assert by_sop[uid["cr1"]].result.region == res["region"]
    assert by_sop[uid["photo"]].result.probability is None
    assert by_sop[uid["photo"]].result.xray_check.startswith("Failed")
    decisions = {}
    for target in (0.3, 0.99):
        headers, rows = wl.rows(entries, predictor.decide, target)
        col = headers.index("Decision at this target")
        decisions[target] = [r[col] for r in rows]
        assert decisions[target][:3] == [predictor.decide(p, target)["decision"] for p in probs]
        assert decisions[target][3:] == ["", "Not assessed", ""]
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
        status = [r[headers.index("Status")] for r in rows]
        assert status[3] == "not scored yet" and status[5].startswith("failed: image: ") and "pixel data" in status[5]
        assert all(r[1].startswith("![thumbnail") and "data:image/png;base64," in r[1] for r in rows[:5])
        assert rows[5][1] == ""  # no thumbnail of pixel data that cannot be decoded
    # a higher target recall flags at least as many (the thresholds fall as the target rises)
    flagged = {t: d[:3].count("Fracture suspected") for t, d in decisions.items()}
    assert flagged[0.99] >= flagged[0.3] and flagged[0.99] > 0

    # patient identifiers: absent unless asked for
    headers, rows = wl.rows(entries, predictor.decide, 0.95)
    flat = repr(rows) + repr(headers)
    assert SECRET_ID not in flat and "Quixotic" not in flat and "Patient name" not in headers
    headers, rows = wl.rows(entries, predictor.decide, 0.95, show_identifiers=True)
    assert headers[-3:] == ["Patient name", "Patient ID", "Study date"]
    assert rows[0][-3:] == [SECRET_NAME, SECRET_ID, "20240102"]

    # a thumbnail is a small PNG of the image, cached by SOP UID; the instance comes back as DICOM bytes
    import base64
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(entries[0].thumbnail.split(",", 1)[1])))
    assert max(img.size) == wl.THUMB_SIZE and img.size[0] < img.size[1]  # 256 wide, 320 high
    assert len(w._thumbs) == 6
    data = w.fetch(by_sop[uid["cr1"]])
    assert data[128:132] == b"DICM"
    again = w.entries()  # cached SRs and thumbnails: same answer
    assert [e.sop for e in again] == sops
    assert wl.counts_text(again) == ("6 radiograph instance(s): 3 scored, 1 not scored yet, 1 not assessed, "
                                     "1 failed")
    # the worklist row named in the Analyse tab: rank, modality, body part; the patient only when asked
    assert wl.source_text(again[0], 1, 6).startswith("PACS worklist: rank 1 of 6 · ")
    assert SECRET_NAME not in wl.source_text(again[0], 1, 6)
    assert SECRET_NAME in wl.source_text(again[0], 1, 6, show_identifiers=True)

    # nothing of the patient in the logs
    text = caplog.text
    for secret in (SECRET_NAME, "Quixotic", SECRET_ID, "ACC-SECRET", *uid.values()):
        assert secret not in text


def test_worklist_errors_are_one_clear_line(scanned):
    from pacs.bridge import BridgeError, make_client
    from pacs.orthanc import free_port
    from pacs.worklist import Worklist

    srv, _, _ = scanned
    with pytest.raises(BridgeError, match=r"refused the credentials \(HTTP 401\)"):
        Worklist(make_client(srv.dicomweb_url, srv.user, "wrong"), "0" * 64).entries()
    client = make_client(f"http://127.0.0.1:{free_port()}/dicom-web", "u", "p")
    client.set_http_retry_params(retry=False)
    with pytest.raises(BridgeError, match="cannot reach the DICOMweb server"):
        Worklist(client, "0" * 64).entries()


@pytest.mark.parametrize("case", ["wrong password", "unreachable"])
def test_app_with_a_bad_pacs_exits_with_one_line(scanned, case):
    """python -m app --pacs URL: refused credentials exit with code 2, an absent server with code 3, each with
    one line on stderr (before the model is loaded) that never echoes the password."""
    import os
    import subprocess
    import sys

    from model.common import REPO_ROOT
    from pacs.orthanc import free_port

    srv, _, _ = scanned
    url = srv.dicomweb_url if case == "wrong password" else f"http://127.0.0.1:{free_port()}/dicom-web"
    env = {**os.environ, "DICOMWEB_USER": srv.user, "DICOMWEB_PASSWORD": "wrong-Secret-pw"}
    out = subprocess.run([sys.executable, "-m", "app", "--port", str(free_port()), "--pacs", url], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == (2 if case == "wrong password" else 3), out.stderr
    assert len(lines) == 1 and lines[0].startswith("FractureLens: --pacs: "), out.stderr
    assert ("refused the credentials" if case == "wrong password" else "cannot reach") in lines[0]
    assert "--url" not in lines[0]  # the app's flag is --pacs (pacs scan's is --url)
    assert "wrong-Secret-pw" not in out.stderr + out.stdout and "Traceback" not in out.stderr
