"""Veil services as real processes for fault tests: ``veil serve SERVICE`` on a fixed port
with its settings in the environment, killed with SIGKILL and started again on the same
port and database, each run's stderr kept in a file so that a failure can show it.

Each process leads its own session (process group), so that whatever it spawned (the
accountant's tight-figure workers) is ended with it at clean-up, never left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from services.runtime.client import wait_until_ready


class ServiceProcess:
    """One service, started (and restarted) as ``python -m services.cli serve SERVICE``."""

    def __init__(self, service: str, port: int, env: Mapping[str, str], logs: Path) -> None:
        self.service, self.port = service, port
        self.env = {**os.environ, **env}
        self.logs = logs
        self.runs: list[tuple[subprocess.Popen[bytes], Path]] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.runs, f"{self.service} was never started"
        return self.runs[-1][0]

    def alive(self) -> bool:
        return bool(self.runs) and self.proc.poll() is None

    def start(self, timeout: float = 90.0) -> ServiceProcess:
        """Start a run and wait until its readiness is SERVING."""
        assert not self.alive(), f"{self.service} is already running"
        self.logs.mkdir(parents=True, exist_ok=True)
        err = self.logs / f"{self.service}-{len(self.runs)}.err"
        with err.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", self.service],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                start_new_session=True,
            )
        self.runs.append((proc, err))
        try:
            wait_until_ready(self.target, timeout, alive=self.alive)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None
        return self

    def kill(self) -> None:
        """SIGKILL the running process (no drain, no clean-up of its own) and reap it."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the running process, if any, and end every run's process group."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for proc, _ in self.runs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its leftover children, if any

    def tail(self, chars: int = 2000) -> str:
        """The end of each run's stderr, headed by its exit status."""
        parts = []
        for i, (proc, err) in enumerate(self.runs):
            text = err.read_text(errors="replace") if err.exists() else ""
            parts.append(
                f"--- {self.service} run {i} (pid {proc.pid}, exit {proc.poll()}) stderr tail:\n"
                f"{text[-chars:]}"
            )
        return "\n".join(parts)
