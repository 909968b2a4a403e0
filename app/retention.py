"""What the app keeps on disk, and for how long.

Everything Gradio writes for this app (uploads, whether or not they are ever analysed, the images the
page displays, and the empty files some requests leave) lives in one private temp folder. Besides the
per-upload deletion in app/handlers.py (an upload is deleted `--upload-grace` seconds after it is read),
a `Sweeper` thread deletes every file there that is older than `max_age` seconds (by modification time)
and removes emptied sub-folders (on the next sweep), every `interval` seconds. So no file stays longer than
max_age + interval seconds, analysed or not; the folder itself is removed when the app stops.
Only files inside the folder are touched, and never the protected ones (the example X-rays' copies).
Nothing is logged about the files beyond a count.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 120.0  # seconds a file may stay in the app's temp folder (--keep-files)
DIR_SETTLE = 5.0
DEFAULT_INTERVAL = 10.0  # at most; a shorter max_age sweeps more often (max_age / 4, at least 1 s)


class Sweeper:
    def __init__(self, root: str | os.PathLike, max_age: float = DEFAULT_MAX_AGE,
                 interval: float = DEFAULT_INTERVAL, protected=None):
        self.root = Path(root).resolve()
        self.max_age = float(max_age)
        self.interval = float(min(interval, max(1.0, self.max_age / 4)))
        self.protected = protected if protected is not None else set()  # resolved paths (shared set)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self, now: float | None = None) -> int:
        """Delete the files older than max_age and the sub-folders left empty; returns the number deleted."""
        now = time.time() if now is None else now
        deleted = 0
        for dirpath, _dirnames, filenames in os.walk(self.root, topdown=False):
            d = Path(dirpath)
            for name in filenames:
                f = d / name
                try:
                    if f in self.protected or f.resolve() in self.protected:
                        continue
                    st = f.lstat()
                    if now - st.st_mtime > self.max_age:
                        f.unlink()
                        deleted += 1
                except OSError:
                    continue
            if d != self.root:
                try:
                    # an empty folder goes once it has been left alone a few seconds (Gradio makes a
                    # folder, then writes the upload into it)
                    if not any(d.iterdir()) and now - d.stat().st_mtime > DIR_SETTLE:
                        d.rmdir()
                except OSError:
                    pass
        if deleted:
            log.info("retention: deleted %d file(s) older than %.0f s", deleted, self.max_age)
        return deleted

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception as exc:  # noqa: BLE001 - the sweeper must keep running
                log.error("retention sweep failed (%s)", type(exc).__name__)

    def start(self) -> "Sweeper":
        self._thread = threading.Thread(target=self._run, name="fracturelens-retention", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
