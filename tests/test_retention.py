"""app.retention.Sweeper: files in the app's temp folder older than the limit are deleted, analysed
or not; fresh and protected files stay; emptied folders go; nothing outside the folder is touched."""

from __future__ import annotations

import os
import time

from app.retention import Sweeper


def _file(path, age_s: float, now: float, data: bytes = b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (now - age_s, now - age_s))
    return path


def test_sweeper_deletes_old_files_keeps_fresh_and_protected(tmp_path):
    root = tmp_path / "fracturelens-x"
    outside = _file(tmp_path / "outside.png", 10_000, time.time())
    now = time.time()
    old_upload = _file(root / "abc123" / "patient.dcm", 300, now)
    old_empty = _file(root / "tmpq1w2e3", 300, now, b"")
    fresh = _file(root / "def456" / "new.png", 5, now)
    example = _file(root / "ex" / "example.png", 10_000, now)
    os.utime(root / "abc123", (now - 300, now - 300))
    s = Sweeper(root, max_age=120, protected={example.resolve()})
    assert s.sweep(now) == 2
    assert not old_upload.exists() and not old_empty.exists()
    assert fresh.exists() and example.exists() and outside.exists()
    assert s.sweep(now + 200) == 1 and not fresh.exists()  # the fresh one in its turn
    assert not (root / "abc123").exists() and not (root / "def456").exists()  # emptied folders too
    assert example.exists()


def test_sweeper_thread_runs_and_stops(tmp_path):
    f = _file(tmp_path / "old.png", 100, time.time())
    s = Sweeper(tmp_path, max_age=2).start()  # sweeps every 1 s
    try:
        deadline = time.monotonic() + 5
        while f.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not f.exists()
    finally:
        s.stop()
    assert not s._thread.is_alive()
