"""Batch scoring on Ray Data, for `python -m model.predict --ray` and `python -m pacs scan --ray`.

Scoring is stateless per image, so an archive spreads over a cluster: Ray Data streams the work items
(files, or PACS instances) through an actor pool in which each actor holds one Predictor (loaded once per
actor, one torch thread each), and the driver collects one JSON row per item, in input order, with a progress
bar. Needs the optional `requirements-scale.txt` (ray[data]); nothing here is imported without --ray.

Where Ray runs (`--ray [local|auto|ADDRESS]`):
- `--ray` (or `--ray local`): a private Ray on this machine, started for this command and stopped at its end:
  no dashboard, no usage statistics, token authentication with a token held only in the command's
  processes (not Ray's ~/.ray/auth_token file), its temp folder (logs, sockets, spilled objects) a fresh
  private folder that the command removes when it ends, also on SIGTERM, SIGHUP or Ctrl-C; a small cleaner
  process (model.reaper) ends Ray's processes and removes the folder even when the command is killed.
- `--ray auto` or `--ray ADDRESS` (`host:6379`, `ray://host:10001`): an existing cluster (`ray start --head`,
  `RAY_ADDRESS`); its dashboard and temp folders are that cluster's configuration (start it with
  `--include-dashboard=false`). The project's code goes to the workers as Ray `py_modules`; the Python packages
  (README install), the model files and the images must be readable at the same paths on every node (a shared
  file system).
- A Ray that this process already started (`ray.init()` before the command: the tests do so) is used as it is.

Privacy: the rows travel in Ray's object store, never in its logs; the actors print nothing about an image
(no file names, UIDs or tag values) and keep library warnings, which can quote DICOM values, out of the
worker logs.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from model import reaper
from model.common import REPO_ROOT

log = logging.getLogger("model.cluster")

LOCAL = "local"
RAY_HELP = ("score on Ray Data (requirements-scale.txt): alone or 'local' starts a private Ray on this machine "
            "for the command; 'auto' or an ADDRESS (host:6379, ray://host:10001) uses a running cluster")
ACTORS_HELP = "actors in the pool, one Predictor each (default: the cluster's CPUs, at least 1)"
# An actor asks for a little less than a CPU so that the read tasks still get scheduled: a pool that takes
# every CPU starves them (2 actors of 1 CPU on 2 CPUs hang).
ACTOR_CPUS, READ_CPUS = 0.9, 0.1
THREADS, ACTOR_THREADS = 2, 1  # torch threads: a command in one process; an actor of a pool (one analysis each)
BATCH_SIZE = 4  # items per actor call: small, so that the work spreads and the progress bar moves
PACKAGES = ("calibration", "model", "pacs")  # shipped to the workers of a remote cluster (py_modules)
QUIET_RAY_LOGGERS = ("ray", "ray.data")
REAPER_WAIT_S = reaper.DEADLINE_S + 30  # the most a command waits at its end for model.reaper's sweep


def add_ray_args(ap) -> None:
    """--ray [local|auto|ADDRESS] and --actors N."""
    ap.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS", help=RAY_HELP)
    ap.add_argument("--actors", type=int, default=None, metavar="N", help=ACTORS_HELP)


class RaySession:
    """`with RaySession(address) as s:` Ray up for the block (see the module docstring), down afterwards
    when this session started it; s.cpus: the cluster's CPUs."""

    def __init__(self, address: str = LOCAL, num_cpus: int | None = None):
        self.address = address or LOCAL
        self.num_cpus = num_cpus
        self.temp_dir: str | None = None
        self.started = False
        self._old_handlers: dict = {}
        self._reaper: subprocess.Popen | None = None
        self._env: dict[str, str] = {}  # environment variables this session set (removed at its end)

    def __enter__(self) -> "RaySession":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report, even when online
        running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
        if self.address == LOCAL and not running:
            self._private_token()  # before Ray reads its authentication settings
        try:
            import ray
        except ImportError:
            raise SystemExit("error: --ray needs Ray Data: pip install -r requirements-scale.txt") from None
        quiet_ray_logs()
        if not ray.is_initialized():
            self._trap_signals()
            try:
                if self.address == LOCAL:
                    # short path: Ray's unix sockets live under it (108 characters at most)
                    self.temp_dir = tempfile.mkdtemp(prefix="fl-ray-")
                    self._start_reaper()
                    ray.init(num_cpus=self.num_cpus or usable_cpus(), include_dashboard=False,
                             _temp_dir=self.temp_dir, log_to_driver=False, logging_level=logging.ERROR)
                else:
                    ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR,
                             runtime_env={"py_modules": [str(REPO_ROOT / p) for p in PACKAGES]})
                self.started = True
            except BaseException:
                self.__exit__(None, None, None)
                raise
        ctx = ray.data.DataContext.get_current()
        quiet_ray_logs()  # again: importing ray.data sets up its loggers
        ctx.enable_progress_bars = False  # the command draws its own (one line, on stderr)
        ctx.execution_options.preserve_order = True
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self

    def _private_token(self) -> None:
        """Ray's token authentication for the private Ray with a token that lives only in this command's
        processes: left to itself Ray would write one to ~/.ray/auth_token, which would outlive the command.
        A token or mode the user set (RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH) is left alone."""
        if any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
            return
        self._env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        os.environ.update(self._env)
        if "ray" in sys.modules:  # imported earlier: make it read the settings again, as ray.init itself does
            from ray._raylet import AuthenticationTokenLoader, Config

            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()

    def _start_reaper(self) -> None:
        """model.reaper for the temp folder: it ends the private Ray's processes and removes the folder once
        this process closes the pipe or is gone, however it ended (Ray's fatal-signal handler can abort this
        process on SIGTERM before any Python cleanup, and a closing raylet can write session files again after
        the removal in __exit__)."""
        self._reaper = subprocess.Popen([sys.executable, "-m", "model.reaper", self.temp_dir], cwd=REPO_ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)

    def _trap_signals(self) -> None:
        """SIGTERM and SIGHUP end the command like Ctrl-C, so that the cleanup below runs."""
        def _end(signum, _frame):
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[sig] = signal.signal(sig, _end)
            except ValueError:  # not the main thread: the caller handles signals
                pass

    def __exit__(self, *exc) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False
        if self._reaper is not None:  # its sweep: Ray's last processes ended, then the folder removed for good
            self._reaper.stdin.close()
            try:
                self._reaper.wait(timeout=REAPER_WAIT_S)
            except subprocess.TimeoutExpired:  # it ends by itself (model.reaper.DEADLINE_S)
                pass
            self._reaper = None
        if self.temp_dir:  # already gone after the sweep; here for a reaper that could not start
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()
        for key in self._env:
            os.environ.pop(key, None)
        self._env = {}

    def actors(self, wanted: int | None) -> int:
        """The pool's size: `wanted` (default: one per CPU), at most as many as the CPUs hold beside the
        read tasks (more would wait for a CPU forever)."""
        fit = max(1, min(self.cpus, int((self.cpus - READ_CPUS) / ACTOR_CPUS + 1e-9)))
        if wanted and wanted > fit:
            log.warning("%d actors asked for, %d fit on the cluster's %d CPUs: using %d", wanted, fit, self.cpus, fit)
        return min(wanted or fit, fit)


def quiet_ray_logs() -> None:
    """Ray's own lines on the command's stderr: errors only (its INFO and WARNING lines are about Ray: the
    execution plan, the temp folder, progress bars)."""
    for name in QUIET_RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's share, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def quiet_worker() -> None:
    """In an actor: no warnings (pydicom's quote tag values) and no library INFO lines in the worker logs."""
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.WARNING)


def read_file(row: dict) -> dict:
    """A Ray Data read task: the file's bytes, or the reason it cannot be read (model.preprocess.read_source)."""
    from model.preprocess import read_source, source_error

    try:
        data, error = read_source(row["path"]), None
    except Exception as exc:  # noqa: BLE001 - the reason becomes the file's row, as without Ray
        data, error = None, source_error(exc)
        if error is None:
            raise
    return {**row, "data": data, "error": error}


def run_pool(items: list[dict], actor_cls: type, actor_kwargs: dict, n_actors: int,
             read: Callable[[dict], dict] | None = None, progress: str | None = None) -> Iterator[dict]:
    """Stream `items` (dicts of plain values) through an actor pool of `actor_cls(**actor_kwargs)`, whose
    __call__(batch) returns {"json": [one JSON row per item]}; yields each item's decoded JSON row in input
    order. read: a task applied to each item first (Ray Data's read step). progress: a tqdm description."""
    import ray
    from tqdm import tqdm

    ds = ray.data.from_items(items)
    if read is not None:
        ds = ds.map(read, num_cpus=READ_CPUS)
    with warnings.catch_warnings():  # Ray 2.60 names no parameter for max_restarts yet (it is pinned here)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        # max_restarts=0: an actor that dies ends the run (not a transient fault here), and Ray does not
        # warn that a restarted actor could lose its constructor arguments
        ds = ds.map_batches(actor_cls, fn_constructor_kwargs=actor_kwargs, batch_size=BATCH_SIZE,
                            compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=ACTOR_CPUS,
                            max_restarts=0)
    with tqdm(total=len(items), desc=progress, unit="image", file=sys.stderr, disable=progress is None,
              mininterval=1) as bar:
        for row in ds.iter_rows():
            bar.update(1)
            yield json.loads(row["json"])


def absolute(path: str) -> str:
    """A path every worker can open (the workers' working folder is not the driver's)."""
    return str(Path(path).resolve())
