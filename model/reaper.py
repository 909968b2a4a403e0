"""The private Ray's cleaner: `python -m model.reaper FOLDER`, started by model.cluster.RaySession for the Ray
that a command starts itself, so that no Ray process and no file of its temp folder outlives the command,
whatever ends it (done, an error, Ctrl-C, SIGTERM, SIGKILL, or Ray's own fatal-signal handler aborting the
driver before any Python cleanup runs).

It waits for end-of-file on its stdin, a pipe whose only writer is the command (so EOF comes when the command
closes it at the end of its Ray session, or when the command's process is gone, however it died); then it
ends the processes whose command line names FOLDER (Ray's GCS, raylet and workers name their temp folder):
SIGTERM, a grace, SIGKILL; and removes FOLDER, again until it stays gone (a closing raylet can write its
session files once more after a first removal). It runs in a session of its own, so a Ctrl-C or a hang-up
sent to the terminal's process group does not stop it half way, and it gives up after DEADLINE_S.
Imports nothing of the project and prints nothing (its output would be the command's).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

GRACE_S = 5.0  # after SIGTERM, before SIGKILL
DEADLINE_S = 60.0  # the most it runs after the command's end
STAYS_GONE_S = 1.0  # the folder and the processes absent this long: done


def processes_naming(folder: str) -> list[int]:
    """PIDs (not this one) whose command line names `folder`."""
    me, key, pids = os.getpid(), os.fsencode(folder), []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != me:
            try:
                if key in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def sweep(folder: str, deadline_s: float = DEADLINE_S) -> bool:
    """End the processes naming `folder` and remove it, until both stay gone; True when they did."""
    end = time.monotonic() + deadline_s
    termed: dict[int, float] = {}  # pid -> when it was sent SIGTERM
    quiet_since = None
    while time.monotonic() < end:
        pids = processes_naming(folder)
        now = time.monotonic()
        _signal_all([p for p in pids if p not in termed], signal.SIGTERM)
        termed.update({p: now for p in pids if p not in termed})
        _signal_all([p for p in pids if now - termed[p] > GRACE_S], signal.SIGKILL)
        if os.path.lexists(folder):
            shutil.rmtree(folder, ignore_errors=True)
        if pids or os.path.lexists(folder):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= STAYS_GONE_S:
            return True
        time.sleep(0.1)
    return False


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not os.path.isabs(argv[0]):
        return 2
    for sig in (signal.SIGINT, signal.SIGHUP):  # the terminal's signals are the command's, not this cleaner's
        signal.signal(sig, signal.SIG_IGN)
    try:
        while sys.stdin.buffer.read(4096):  # the command writes nothing: this returns at EOF
            pass
    except OSError:
        pass
    return 0 if sweep(argv[0]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
