"""A worker subprocess: start, wait until it has partitions, stop, read its JSON log."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import orjson


class WorkerProcess:
    live: "set[WorkerProcess]" = set()  # started and not yet stopped, for the session's last sweep

    def __init__(self, argv: list[str], env: dict[str, str], *, log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        self.web_port = int(env["WEB_PORT"])
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
        full_env.update(env)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(argv, env=full_env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)
        WorkerProcess.live.add(self)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/ready", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self, timeout_s: float = 90.0) -> "WorkerProcess":
        """Block until /ready says partitions are assigned (polling an HTTP endpoint, not sleeping blind)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            if self.ready():
                return self
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout_s}s:\n{self.log_text()[-4000:]}")

    def wait_joined(self, timeout_s: float = 90.0) -> "WorkerProcess":
        """Block until the worker has joined its group (an assignment, possibly empty, was logged)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            if self.events("partitions.assigned"):
                return self
            time.sleep(0.2)
        raise AssertionError(f"worker did not join after {timeout_s}s:\n{self.log_text()[-4000:]}")

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 40.0) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        WorkerProcess.live.discard(self)
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def events(self, name: Optional[str] = None) -> list[dict[str, Any]]:
        """The worker's JSON log lines (optionally only those whose event is ``name``)."""
        out = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if name is None or doc.get("event") == name:
                out.append(doc)
        return out
