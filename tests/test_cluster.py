"""Batch scoring on Ray Data (model/cluster.py, `model.predict --ray`, `pacs scan --ray`), on a local Ray that
the tests start (ray.init(num_cpus=2)): the same worklist and the same PACS objects as without Ray, nothing
identifying in Ray's logs, and nothing left behind by a command that started Ray itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from model.common import REPO_ROOT
from model.reaper import processes_naming  # Ray's raylet, GCS and workers name their temp folder
from tests.helpers import SECRET_ID, SECRET_NAME, synthetic_xray
from tests.helpers import radiograph_instance as make_instance

ray = pytest.importorskip("ray", reason="Ray Data not installed (pip install -r requirements-scale.txt)")

PATIENT_FILE = "DOE_JOHN_1970-01-01_MRN4711"  # a file name that identifies a patient, as real exports do


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for this module (ray.init(num_cpus=2) through model.cluster.RaySession: a short private
    temp folder, no dashboard, a token of its own); the commands under test find it running and use it."""
    from model.cluster import RaySession

    with RaySession(num_cpus=2) as session:
        yield Path(session.temp_dir)


def image_tree(root: Path) -> Path:
    """Four radiographs (one named like a patient, one in a subfolder), a colour photo, a corrupt and an
    empty file."""
    from PIL import Image

    (root / "ward" / PATIENT_FILE).mkdir(parents=True)
    for i, (w, h) in enumerate([(300, 380), (420, 360), (330, 420)]):
        synthetic_xray(w, h, seed=i).save(root / "ward" / f"film{i}.png")
    synthetic_xray(360, 300, seed=1).save(root / "ward" / PATIENT_FILE / f"{PATIENT_FILE}.jpg", quality=80)
    rgb = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(root / "ward" / "holiday.jpg")
    (root / "ward" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    (root / "ward" / "empty.dcm").write_bytes(b"")
    return root / "ward"


def text_under(folder: Path) -> str:
    """Every file under `folder` (Ray's logs and the rest), as text."""
    parts = []
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            try:
                parts.append(f.read_bytes().decode("utf-8", "replace"))
            except OSError:
                pass
    return "\n".join(parts)


def test_predict_on_ray_writes_the_same_worklist(local_ray, tmp_path, capsys, monkeypatch):
    from model.predict import main

    ward = image_tree(tmp_path / "in")
    single, on_ray = tmp_path / "single.csv", tmp_path / "ray.csv"
    assert main([str(ward), "--csv", str(single), "--threads", "1"]) == 0
    assert main([str(ward), "--csv", str(on_ray), "--ray", "--actors", "2"]) == 0
    assert on_ray.read_text() == single.read_text()  # identical rows, values and order
    lines = single.read_text().splitlines()
    assert len(lines) == 1 + 7
    assert sum("Fracture suspected" in ln for ln in lines) >= 1
    assert sum("Fracture suspected" in ln or "No fracture detected" in ln for ln in lines) == 4
    assert any("corrupt.png" in ln and "damaged" in ln for ln in lines)
    assert any("empty.dcm" in ln and "empty" in ln for ln in lines)
    assert any("holiday.jpg" in ln and "Not assessed" in ln for ln in lines)
    capsys.readouterr()
    # --json: the same objects too (boxes, peaks, notes), and the Grad-CAM overlays of --cam-dir, written by the
    # actors where the single process writes them (a folder relative to the working folder) and named alike
    monkeypatch.chdir(tmp_path)
    assert main([str(ward), "--json", "--cam-dir", "cams", "--threads", "1"]) == 0
    here = json.loads(capsys.readouterr().out)
    written = {p: (tmp_path / p).read_bytes() for p in (r.get("cam_png") for r in here) if p}
    assert len(written) == 4 and all(p.startswith("cams/") for p in written)
    shutil.rmtree(tmp_path / "cams")
    assert main([str(ward), "--json", "--cam-dir", "cams", "--ray"]) == 0
    assert json.loads(capsys.readouterr().out) == here
    assert {p: (tmp_path / p).read_bytes() for p in written} == written
    # Ray's logs (workers, raylet, Ray Data) name no file and no folder of ours
    logs = text_under(local_ray)
    assert "ray-data" in logs or any(local_ray.rglob("*.log"))  # the logs exist and were read
    for secret in (PATIENT_FILE, "holiday", "film0", str(ward)):
        assert secret not in logs


@pytest.mark.orthanc  # a live loopback Orthanc; skipped without one (conftest)
def test_pacs_scan_on_ray_writes_the_same_objects(local_ray, tmp_path, capsys):
    from dicomweb_client.api import DICOMwebClient
    from pydicom.uid import generate_uid

    from model.common import DEFAULT_MODEL, file_sha256
    from pacs import results
    from pacs.__main__ import main
    from pacs.orthanc import OrthancServer

    study = generate_uid()
    instances = [make_instance("CR", study, seed=3), make_instance("DX", study, seed=4),
                 make_instance("CR", study, corrupt=True)]
    sha = file_sha256(DEFAULT_MODEL)

    def run(srv, *extra) -> dict:
        creds = tmp_path / "creds.json"  # the actors read the file, as the bridge does; never a command line
        creds.write_text(json.dumps({"user": srv.user, "password": srv.password}))
        assert main(["scan", "--url", srv.dicomweb_url, "--credentials", str(creds), "--json", "--no-progress",
                     *extra]) == 0
        return json.loads(capsys.readouterr().out)

    def stored(srv) -> dict:
        client = DICOMwebClient(url=srv.dicomweb_url)
        client._session.auth = (srv.user, srv.password)
        series = {s["0008103E"]["Value"][0]: s["0020000E"]["Value"][0]
                  for s in client.search_for_series(study, fields=["0008103E"]) if "Value" in s.get("0008103E", {})}
        out = {}
        for ds, _ in instances:
            src = ds.SOPInstanceUID
            for uid, desc in ((results.sr_uid(src, sha), results.SR_SERIES_DESCRIPTION),
                              (results.failure_uid(src, sha), results.SR_SERIES_DESCRIPTION),
                              (results.sc_uid(src, sha), results.SC_SERIES_DESCRIPTION)):
                try:
                    obj = client.retrieve_instance(study, series[desc], uid)
                except Exception:  # noqa: BLE001 - not written for this source (e.g. no SC for a failure)
                    continue
                if obj.Modality == "SR":
                    out[uid] = sorted(str(i.get("ConceptCodeSequence", [{}])[0].get("CodeMeaning", ""))
                                      + str(i.get("MeasuredValueSequence", [{}])[0].get("NumericValue", ""))
                                      for i in _items(obj))
                else:
                    out[uid] = obj.PixelData
        return out

    with OrthancServer() as a, OrthancServer() as b:
        for _, data in instances:
            a.store(data)
            b.store(data)
        here = run(a, "--threads", "1")  # one torch thread, as each actor has
        there = run(b, "--ray", "--actors", "2")
        assert there["scored"] == here["scored"] == 2 and there["decisions"] == here["decisions"]
        assert there["failed"] == here["failed"] and sum(there["failed"].values()) == 1
        assert there["failures_recorded"] == here["failures_recorded"] == 1
        assert there["scanned"] == here["scanned"] == 3
        objects = stored(a)
        assert len(objects) == 5  # SR + SC for each radiograph, a failure SR for the corrupt one
        assert stored(b) == objects  # the same UIDs, the same measurements and codes, the same SC pixels
        n = b.instance_count()
        again = run(b, "--ray")  # idempotent: a second run writes nothing
        assert again["scored"] == 0 and again["skipped"]["already scored"] == 2 and b.instance_count() == n
    logs = text_under(local_ray)
    for ds, _ in instances:
        assert ds.SOPInstanceUID not in logs
    for secret in (SECRET_NAME, SECRET_NAME.split("^")[1], SECRET_ID, "ACC-SECRET"):
        assert secret not in logs


def _items(ds):
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _items(item)


@pytest.mark.parametrize("sig", [None, signal.SIGTERM, signal.SIGKILL])
def test_a_command_that_starts_ray_leaves_nothing_behind(tmp_path, sig):
    """`--ray` alone starts a private Ray; when the command ends (done, SIGTERM half way, or killed outright
    with no cleanup of its own), its temp folder and its processes are gone (model.reaper)."""
    ward = image_tree(tmp_path / "in")
    tmpdir = tempfile.mkdtemp(prefix="flc-", dir="/tmp")  # where the command makes its Ray temp folder
    home = tmp_path / "home"  # where Ray would keep an auth token file
    home.mkdir()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env.update({"TMPDIR": tmpdir, "HOME": str(home)})
        proc = subprocess.Popen([sys.executable, "-m", "model.predict", str(ward), "--csv", str(tmp_path / "w.csv"),
                                 "--ray", "--actors", "1"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if sig is not None:
            deadline = time.time() + 120
            while time.time() < deadline and not processes_naming(tmpdir):
                time.sleep(0.5)
            time.sleep(3)  # Ray is up and working
            assert proc.poll() is None, "the command ended before the signal"
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
        if sig is None:
            assert proc.returncode == 0, err
            assert (tmp_path / "w.csv").read_text().count("\n") == 8
        else:
            assert proc.returncode != 0
            assert "Traceback" not in err
        deadline = time.time() + 30  # Ray's processes stop within moments of the shutdown
        while time.time() < deadline and processes_naming(tmpdir):
            time.sleep(0.5)
        assert processes_naming(tmpdir) == []
        # the Ray temp folder (logs, sockets, spilled objects) removed (torch may leave its own compile cache here)
        assert [p.name for p in Path(tmpdir).iterdir() if not p.name.startswith("torchinductor")] == []
        assert not (home / ".ray").exists()  # no token file: the private Ray's token lived in its processes
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_without_ray_nothing_imports_it():
    code = ("import sys, model.predict, pacs.__main__, model.cluster\n"
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0
