"""model.reaper, the private Ray's cleaner, without Ray: stand-in processes that name a folder (as Ray's GCS,
raylet and workers name their temp folder) and keep writing into it; the cleaner waits for its pipe to close,
ends them (SIGKILL for one that ignores SIGTERM) and removes the folder, also when its parent was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from model.common import REPO_ROOT
from model.reaper import processes_naming

# a stand-in for a closing raylet: ignores SIGTERM (when told to) and writes its session file again and again
WRITER = textwrap.dedent("""
    import os, signal, sys, time
    folder = sys.argv[1]
    if sys.argv[2] == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, "session.json"), "w").write("{}")
        time.sleep(0.05)
""")


def _writer(folder: Path, mode: str = "plain") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), mode])


def _reaper(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "model.reaper", str(folder)], cwd=REPO_ROOT,
                            stdin=subprocess.PIPE, start_new_session=True)


def _wait_for(cond, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_nothing_happens_while_the_pipe_is_open_and_everything_goes_when_it_closes(tmp_path):
    folder = tmp_path / "fl-ray-x"
    writers = [_writer(folder), _writer(folder, "stubborn")]
    reaper = _reaper(folder)
    try:
        assert _wait_for(lambda: (folder / "session.json").exists())
        time.sleep(1.0)
        assert reaper.poll() is None and all(w.poll() is None for w in writers)  # the command still runs
        assert sorted(processes_naming(str(folder))) == sorted([reaper.pid, *(w.pid for w in writers)])
        reaper.stdin.close()  # the command's end
        assert reaper.wait(timeout=30) == 0
        assert writers[0].wait(timeout=5) == -signal.SIGTERM
        assert writers[1].wait(timeout=5) == -signal.SIGKILL  # ignored SIGTERM
        assert not folder.exists()
        time.sleep(0.5)
        assert not folder.exists()  # stays gone: no writer left
    finally:
        for p in (*writers, reaper):
            p.kill()
            p.wait()


def test_a_killed_parent_is_cleaned_up_after(tmp_path):
    """SIGKILL to the command (no Python cleanup at all): the pipe closes with the process, the sweep runs."""
    folder = tmp_path / "fl-ray-y"
    parent_code = textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-m", "model.reaper", {str(folder)!r}], stdin=subprocess.PIPE,
                         start_new_session=True)
        subprocess.Popen([sys.executable, "-c", {WRITER!r}, {str(folder)!r}, "plain"])
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=REPO_ROOT)
    try:
        assert _wait_for(lambda: (folder / "session.json").exists())
        assert len(processes_naming(str(folder))) == 3  # the parent (its code), the cleaner and the writer
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=5)
        assert _wait_for(lambda: not processes_naming(str(folder)))  # writer ended, then the cleaner exited
        assert not folder.exists()
    finally:
        parent.kill()
        parent.wait()
        for pid in processes_naming(str(folder)):
            os.kill(pid, signal.SIGKILL)


def test_a_relative_or_missing_folder_is_refused():
    for args in ([], ["relative/folder"], ["/a", "/b"]):
        done = subprocess.run([sys.executable, "-m", "model.reaper", *args], cwd=REPO_ROOT,
                              stdin=subprocess.DEVNULL, timeout=30)
        assert done.returncode == 2
