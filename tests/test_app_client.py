"""The /predict API against a live local server: gradio_client, plain HTTP (curl), concurrency,
upload cleanup, and --share when the machine is offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from app.handlers import API_KEYS
from app.serve import running_app
from model.common import REPO_ROOT as ROOT
from tests.helpers import DECISIONS, MODEL, SERVER_ARGS, synthetic_xray
from tests.helpers import dicom_upload_bytes as _dicom_bytes

ARGS = SERVER_ARGS
GRACE = 3.0  # --upload-grace for the test server
SERVER_LOG: dict = {}
KEEP = 6.0  # --keep-files: every file in its temp folder is deleted at this age (swept every 1.5 s)


@pytest.fixture(scope="module")
def temp_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gradio-temp")


@pytest.fixture(scope="module")
def server(temp_root):
    if not MODEL.is_file():
        pytest.fail(f"model file missing: {MODEL}")
    with running_app([*ARGS, "--upload-grace", str(GRACE), "--max-file-size", "2", "--keep-files", str(KEEP)],
                     env={"GRADIO_TEMP_DIR": str(temp_root)}) as (url, log):
        SERVER_LOG["path"] = log
        yield url


@pytest.fixture(scope="module")
def xray_png(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "upload_me_xray.png"
    synthetic_xray(360, 480, seed=5).save(p)
    return p


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def test_predict_with_gradio_client(server, xray_png):
    from gradio_client import handle_file

    c = _client(server)
    out = c.predict(handle_file(str(xray_png)), 0.95, api_name="/predict")
    assert set(out) == set(API_KEYS)
    assert out["decision"] in DECISIONS and 0 <= out["probability"] <= 1
    assert out["target_recall"] == pytest.approx(0.95)
    assert isinstance(out["is_xray"], bool) and isinstance(out["reason"], str)
    assert out["image_size"] == [360, 480]
    low = c.predict(handle_file(str(xray_png)), 0.80, api_name="/predict")
    high = c.predict(handle_file(str(xray_png)), 0.99, api_name="/predict")
    assert low["probability"] == pytest.approx(out["probability"]) == pytest.approx(high["probability"])
    assert low["threshold"] >= out["threshold"] >= high["threshold"]
    for r in (low, out, high):
        assert r["is_fracture"] == (r["decision"] == "Fracture suspected")
    # no target (null) means the default operating point, not a Gradio preprocessing error
    default = c.predict(handle_file(str(xray_png)), None, api_name="/predict")
    assert default["target_recall"] == pytest.approx(0.95) and default["threshold"] == out["threshold"]
    # the localisation fields are in the image's own pixels
    x, y = out["cam_peak"]
    assert 0 <= x < 360 and 0 <= y < 480
    for box in out["boxes"]:
        assert 0 <= box[0] < box[2] <= 360 and 0 <= box[1] < box[3] <= 480 and 0.2 <= box[4] <= 1


def test_dicom_through_the_api(server, tmp_path):
    from gradio_client import handle_file

    f = tmp_path / "study.dcm"
    f.write_bytes(_dicom_bytes(monochrome1=True))
    out = _client(server).predict(handle_file(str(f)), 0.95, api_name="/predict")
    assert out["decision"] in DECISIONS and out["image_size"] == [256, 320]
    assert "SECRET" not in json.dumps(out)


def test_bad_upload_gives_the_message(server, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(AppError, match="Could not read this file: the file is not an image"):
        _client(server).predict(handle_file(str(bad)), 0.95, api_name="/predict")
    with pytest.raises(AppError, match="target_recall must be a number between 0.80 and 0.99"):
        _client(server).predict(handle_file(str(bad)), 0.3, api_name="/predict")


def test_upload_size_cap(server, tmp_path):
    """The server refuses uploads over --max-file-size (2 MB here) before any analysis."""
    from gradio_client import handle_file

    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        _client(server).predict(handle_file(str(big)), 0.95, api_name="/predict")
    import httpx

    with big.open("rb") as fh:  # and the server refuses it too
        r = httpx.post(server + "/gradio_api/upload", files={"files": ("big.png", fh, "image/png")}, timeout=30)
    assert r.status_code == 413, (r.status_code, r.text[:200])


def test_plain_http_two_step_curl(server, xray_png):
    """The README's curl example, run as written."""
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    script = f"""
set -e
URL={server}
FILE=$(curl -s -F "files=@{xray_png}" $URL/gradio_api/upload | tr -d '[]"')
EVENT=$(curl -s -H "Content-Type: application/json" \\
  -d "{{\\"data\\": [{{\\"path\\": \\"$FILE\\", \\"meta\\": {{\\"_type\\": \\"gradio.FileData\\"}}}}, 0.95]}}" \\
  $URL/gradio_api/call/predict | cut -d'"' -f4)
curl -s -N $URL/gradio_api/call/predict/$EVENT
"""
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "event: complete" in lines, r.stdout
    data = json.loads(lines[lines.index("event: complete") + 1].removeprefix("data: "))
    assert data[0]["decision"] in DECISIONS and set(data[0]) == set(API_KEYS)


def test_concurrent_users(server, xray_png):
    from gradio_client import handle_file

    results, errors = [], []

    def user():
        try:
            c = _client(server)
            for _ in range(2):
                results.append(c.predict(handle_file(str(xray_png)), 0.9, api_name="/predict"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=user) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 8
    assert len({round(r["probability"], 6) for r in results}) == 1


def test_uploads_are_not_kept(server, temp_root, xray_png):
    from gradio_client import handle_file

    _client(server).predict(handle_file(str(xray_png)), 0.95, api_name="/predict")
    time.sleep(GRACE + 1.5)
    leftovers = [p for p in temp_root.rglob("*") if p.is_file() and p.name == xray_png.name]
    assert leftovers == [], "an upload was left on disk after its request"
    assert all(p.name.startswith("fracturelens-") for p in temp_root.iterdir())


def test_uploads_never_analysed_and_per_request_files_do_not_linger(server, temp_root, xray_png):
    """A file sent to /gradio_api/upload and never analysed (it could carry a patient's name) is gone
    within --keep-files (+ one sweep), and so are the empty files requests leave; the example X-rays'
    copies stay."""
    import httpx
    from gradio_client import handle_file

    start = {p for p in temp_root.rglob("*") if p.is_file()}
    with open(xray_png, "rb") as f:
        r = httpx.post(server + "/gradio_api/upload", files={"files": ("patient_name.png", f, "image/png")})
    assert r.status_code == 200
    stored = Path(r.json()[0])
    assert stored.is_file() and stored.is_relative_to(temp_root)
    _client(server).predict(handle_file(str(xray_png)), 0.95, api_name="/predict")
    time.sleep(1.0)
    assert stored.is_file()  # not before its time
    time.sleep(KEEP + 3.0)
    assert not stored.exists(), "an upload that was never analysed is still on disk"
    later = {p for p in temp_root.rglob("*") if p.is_file()}
    assert later - start == set(), [p.name for p in later - start]  # nothing accumulates
    assert any("fracatlas" in p.name for p in later), "the example X-rays' copies must stay"
    assert httpx.get(f"{server}/gradio_api/file={stored}").status_code in (403, 404)


def test_rejected_inputs_log_one_line_without_paths(server, tmp_path):
    """A bad upload and a forged server path through the API: each logs one line, with no path or
    file name and no traceback; the server keeps answering."""
    from gradio_client import handle_file

    bad = tmp_path / "name_of_a_patient.png"
    bad.write_bytes(b"this is not an image")
    log = Path(SERVER_LOG["path"])
    before = len(log.read_text().splitlines())
    with pytest.raises(Exception, match="Could not read this file"):
        _client(server).predict(handle_file(str(bad)), 0.95, api_name="/predict")
    forged = json.dumps({"data": [{"path": "/etc/hostname_forged", "meta": {"_type": "gradio.FileData"}}, 0.95]})
    req = urllib.request.Request(server + "/gradio_api/call/predict", data=forged.encode(),
                                 headers={"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(req, timeout=10).read())["event_id"]
    body = urllib.request.urlopen(f"{server}/gradio_api/call/predict/{event}", timeout=30).read().decode()
    assert "event: error" in body
    time.sleep(0.5)
    new = log.read_text().splitlines()[before:]
    text = "\n".join(new)
    assert "Traceback" not in text and "name_of_a_patient" not in text and "hostname_forged" not in text, text
    assert str(ROOT) not in text and "/tmp" not in text, text
    assert len([ln for ln in new if ln.strip()]) == 2, text  # one line each
    assert urllib.request.urlopen(server + "/gradio_api/info", timeout=5).status == 200


def test_page_has_no_external_resources(server):
    html = urllib.request.urlopen(server, timeout=10).read().decode()
    for host in ("fonts.googleapis", "fonts.gstatic", "cdn.jsdelivr", "unpkg.com", "googletagmanager"):
        assert host not in html


def test_share_offline_explains_and_keeps_serving(tmp_path):
    """--share with no internet (simulated with a dead proxy): one line of explanation, local app works."""
    dead = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "GRADIO_TEMP_DIR": str(tmp_path)}
    with running_app([*ARGS, "--share"], env=dead) as (url, log):
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            text = Path(log).read_text()
            if "FractureLens: no public link" in text:
                break
            time.sleep(0.2)
        assert "FractureLens: no public link" in text and url.split("//")[1] in text, text
        # one line, ours: not Gradio's multi-line text or its advice about launch() arguments
        assert "Could not create share link" not in text and "launch()" not in text, text
        assert sum(line.startswith("FractureLens:") for line in text.splitlines()) == 1, text
        assert urllib.request.urlopen(url + "/gradio_api/info", timeout=5).status == 200
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert not left, f"the private temp folder is removed when the app stops; left: {left}"


def test_a_busy_port_is_reported_before_the_model_loads(tmp_path):
    """`python -m app --port P` with P in use: one line naming the port and --port. The port is checked
    before anything slow (Gradio's own check came after ~14 s of model loading): with a model path that does
    not exist, the busy port is still what is reported."""
    import socket
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "app", "--port", str(port), "--model", str(tmp_path / "none.pt")],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0] and "--port" in lines[0], lines
