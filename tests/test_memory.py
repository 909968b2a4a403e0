"""Memory stays bounded for big and hostile uploads: each one raises the process's resident memory by
at most 300 MB while it is analysed (with Grad-CAM), and the memory returns to its baseline afterwards.
Measured in a fresh child process that samples its own RSS every 2 ms."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.common import REPO_ROOT as ROOT
from tests.helpers import dicom_raw, radiograph_like

MODEL = ROOT / "assets" / "model.pt"
LIMIT_MB = 300

CHILD = r"""
import gc, json, sys, threading, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
from model.inference import Predictor
from model.preprocess import ImageError
from tests.helpers import dicom_raw, radiograph_like

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

try:  # glibc: hand freed heap back to the OS before a reading, so that allocator slack is not counted as kept
    import ctypes
    _trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    _trim = lambda _pad: None

def settled():
    gc.collect()
    _trim(0)
    return rss()

p = Predictor(sys.argv[1], None, sys.argv[2])
for _ in range(2):
    p.predict(radiograph_like(0), cam_method="gradcam")
start = settled()
out = {}
for path in sys.argv[3:]:
    data = open(path, "rb").read()
    gc.collect()
    before = rss()
    top = [before]
    done = threading.Event()
    def sample():
        while not done.is_set():
            top[0] = max(top[0], rss())
            time.sleep(0.002)
    t = threading.Thread(target=sample)
    t.start()
    try:
        r = p.predict(data, cam_method="gradcam")
        result = "analysed"
    except ImageError as exc:
        result = "refused: " + str(exc)
    r = None
    done.set()
    t.join()
    del data
    out[path.rsplit("/", 1)[-1]] = {"result": result, "rise_mb": top[0] - before, "after_mb": settled() - start}
print(json.dumps({"files": out, "end_mb": settled() - start}))
"""


def _big(w: int, h: int) -> np.ndarray:
    return np.asarray(radiograph_like(0, (w // 8, h // 8)).resize((w, h), Image.Resampling.BILINEAR))


@pytest.mark.skipif(not MODEL.is_file(), reason="assets/model.pt is missing")
@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="needs /proc (Linux) to read RSS")
def test_big_and_hostile_uploads_keep_memory_bounded(tmp_path):
    files = {}
    a = _big(5000, 5000)
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint16) * 257).save(buf, format="PNG")
    files["png16_25mp.png"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(_big(6000, 5000)).convert("RGB").save(buf, format="JPEG", quality=85)
    files["rgb_30mp.jpg"] = buf.getvalue()
    rgba = Image.fromarray(_big(6000, 6000)).convert("RGBA")
    rgba.putalpha(200)
    buf = io.BytesIO()
    rgba.save(buf, format="PNG", compress_level=1)
    files["rgba_36mp.png"] = buf.getvalue()
    files["dx16_16mp.dcm"] = dicom_raw(4000, 4000, (_big(4000, 4000).astype(np.uint16) * 16).tobytes(), bits=16,
                                       modality="DX")
    files["deflated_bomb.dcm"] = dicom_raw(12000, 12000, np.zeros((12000, 12000), np.uint16).tobytes(),
                                           deflated=True, bits=16, modality="DX")
    # a PNG whose header claims 12000 x 8000: refused from the header
    buf = io.BytesIO()
    Image.new("L", (12000, 8000)).save(buf, format="PNG")
    files["png_bomb.png"] = buf.getvalue()
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    assert len(files["deflated_bomb.dcm"]) < 400_000  # 288 MB of pixels in a few hundred kB
    r = subprocess.run([sys.executable, "-c", CHILD, str(MODEL), str(ROOT / "assets" / "xray_check.npz"), *paths],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)  # python -c imports from cwd
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(res, indent=1))  # pytest -s shows the measured rises
    for name, v in res["files"].items():
        assert v["rise_mb"] <= LIMIT_MB, (name, v)
    assert res["files"]["png16_25mp.png"]["result"] == "analysed"
    assert res["files"]["dx16_16mp.dcm"]["result"] == "analysed"
    assert res["files"]["rgba_36mp.png"]["result"] == "analysed"
    assert res["files"]["deflated_bomb.dcm"]["result"].startswith("refused: the image is 12000x12000")
    assert res["files"]["png_bomb.png"]["result"].startswith("refused")
    assert res["end_mb"] <= 60, res  # back to the baseline (allocator slack aside)
