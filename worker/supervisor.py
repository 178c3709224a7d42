"""WORKER_PROCESSES=N: N worker processes in one container, sharing its device, supervised.

One process carries what its event loop and its tokenizer can (README,
"Performance"); a large GPU scores far more. Instead of one pod per share of
the GPU, a pod can run N group members: each child is an ordinary worker
(``sentiment-worker run`` with WORKER_PROCESSES=1) with its own model copy,
consumer and web port on 127.0.0.1; this parent checks Kafka first, starts
them, and serves the pod's pages on WEB_PORT:

- ``/health``: every child is alive and answers its own /health;
- ``/ready``: every child is ready (a child with no partition is not: give the
  input topic at least as many partitions as processes times replicas);
- ``/metrics``: the children's metrics merged (prometheus_client's
  multiprocess mode; each child writes its values under PROMETHEUS_MULTIPROC_DIR).

If a child exits, the parent stops the others and exits non-zero, so the
orchestrator restarts the whole pod; SIGTERM is passed on to every child and
the parent exits with the first non-zero status among them. Stopping is
bounded as a whole by SHUTDOWN_TIMEOUT_S (the children get a little less of
it, so they end on their own first) and never blocks the event loop, which
keeps answering /health meanwhile; a child still there at the end is killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from worker.ops import logs
from worker.settings import Settings

log = logs.get_logger(__name__)

POLL_S = 0.5
CHILD_MARGIN_S = 3.0  # a child's SHUTDOWN_TIMEOUT_S is the parent's minus this


def _child_env(settings: Settings, index: int, metrics_dir: Path) -> dict[str, str]:
    env = {**os.environ, **settings.as_env()}
    data_dir = settings.data_dir / f"process-{index}"
    data_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        WORKER_PROCESSES="1",
        WEB_HOST="127.0.0.1",
        WEB_PORT=str(settings.web_port + 1 + index),
        DATA_DIR=str(data_dir),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        SHUTDOWN_TIMEOUT_S=str(max(5.0, settings.shutdown_timeout_s - CHILD_MARGIN_S)),
    )
    if settings.group_instance_id:
        env["GROUP_INSTANCE_ID"] = f"{settings.group_instance_id}-{index}"
    return env


def _page(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class Supervisor:
    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self.children: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="sentiment-metrics-"))

    def start(self) -> None:
        for index in range(self.settings.worker_processes):
            env = _child_env(self.settings, index, self._metrics_dir)
            self.ports.append(int(env["WEB_PORT"]))
            self.children.append(subprocess.Popen(self.argv, env=env))
            log.info("process.started", index=index, pid=self.children[-1].pid, web_port=self.ports[-1])

    async def stop(self) -> int:
        """SIGTERM to every child, then wait for all of them together, within SHUTDOWN_TIMEOUT_S.

        A child still running then is killed. Returns the first non-zero status, else 0.
        """
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self._wait_all, self.settings.shutdown_timeout_s - 1.0)
        return self.kill_all()

    def _wait_all(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        for child in self.children:
            try:
                child.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    def kill_all(self) -> int:
        """Kill the children still running; the first non-zero status of all, else 0."""
        status = 0
        for index, child in enumerate(self.children):
            if child.poll() is None:
                log.error("process.killed", index=index, pid=child.pid, reason="still running at the end of the shutdown")
                child.kill()
            code = child.wait()
            status = status or code
        return status

    def exited(self) -> Optional[tuple[int, int]]:
        """(index, status) of a child that exited, if any."""
        for index, child in enumerate(self.children):
            code = child.poll()
            if code is not None:
                return index, code
        return None

    def health(self) -> bool:
        return all(child.poll() is None for child in self.children) and all(_page(p, "/health") for p in self.ports)

    def ready(self) -> bool:
        return all(_page(p, "/ready") for p in self.ports)

    def metrics(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self._metrics_dir))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    async def serve(self) -> int:
        """The pod's pages, and the watch over the children, until SIGTERM or a child exits."""
        from aiohttp import web

        async def health(request: Any) -> Any:
            ok = await asyncio.to_thread(self.health)
            return web.json_response({"status": "ok" if ok else "failing"}, status=200 if ok else 503)

        async def ready(request: Any) -> Any:
            ok = await asyncio.to_thread(self.ready)
            return web.json_response({"ready": ok, "processes": len(self.children)}, status=200 if ok else 503)

        async def metrics(request: Any) -> Any:
            body, content_type = await asyncio.to_thread(self.metrics)
            return web.Response(body=body, headers={"Content-Type": content_type})

        app = web.Application()
        app.add_routes([web.get("/health", health), web.get("/ready", ready), web.get("/metrics", metrics)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.web_host, self.settings.web_port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            while not stop.is_set():
                gone = self.exited()
                if gone is not None:
                    index, code = gone
                    log.error("process.exited", index=index, status=code, action="stopping the others")
                    await self.stop()
                    return code or 1
                try:
                    await asyncio.wait_for(stop.wait(), POLL_S)
                except asyncio.TimeoutError:
                    pass
            log.info("processes.stopping", count=len(self.children))
            return await self.stop()
        finally:
            await runner.cleanup()


def supervise(settings: Settings, argv: Optional[list[str]] = None) -> int:
    """Run WORKER_PROCESSES children (``sentiment-worker run``); returns the exit status for the container."""
    supervisor = Supervisor(settings, argv or [sys.executable, "-m", "worker", "run"])
    supervisor.start()
    try:
        return asyncio.run(supervisor.serve())
    finally:
        supervisor.kill_all()  # none is left running, whatever happened above
