"""Start a throwaway Orthanc (Debian packages `orthanc` + `orthanc-dicomweb`) on loopback with the shipped
configuration (`pacs/orthanc.json`: authentication on, one demo user, DICOMweb at /dicom-web/), storage in a
temporary folder and free ports chosen at start. Used by the tests, the benchmark and `python -m pacs orthanc`.

    with OrthancServer() as srv:
        srv.dicomweb_url, srv.user, srv.password
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CONFIG_TEMPLATE = Path(__file__).with_name("orthanc.json")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                            if Path(p).is_file()), None)


def missing_reason() -> str | None:
    """Why a local Orthanc with DICOMweb cannot be started here (None: it can)."""
    if orthanc_binary() is None:
        return "the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"the Orthanc DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; apt-get install orthanc-dicomweb)"
    return None


def _die_with_parent() -> None:
    """In the child before exec (Linux): a SIGTERM when the process that started Orthanc dies, even by
    SIGKILL, so no Orthanc outlives the command."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """A loopback Orthanc in a temporary folder; stopped (and the folder removed) by stop() / the with-block."""

    def __init__(self, workdir: str | Path | None = None, http_port: int | None = None,
                 dicom_port: int | None = None, template: Path = CONFIG_TEMPLATE):
        reason = missing_reason()
        if reason:
            raise RuntimeError(reason)
        self.config = json.loads(Path(template).read_text())
        self.user, self.password = next(iter(self.config["RegisteredUsers"].items()))
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="orthanc-")) if workdir is None else Path(workdir)
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 30.0) -> "OrthancServer":
        import requests

        db = self.workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        cfg = dict(self.config, StorageDirectory=str(db), IndexDirectory=str(db), HttpPort=self.http_port,
                   DicomPort=self.dicom_port, Plugins=[str(DICOMWEB_PLUGIN)])
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(cfg, indent=2))
        path.chmod(0o600)  # it holds the demo password
        self.log_path = self.workdir / "orthanc.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([orthanc_binary(), str(path)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start (code {self.proc.returncode}); see {self.log_path}")
            try:
                r = requests.get(f"{self.url}/system", auth=(self.user, self.password), timeout=2)
                if r.status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer /system within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def store(self, data: bytes) -> None:
        """Store one DICOM instance through Orthanc's own REST API (POST /instances), as an upload would."""
        import requests

        r = requests.post(f"{self.url}/instances", data=data, auth=(self.user, self.password), timeout=60)
        r.raise_for_status()

    def instance_count(self) -> int:
        import requests

        r = requests.get(f"{self.url}/instances", auth=(self.user, self.password), timeout=60)
        r.raise_for_status()
        return len(r.json())

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
