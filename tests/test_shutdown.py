"""Every way out of a worker is bounded: SIGTERM with the broker gone, a start that fails, the
supervisor of several processes, and the deadline that backs them all."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import REPO
from tests.kafka_helpers import (
    consume_all,
    create_topic,
    ephemeral_ports,
    free_port,
    produce,
    broker,
    stop_broker,
    until,
)
from worker.settings import Settings
from worker.supervisor import Supervisor

SHUTDOWN_TIMEOUT_S = 10
EXIT_SLACK_S = 5  # the interpreter's own exit, on a busy 2-core machine


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A broker of this test's own, which it may stop."""
    with broker(tmp_path / "kafka") as env:
        yield env


@pytest.mark.kafka
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_sigterm_with_the_broker_unreachable_ends_within_the_bound(
    worker_factory, own_broker, topics, guarantee
) -> None:
    """Faust's consumer thread and LeaveGroup wait for a coordinator that is gone (63 s measured
    before the fix, past the chart's grace period): the shutdown must end within SHUTDOWN_TIMEOUT_S."""
    bootstrap = own_broker["BOOTSTRAP"]
    await create_topic(bootstrap, topics["input_topic"], 2)
    worker = worker_factory(
        **topics, kafka_bootstrap_servers=bootstrap, processing_guarantee=guarantee,
        shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
    ).wait_ready()
    await produce(bootstrap, topics["input_topic"], [(None, orjson.dumps({"text": f"t{i}"})) for i in range(10)])
    assert len(await consume_all(bootstrap, topics["output_topic"], expected=10)) == 10

    await asyncio.to_thread(stop_broker, own_broker)
    await until(lambda: worker.events("lag.unavailable"), 60, "the worker to notice that the broker is gone")
    started = time.monotonic()
    worker.terminate()
    status = await asyncio.to_thread(worker.wait_exit, 120)
    seconds = time.monotonic() - started
    print(f"\nexit {status} after {seconds:.1f} s ({guarantee})")
    assert seconds < SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S, worker.log_text()[-3000:]
    assert status == 0, "asked to stop, it stopped: not a failure"
    assert [e["reason"] for e in worker.events("shutdown.started")] == ["SIGTERM"]


@pytest.mark.kafka
async def test_a_start_on_a_busy_web_port_ends_at_once_with_one_clear_line(worker_factory, topics) -> None:
    """Before the model loads, and whatever Faust would do with a web server it can't start."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = worker_factory(**topics, web_port=port)
        status = await asyncio.to_thread(worker.wait_exit, 60)
    assert status == 2, worker.log_text()[-3000:]
    lines = worker.events("web.port_unavailable")
    assert len(lines) == 1 and f"WEB_PORT {port}" in lines[0]["error"]
    assert not worker.events("model.loaded"), "the port is checked before the model loads"
    assert "Traceback" not in worker.log_text()


def test_the_exit_deadline_ends_a_process_that_hangs(tmp_path: Path) -> None:
    """The backstop itself: armed, it ends the process with the given status, one line saying so."""
    script = (
        "import time\n"
        "from worker.ops import logs\n"
        "from worker.ops.shutdown import ExitDeadline\n"
        "logs.configure('info', 'json')\n"
        "deadline = ExitDeadline(1.0)\n"
        "deadline.arm('a test', 3)\n"
        "deadline.arm('a second reason changes nothing', 0)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert time.monotonic() - started < 30
    events = [orjson.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    forced = [e for e in events if e["event"] == "shutdown.forced"]
    assert len(forced) == 1 and forced[0]["reason"] == "a test" and forced[0]["status"] == 3


async def test_the_supervisor_stops_within_the_bound_without_blocking_its_loop(tmp_path: Path) -> None:
    """Children that ignore SIGTERM are killed at the end of SHUTDOWN_TIMEOUT_S, and the parent's
    event loop (its /health and /ready pages) keeps running meanwhile."""
    marks = tmp_path / "marks"
    marks.mkdir()
    child = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\n"
        "time.sleep(120)\n"
    )
    settings = Settings(worker_processes=2, shutdown_timeout_s=5, data_dir=tmp_path / "data", web_port=free_port())
    supervisor = Supervisor(settings, [sys.executable, "-c", child, str(marks)])
    supervisor.start()
    try:
        await until(lambda: len(os.listdir(marks)) == 2, 30, "both children to ignore SIGTERM")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.1)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        started = time.monotonic()
        status = await supervisor.stop()
        seconds = time.monotonic() - started
        ticker.cancel()
        left = [c.pid for c in supervisor.children if c.poll() is None]
    finally:
        supervisor.kill_all()
    assert seconds < settings.shutdown_timeout_s + 1
    assert left == [], "stop() returned with children still running"
    assert status == -signal.SIGKILL
    assert ticks >= seconds / 0.1 * 0.5, f"the event loop stood still: {ticks} ticks in {seconds:.1f} s"


def test_brokers_listen_below_the_ephemeral_port_range(kafka_env: dict[str, str]) -> None:
    """A broker restarted on an ephemeral port can find it taken by a reconnecting client's own
    source port (a TCP self-connect): the session broker, restarted by the fault tests, must not."""
    low, _ = ephemeral_ports()
    port = int(kafka_env["BOOTSTRAP"].rsplit(":", 1)[1])
    assert port < low and int(kafka_env["KAFKA_CONTROLLER_PORT"]) < low
