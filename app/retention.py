"""What the app keeps on disk, and for how long: the privacy promise, in one file.

1. `private_temp_dir()`: everything Gradio writes for this app (uploads, whether or not they are ever
   analysed, the images the page displays, and the empty files some requests leave) lives in one private
   temp folder (`fracturelens-*` under $GRADIO_TEMP_DIR or the system temp dir), removed when the app stops.
2. `Uploads`: an upload is read into memory and deleted `delete_delay` seconds (`--upload-grace`) after its
   last read; only files inside the folder are ever deleted, never the protected ones (the example X-rays'
   and the model card's copies made at start).
3. `Sweeper`: a thread that deletes every file in the folder older than `max_age` seconds (`--keep-files`,
   by modification time) and removes emptied sub-folders, every `interval` seconds. So no file stays longer
   than max_age + interval seconds, analysed or not.
4. `Retention`: the three together, as the app runs them (`start()` after the server is up, `stop()` at
   shutdown, which also deletes every upload still in its grace period).
Nothing is logged about the files beyond a count: never a name or a path.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
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


def private_temp_dir(prefix: str = "fracturelens-") -> str:
    """A new private folder for everything Gradio writes (inside $GRADIO_TEMP_DIR when that is set), made the
    process's GRADIO_TEMP_DIR (call before importing gradio) and removed when the process exits."""
    parent = os.environ.get("GRADIO_TEMP_DIR")
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent or None)
    os.environ["GRADIO_TEMP_DIR"] = tmp
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


class Uploads:
    """Deletes uploads once they are read: `delete_delay` seconds after the last read (0: at once), only
    files inside `root` (None: never anything), never a protected one.

    Gradio stores uploads by content hash, so two users sending the same file share one path: with a grace
    period the file is deleted `delete_delay` s after its last read, and only if no newer upload replaced it
    meanwhile (then the newer one's own request deletes it)."""

    def __init__(self, root: str | os.PathLike | None, delete_delay: float = 0.0):
        self.root = Path(root).resolve() if root else None
        self.delete_delay = float(delete_delay)
        self.protected: set[Path] = set()  # resolved paths; shared with the Sweeper
        self._timers: dict[Path, threading.Timer] = {}
        self._lock = threading.Lock()

    def protect(self, path: str | os.PathLike) -> None:
        self.protected.add(Path(path).resolve())

    def discard(self, p: Path) -> None:
        """An upload has been read: delete it now or after the grace period."""
        if self.root is None:
            return
        try:
            rp = Path(p).resolve()
            if rp in self.protected or not rp.is_relative_to(self.root) or not rp.is_file():
                return
            ino = rp.stat().st_ino
        except OSError:
            return
        if self.delete_delay <= 0:
            self._unlink(rp, ino)
            return
        with self._lock:
            old = self._timers.pop(rp, None)
            if old is not None:
                old.cancel()
            t = threading.Timer(self.delete_delay, self._unlink, (rp, ino))
            t.daemon = True
            self._timers[rp] = t
            t.start()

    def _remove(self, rp: Path) -> None:
        rp.unlink()
        if rp.parent != self.root and not any(rp.parent.iterdir()):
            rp.parent.rmdir()

    def _unlink(self, rp: Path, ino: int) -> None:
        with self._lock:
            self._timers.pop(rp, None)
        try:
            if rp.stat().st_ino != ino:  # a newer identical upload: its own request will delete it
                self.discard(rp)
                return
            self._remove(rp)
        except OSError:
            pass

    def flush(self) -> None:
        """Delete every upload still waiting for its grace period (at shutdown and in tests)."""
        with self._lock:
            pending = list(self._timers.items())
            self._timers.clear()
        for rp, t in pending:
            t.cancel()
            try:
                self._remove(rp)
            except OSError:
                pass


class Retention:
    """The app's temp folder, its per-upload deletion and its sweeper, run together."""

    def __init__(self, root: str | os.PathLike, uploads: Uploads, max_age: float = DEFAULT_MAX_AGE):
        self.root = Path(root)
        self.uploads = uploads
        self.sweeper = Sweeper(root, max_age=max(max_age, uploads.delete_delay), protected=uploads.protected)

    def start(self) -> "Retention":
        """Protect what exists now (the example X-rays' and the model card's copies, the app's own) and start
        sweeping."""
        for f in self.root.rglob("*"):
            if f.is_file():
                self.uploads.protect(f)
        self.sweeper.start()
        return self

    def stop(self) -> None:
        self.sweeper.stop()
        self.uploads.flush()
