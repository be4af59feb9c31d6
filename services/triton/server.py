"""Run the ``tritonserver`` bundled in ``nvidia-pytriton`` as a child process.

:class:`TritonServer` builds a workspace (a backend directory whose ``python/`` holds links to
the bundled python backend and the stub built for this Python), sets the environment the stub
needs, starts the server in its own process group, streams its log to ``<workspace>/
tritonserver.log`` (and to this logger at DEBUG), and waits for ``/v2/health/ready``.
``start()`` and ``stop()`` are idempotent; it is a context manager; a server that is still
running when the interpreter exits is stopped by an ``atexit`` guard, and (started from the
main thread) gets SIGTERM from the kernel if this process dies without cleaning up.

Why the environment (see :func:`server_environment`): the bundled stub links Debian's
``libpython3.11``, so the running interpreter's ``LIBDIR`` goes first on ``LD_LIBRARY_PATH``;
the stub runs ``model.py`` in the environment of the first ``python`` on ``PATH`` (this venv's).
That stub does not read ``PYTHONPATH`` (an embedded interpreter: only the venv's
site-packages), so each ``model.py`` puts the package its config names (``package_root``)
first on its path itself; ``PYTHONPATH`` still gets it, for stubs that do read it.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from services.triton.settings import IMPORT_ROOT, TritonSettings

log = logging.getLogger(__name__)

LOG_NAME = "tritonserver.log"
_PR_SET_PDEATHSIG = 1
_RUNNING: set[TritonServer] = set()


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready in time; the message quotes its log."""


def pytriton_home() -> Path:
    """``pytriton/tritonserver`` of the installed ``nvidia-pytriton`` wheel."""
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - depends on the extra being installed
        raise TritonStartError(
            "nvidia-pytriton is not installed (pip install veil[triton])"
        ) from exc
    return Path(pytriton.__file__).parent / "tritonserver"


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its python stubs need to run ``model.py`` here."""
    env = dict(os.environ if base is None else base)
    home = pytriton_home()
    libs = [str(sysconfig.get_config_var("LIBDIR")), str(home.parents[1] / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = _prepend(env.get("LD_LIBRARY_PATH"), *libs)
    env["PATH"] = _prepend(env.get("PATH"), str(Path(sys.executable).parent))
    env["PYTHONPATH"] = _prepend(env.get("PYTHONPATH"), str(IMPORT_ROOT))
    return env


def _prepend(current: str | None, *entries: str) -> str:
    rest = [p for p in (current or "").split(os.pathsep) if p and p not in entries]
    return os.pathsep.join([*entries, *rest])


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (tritonserver cannot pick one itself)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TritonServer:
    """One tritonserver child process: ``start()``, ``stop(grace)``, or ``with TritonServer():``."""

    def __init__(self, settings: TritonSettings | None = None) -> None:
        self.settings = settings or TritonSettings()
        self.workspace: Path | None = None
        self.grpc_port = self.http_port = self.metrics_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_thread: threading.Thread | None = None
        self._log_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._own_workspace = False
        self._lock = threading.RLock()

    # -- addresses ------------------------------------------------------------------------
    @property
    def _connect_host(self) -> str:
        return "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc.InferenceServerClient``."""
        return f"{self._connect_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._connect_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._connect_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.workspace / LOG_NAME if self.workspace is not None else None

    def running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def is_ready(self, timeout: float = 1.0) -> bool:
        """``GET /v2/health/ready`` answered 200: the server and every loaded model are ready."""
        if not self.running():
            return False
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=timeout) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines tritonserver (and its stubs) printed."""
        return "\n".join(list(self._log_tail)[-lines:])

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> TritonServer:
        """Launch tritonserver and wait until it is ready. Idempotent.

        Raises :class:`TritonStartError` (after stopping the child) if it exits or is not
        ready within ``startup_timeout_s``; the message carries its errors and log tail.
        """
        with self._lock:
            if self._process is not None:
                return self
            s = self.settings
            self._prepare_workspace()
            self.grpc_port, self.http_port, self.metrics_port = (
                p or free_port(s.host if s.host != "0.0.0.0" else "127.0.0.1")
                for p in (s.grpc_port, s.http_port, s.metrics_port)
            )
            command = self.command()
            log.info("starting tritonserver: %s", " ".join(command))
            started = time.monotonic()
            self._process = subprocess.Popen(
                command,
                env=server_environment(),
                cwd=self.workspace,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() can kill the stubs too
                preexec_fn=_die_with_parent if _on_main_thread() else None,
            )
            _RUNNING.add(self)
            self._log_thread = threading.Thread(
                target=self._pump_log, name="tritonserver-log", daemon=True
            )
            self._log_thread.start()
            try:
                self._wait_ready(started)
            except BaseException:
                self.stop(grace=2.0)
                raise
            log.info(
                "tritonserver ready in %.1fs: grpc %s, http %s, metrics %s",
                time.monotonic() - started,
                self.grpc_url,
                self.http_url,
                self.metrics_url,
            )
            return self

    def command(self) -> list[str]:
        """The tritonserver command line for the current settings and ports."""
        s = self.settings
        assert self.workspace is not None
        binary = s.tritonserver or pytriton_home() / "bin" / "tritonserver"
        command = [
            str(binary),
            f"--model-repository={Path(s.model_repository).resolve()}",
            f"--backend-directory={self.workspace / 'backends'}",
            f"--model-control-mode={s.model_control_mode}",
            f"--grpc-address={s.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={s.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={s.host}",
            f"--metrics-port={self.metrics_port}",
            f"--allow-gpu-metrics={'true' if s.gpu_metrics else 'false'}",
            f"--log-verbose={s.log_verbose}",
            f"--exit-timeout-secs={max(1, int(s.shutdown_grace_s))}",
        ]
        if s.model_control_mode == "explicit":
            command += [f"--load-model={name}" for name in s.load_models]
        return command + list(s.extra_args)

    def _prepare_workspace(self) -> None:
        s = self.settings
        if s.workspace is None:
            self.workspace = Path(tempfile.mkdtemp(prefix="veil-triton-"))
            self._own_workspace = True
        else:
            self.workspace = Path(s.workspace).resolve()
            self.workspace.mkdir(parents=True, exist_ok=True)
        home = pytriton_home()
        backend = self.workspace / "backends" / "python"
        shutil.rmtree(backend, ignore_errors=True)
        backend.mkdir(parents=True)
        # Links, not copies: the stub finds the wheel's libraries through an $ORIGIN rpath.
        for item in (home / "backends" / "python").iterdir():
            if not item.name.startswith("__"):
                (backend / item.name).symlink_to(item)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise TritonStartError(f"no python backend stub for Python {version} in {stub.parent}")
        (backend / stub.name).symlink_to(stub)

    def _pump_log(self) -> None:
        process, path = self._process, self.log_path
        assert process is not None and process.stdout is not None and path is not None
        with path.open("ab") as sink:
            for raw in iter(process.stdout.readline, b""):
                sink.write(raw)
                sink.flush()
                line = raw.decode(errors="replace").rstrip()
                self._log_tail.append(line)
                log.debug("tritonserver: %s", line)

    def _wait_ready(self, started: float) -> None:
        assert self._process is not None
        deadline = started + self.settings.startup_timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                if self._log_thread is not None:
                    self._log_thread.join(timeout=5)
                raise TritonStartError(self._failure(f"tritonserver exited with code {code}"))
            if self.is_ready(timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise TritonStartError(
                    self._failure(
                        f"tritonserver not ready after {self.settings.startup_timeout_s}s"
                    )
                )
            time.sleep(0.1)

    def _failure(self, headline: str) -> str:
        lines = list(self._log_tail)
        errors = [ln for ln in lines if ln.startswith("E") or ln.startswith("error:")]
        where = "" if self._own_workspace else f" (log: {self.log_path})"
        parts = [headline + where]
        if errors:
            parts += ["errors:", *errors[-20:]]
        parts += ["log tail:", self.log_tail(30)]
        return "\n".join(parts)

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM, wait ``grace`` (default ``shutdown_grace_s``), then SIGKILL the process group;
        remove a temporary workspace. Idempotent. Returns the server's exit code."""
        with self._lock:
            process, self._process = self._process, None
            code = None
            if process is not None:
                _RUNNING.discard(self)
                code = _terminate(
                    process, self.settings.shutdown_grace_s if grace is None else grace
                )
                if self._log_thread is not None:
                    self._log_thread.join(timeout=5)
                    self._log_thread = None
                log.info("tritonserver (pid %d) stopped with code %s", process.pid, code)
            if self._own_workspace and self.workspace is not None:
                shutil.rmtree(self.workspace, ignore_errors=True)
                self.workspace = None
                self._own_workspace = False
            return code

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server exits (or ``timeout``); its exit code, or None if running."""
        process = self._process
        if process is None:
            return None
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _StopRequested(Exception):
    """Raised by the signal handler to interrupt a start that is still waiting."""


def serve_forever(server: TritonServer) -> int:
    """Start ``server`` and run until SIGTERM/SIGINT (0) or until it dies or fails to start (1).

    For ``veil triton``: call from the main thread (it installs signal handlers).
    """
    stop, started = threading.Event(), threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping tritonserver", signum)
        stop.set()
        if not started.is_set():
            raise _StopRequested  # interrupts start(), which stops the child on its way out

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start()
            started.set()
        except _StopRequested:
            return 0
        except TritonStartError as exc:
            log.error("%s", exc)
            return 1
        while not stop.is_set() and server.running():
            stop.wait(0.5)
        if stop.is_set():
            server.stop()
            return 0
        log.error("tritonserver died (code %s)\n%s", server.wait(0), server.log_tail())
        server.stop()
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _terminate(process: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM the server, SIGKILL its whole group after ``grace``; reap stragglers (stubs)."""
    pgid = process.pid  # start_new_session=True: the server leads its own group
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("tritonserver did not stop within %.1fs; killing it", grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return process.wait()


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM the server when this process dies (Linux only).

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is set only when the
    server is started from the main thread.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(grace=5.0)
