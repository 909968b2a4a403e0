"""The PACS bridge (python -m pacs scan) against a live Orthanc on loopback, with synthetic instances."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from model.common import DEFAULT_MODEL, file_sha256
from model.drawing import BOX_COLOUR
from model.network import ModelMeta
from tests.helpers import SECRET_ID, SECRET_NAME, radiograph_like
from tests.helpers import radiograph_instance as make_instance


@pytest.fixture(scope="module")
def orthanc():
    from pacs.orthanc import OrthancServer

    with OrthancServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def loaded(orthanc):
    """Study A: a CR, a DX and a CT series; study B: a CR whose pixel data is cut short."""
    from pydicom.uid import generate_uid

    study_a, study_b = generate_uid(), generate_uid()
    inst = {"cr": make_instance("CR", study_a), "dx": make_instance("DX", study_a),
            "ct": make_instance("CT", study_a, pixels=np.full((64, 64), 1000, np.uint16)),
            "bad": make_instance("CR", study_b, corrupt=True)}
    for _, data in inst.values():
        orthanc.store(data)
    return {"study_a": study_a, "study_b": study_b, **inst}


def run_cli(monkeypatch, capsys, caplog, args, user, password, sink: list) -> tuple[int, str, str]:
    from pacs.__main__ import main

    monkeypatch.setenv("DICOMWEB_USER", user)
    monkeypatch.setenv("DICOMWEB_PASSWORD", password)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        code = main(["scan", *args])
    out, err = capsys.readouterr()
    sink.append("\n".join([out, err, caplog.text]))
    return code, out, err + caplog.text


def sr_items(ds):
    """Every content item of an SR, depth first."""
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from sr_items(item)


def dciodvfy_errors(ds, tmp_path, name) -> tuple[list[str], list[str]]:
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


@pytest.mark.orthanc  # a live loopback Orthanc; skipped without one (conftest)
def test_bridge_end_to_end(orthanc, loaded, monkeypatch, capsys, caplog, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    from model.inference import Predictor
    from pacs import results

    logs: list[str] = []
    url = orthanc.dicomweb_url
    n0 = orthanc.instance_count()

    # a first run stopped after one instance (as if killed), then a run that picks up the rest
    code, out, _ = run_cli(monkeypatch, capsys, caplog, ["--url", url, "--json", "--limit", "1"],
                           orthanc.user, orthanc.password, logs)
    assert code == 0
    first = json.loads(out)
    assert first["scored"] + sum(first["failed"].values()) == 1

    code, out, err = run_cli(monkeypatch, capsys, caplog, ["--url", url, "--json"], orthanc.user, orthanc.password,
                             logs)
    assert code == 0
    second = json.loads(out)
    assert first["scored"] + second["scored"] == 2  # the CR and the DX of study A
    assert second["skipped"].get("modality CT") == 1
    assert second["scanned"] == 3  # CR, DX, the corrupt CR (the CT is not a radiograph)
    failed = {**first["failed"], **second["failed"]}
    assert sum(failed.values()) == 1 and "pixel data" in next(iter(failed)), failed  # and the run went on
    assert "failed" in "\n".join(logs)  # the reason is logged (a count and a reason, nothing else), by either run
    # an SC and an SR for each scored radiograph, and a failure report for the corrupt one
    assert first["failures_recorded"] + second["failures_recorded"] == 1
    assert orthanc.instance_count() == n0 + 5

    # a third run writes nothing and does not retry the recorded failure
    from pacs.bridge import RETRY_HINT

    code, out, _ = run_cli(monkeypatch, capsys, caplog, ["--url", url, "--json"], orthanc.user, orthanc.password,
                           logs)
    assert code == 0
    third = json.loads(out)
    assert third["scored"] == 0 and third["skipped"]["already scored"] == 2
    assert third["skipped"][RETRY_HINT] == 1 and third["failed"] == {}, third
    assert orthanc.instance_count() == n0 + 5
    # unless asked: --retry-failed tries it again (it fails again, the same record stands)
    code, out, _ = run_cli(monkeypatch, capsys, caplog, ["--url", url, "--json", "--retry-failed"], orthanc.user,
                           orthanc.password, logs)
    retried = json.loads(out)
    assert code == 0 and sum(retried["failed"].values()) == 1 and RETRY_HINT not in retried["skipped"], retried
    assert orthanc.instance_count() == n0 + 5

    # the results, read back over DICOMweb: in study A, one SC and one SR series, referencing the sources
    client = DICOMwebClient(url=url)
    client._session.auth = (orthanc.user, orthanc.password)
    series = client.search_for_series(loaded["study_a"], fields=["0008103E", "00080060"])
    desc = {s["0008103E"]["Value"][0]: s["0020000E"]["Value"][0] for s in series if "Value" in s.get("0008103E", {})}
    assert results.SC_SERIES_DESCRIPTION in desc and results.SR_SERIES_DESCRIPTION in desc
    # study B: no SC, one SR: the failure report, with its reason
    assert client.search_for_series(loaded["study_b"], search_filters={"Modality": "OT"}) == []
    failure_series = client.search_for_series(loaded["study_b"], search_filters={"Modality": "SR"})
    assert len(failure_series) == 1
    sha = file_sha256(DEFAULT_MODEL)
    failure = client.retrieve_instance(loaded["study_b"], failure_series[0]["0020000E"]["Value"][0],
                                       results.failure_uid(loaded["bad"][0].SOPInstanceUID, sha))
    meanings = [i.ConceptCodeSequence[0].CodeMeaning for i in sr_items(failure) if i.ValueType == "CODE"]
    assert "Analysis failed" in meanings and any("pixel data" in m for m in meanings), meanings
    src_cr, cr_bytes = loaded["cr"]
    sha = file_sha256(DEFAULT_MODEL)  # the model file the command used: the results' UIDs derive from it
    sr = client.retrieve_instance(loaded["study_a"], desc[results.SR_SERIES_DESCRIPTION],
                                  results.sr_uid(src_cr.SOPInstanceUID, sha))
    sc = client.retrieve_instance(loaded["study_a"], desc[results.SC_SERIES_DESCRIPTION],
                                  results.sc_uid(src_cr.SOPInstanceUID, sha))
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == loaded["study_a"]
    assert sr.Modality == "SR" and sr.Manufacturer == sc.Manufacturer == "FractureLens"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src_cr.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES" and sc.SamplesPerPixel == 3
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [e.ReferencedSOPInstanceUID for e in evidence] == [src_cr.SOPInstanceUID]
    items = [i for i in sr_items(sr) if "ConceptNameCodeSequence" in i or i.ValueType == "IMAGE"]
    image_refs = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items if i.ValueType == "IMAGE"}
    assert image_refs == {src_cr.SOPInstanceUID}
    nums = {i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
            for i in items if i.ValueType == "NUM"}
    codes = {i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeMeaning
             for i in items if i.ValueType == "CODE"}
    texts = [str(i.TextValue) for i in items if i.ValueType == "TEXT"]

    # the values are the Predictor's for the same image at the same target recall
    with Predictor() as p:
        res = p.predict(cr_bytes, target_recall=0.95)
        sha = p.model_sha256
    assert res["is_xray"], res["xray_reason"]
    assert nums["probability"] == pytest.approx(res["probability"], abs=1e-4)
    assert nums["threshold"] == pytest.approx(res["threshold"], abs=1e-4)
    assert nums["target-recall"] == pytest.approx(0.95)
    assert codes["decision"] == res["decision"]
    assert codes["xray-check"] == "Passed"
    assert codes["body-region"] == res["region"]  # the model's body region, for the worklist
    assert codes["strength"] == results.STRENGTH_CODES[res["strength"]].meaning
    assert any(sha[:12] in t for t in texts)  # algorithm version: the model file's sha256
    boxes = [i for i in items if i.ValueType == "SCOORD"]
    assert len(boxes) == len(res["boxes"])
    for item, box in zip(boxes, res["boxes"]):
        assert item.GraphicType == "POLYLINE"
        assert item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src_cr.SOPInstanceUID
        assert list(item.GraphicData)[:2] == pytest.approx(box[:2], abs=0.01)

    # dciodvfy (Debian dicom3tools), where installed: no errors
    if shutil.which("dciodvfy"):
        for name, ds in (("sc", sc), ("sr", sr), ("failure", failure)):
            errors, warnings = dciodvfy_errors(ds, tmp_path, name)
            assert errors == [], (name, errors, warnings)

    # nothing of the patient in any line we wrote (stdout, stderr with the progress bar, log records)
    text = "\n".join(logs)
    for secret in (SECRET_NAME, SECRET_NAME.split("^")[1], SECRET_ID, "ACC-SECRET", src_cr.SOPInstanceUID):
        assert secret not in text


@pytest.mark.orthanc  # a live loopback Orthanc; skipped without one (conftest)
def test_wrong_credentials(orthanc, loaded, monkeypatch, capsys, caplog):
    code, out, err = run_cli(monkeypatch, capsys, caplog, ["--url", orthanc.dicomweb_url], orthanc.user, "wrong",
                             [])
    assert code == 2
    assert "refused the credentials (HTTP 401)" in err and "Traceback" not in err
    assert "wrong" not in err  # the password is never echoed
    assert out == ""


def test_unreachable_server(monkeypatch, capsys, caplog):
    from pacs.orthanc import free_port

    code, _, err = run_cli(monkeypatch, capsys, caplog, ["--url", f"http://127.0.0.1:{free_port()}/dicom-web"],
                           "u", "p", [])
    assert code == 3 and "--url: cannot reach the DICOMweb server" in err and "Traceback" not in err


def test_credentials_file(tmp_path, monkeypatch):
    from pacs.bridge import BridgeError, read_credentials

    monkeypatch.delenv("DICOMWEB_USER", raising=False)
    two = tmp_path / "two"
    two.write_text("alice\ns3cret pass\n")
    assert read_credentials(str(two)) == ("alice", "s3cret pass")
    js = tmp_path / "c.json"
    js.write_text('{"user": "bob", "password": "pw"}')
    assert read_credentials(str(js)) == ("bob", "pw")
    one = tmp_path / "one"
    one.write_text("alice\n")
    with pytest.raises(BridgeError) as e:
        read_credentials(str(one))
    assert e.value.code == 2
    assert read_credentials(None) == (None, None)
    monkeypatch.setenv("DICOMWEB_USER", "carol")
    monkeypatch.setenv("DICOMWEB_PASSWORD", "pw2")
    assert read_credentials(None) == ("carol", "pw2")


@pytest.mark.parametrize("assessed", [True, False])
def test_result_objects_offline(assessed, tmp_path):
    """The SC and SR built from a result with boxes (boxes in the original image's pixels, the grey image
    reduced), and from one that failed the X-ray check; validated by dciodvfy where installed."""
    from pydicom.uid import generate_uid

    from pacs import results

    src, _ = make_instance("DX", generate_uid(), size=(200, 300))  # 200 wide, 300 high
    gray = radiograph_like(3, (100, 150))  # the Predictor's reduced copy (half size)
    res = {"probability": 0.8 if assessed else None, "decision": "Fracture suspected" if assessed else "Not assessed",
           "is_fracture": True if assessed else None, "threshold": 0.3, "target_recall": 0.95,
           "expected_specificity": 0.5, "is_xray": assessed, "xray_reason": "looks like a photograph",
           "image_size": [200, 300], "gray": gray, "cam": np.zeros((150, 100), np.float32),
           "boxes": [[20, 40, 120, 160, 0.7]] if assessed else [], "straightened": assessed}
    sc = results.secondary_capture(src, res, "ab" * 32)
    meta = ModelMeta(arch="seedcnn", img_size=64, mean=0.5, std=0.5, created="2024-01-01T00:00:00")
    sr = results.structured_report(src, res, meta, "ab" * 32)
    failure = results.failure_report(src, "image: could not read the DICOM pixel data (ValueError)", meta, "ab" * 32)
    # the film (100 x 150) with the colour bar beside it, black strips with the text above and below, and for a
    # verdict the probability bar under the film
    assert sc.Columns >= 100 and sc.Rows > 150 + 2 * 12 and sc.PatientID == SECRET_ID  # the patient, in DICOM only
    assert (sc.Columns > 100) == assessed  # the colour bar goes with the map
    pixels = sc.pixel_array.astype(int)
    cyan = np.all(np.abs(pixels - BOX_COLOUR) < 30, axis=-1)
    if assessed:  # the box at half its original coordinates (x 10..60, y 20..80), in cyan: its edge columns
        assert cyan[:, 10].sum() >= 50 and cyan[:, 60].sum() >= 50 and not cyan[:, 70:100].any()
    else:  # no map, no boxes, no probability bar for a non-X-ray
        assert not cyan.any() and sc.Columns == 100
    # the decision burnt in: yellow text on a black band along the top edge
    assert ((pixels[:20, :, 0] > 200) & (pixels[:20, :, 1] > 200) & (pixels[:20, :, 2] < 60)).sum() > 10
    items = [i for i in sr_items(sr) if "ConceptNameCodeSequence" in i]
    codes = {i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeMeaning
             for i in items if i.ValueType == "CODE"}
    nums = {i.ConceptNameCodeSequence[0].CodeValue for i in items if i.ValueType == "NUM"}
    scoords = [i for i in items if i.ValueType == "SCOORD"]
    assert codes["decision"] == res["decision"]
    assert codes["film-geometry"] == results.GEOMETRY_CODES[assessed].meaning  # straightened off a black canvas
    if assessed:
        assert codes["xray-check"] == "Passed" and codes["125605004"] == "Present"
        assert "probability" in nums and "box-score" in nums
        assert [list(s.GraphicData) for s in scoords] == [[20, 40, 120, 40, 120, 160, 20, 160, 20, 40]]
    else:
        assert codes["xray-check"] == "Failed: looks like a photograph"
        assert "probability" not in nums and "125605004" not in codes and scoords == []
    if shutil.which("dciodvfy"):
        for name, ds in (("sc", sc), ("sr", sr), ("failure", failure)):
            errors, warnings = dciodvfy_errors(ds, tmp_path, name)
            assert errors == [], (name, errors, warnings)


def test_xray_reason_fits_a_code_meaning():
    """The SR's coded X-ray-check value holds the reason in at most 64 ASCII characters (LO)."""
    from model.xray.kinds import GROUP_REASONS
    from pacs.results import failed_meaning

    assert failed_meaning(GROUP_REASONS["picture"]) == "Failed: a photograph or a drawing, not a radiograph"
    long = failed_meaning(GROUP_REASONS["medical"])
    assert len(long) <= 64 and long.startswith("Failed: another kind of medical image (CT, MR,")
    assert long.endswith("...") and long.isascii()
    assert failed_meaning(None) == "Failed"


@pytest.mark.orthanc  # a live loopback Orthanc; skipped without one (conftest)
def test_results_are_per_model_file(orthanc, loaded):
    """Another model file (here: the same network under another sha256) scores every image again and writes
    new objects beside the earlier ones; a second run with it writes nothing."""
    from model.inference import Predictor
    from pacs import results
    from pacs.bridge import make_client, scan

    client = make_client(orthanc.dicomweb_url, orthanc.user, orthanc.password)
    with Predictor() as p:
        scan(client, p, 0.95, progress=False)  # the shipped model's results (nothing new if already there)
        n0 = orthanc.instance_count()
        p.model_sha256 = "f" * 64  # as if the model file had been replaced
        first = scan(client, p, 0.95, progress=False)
        again = scan(client, p, 0.95, progress=False)
    # the CR and the DX: a new SC and SR each; the corrupt CR: tried again by this model, a new failure record
    assert first.scored == 2 and first.recorded == 1 and orthanc.instance_count() == n0 + 5
    assert again.scored == 0 and again.skipped["already scored"] == 2 and sum(again.failed.values()) == 0
    src = loaded["cr"][0]
    series = {s["0008103E"]["Value"][0]: s["0020000E"]["Value"][0]
              for s in client.search_for_series(loaded["study_a"], fields=["0008103E"])
              if "Value" in s.get("0008103E", {})}
    uids = {i["00080018"]["Value"][0] for i in client.search_for_instances(
        loaded["study_a"], series[results.SR_SERIES_DESCRIPTION])}
    assert {results.sr_uid(src.SOPInstanceUID, "f" * 64),
            results.sr_uid(src.SOPInstanceUID, file_sha256(DEFAULT_MODEL))} <= uids  # both kept


def _orthanc_children(config_dir: str) -> list[int]:
    """PIDs of running processes whose command line names a file in config_dir (our Orthanc)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if config_dir in (p / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


@pytest.mark.orthanc  # a live loopback Orthanc; skipped without one (conftest)
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_demo_orthanc_leaves_nothing_behind_whatever_signal_ends_it(sig):
    """python -m pacs orthanc ended by kill (SIGTERM), a closed terminal (SIGHUP) or Ctrl-C (SIGINT): the
    Orthanc child is gone and its temporary storage (which holds DICOMs with patient names) removed."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "pacs", "orthanc"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).resolve().parent.parent)
    storage = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and storage is None:
            line = proc.stdout.readline()
            if line.startswith("storage (deleted on exit): "):
                storage = line.split(": ", 1)[1].strip()
        assert storage and Path(storage).is_dir()
        assert _orthanc_children(storage), "Orthanc should be running"
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(timeout=90) != 0 or sig == "SIGINT"
    finally:  # a failing run must not leave the demo Orthanc behind (its child follows: PR_SET_PDEATHSIG)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)
    assert not Path(storage).exists()
    assert not _orthanc_children(storage)
