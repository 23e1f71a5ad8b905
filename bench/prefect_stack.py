"""A throw-away Prefect server and process workers on loopback, for the Prefect tests and bench/prefect_batch.py.

Everything lives under one folder (PREFECT_HOME, SQLite database, logs); every process is
started in its own session so `close()` ends exactly the processes it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

PREFECT = [sys.executable, "-m", "prefect"]
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectStack:
    def __init__(self, home: Path, env: dict[str, str] | None = None):
        self.home = Path(home)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        self.env = {**os.environ, **(env or {}), "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.url,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "2",
                    "PREFECT_CLI_WRAP_LINES": "false"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.spawn("server", ["server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"])
        self._wait_healthy(timeout=120)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_path(name), "ab")
        proc = subprocess.Popen([*PREFECT, *args], env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def prefect(self, *args: str, cwd: Path | None = None, timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*PREFECT, *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start_worker(self, name: str, pool: str, queue: str, workspaces: Path, limit: int = 1,
                     env: dict[str, str] | None = None) -> subprocess.Popen:
        """A process worker whose flow runs keep their workspaces and DVC cache under `workspaces` (one machine)."""
        return self.spawn(name, ["worker", "start", "--pool", pool, "--work-queue", queue, "--name", name,
                                 "--limit", str(limit), "--type", "process"],
                          env={"RPO_WORKSPACES": str(workspaces), **(env or {})})

    def kill_tree(self, name: str) -> None:
        """SIGKILL a worker and every process below it (its flow runs, DVC, the stage): a machine that dies."""
        proc = self.procs.pop(name)
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=30)

    def stop(self, *names: str, grace: float = 30) -> None:
        """SIGTERM every process group first, then SIGKILL those still running `grace` seconds later: one shared
        wait, since Prefect workers can outlast SIGTERM and waiting on each in turn cost `grace` per worker."""
        procs = [self.procs.pop(name) for name in names]
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def close(self) -> None:
        """Workers first (they report to the server), the server last."""
        self.stop(*[name for name in self.procs if name != "server"])
        if "server" in self.procs:
            self.stop("server")

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["server"].poll() is not None:
                raise RuntimeError(f"prefect server exited:\n{self.log_path('server').read_text()[-3000:]}")
            try:
                with _DIRECT.open(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"prefect server not healthy after {timeout} s")
