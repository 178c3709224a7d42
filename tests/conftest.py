"""Shared fixtures: a real Kafka broker for the session, a tiny random model, worker processes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401 - see below
import pytest

from tests.kafka_helpers import broker, free_port
from worker.bench.harness import WorkerProcess

REPO = Path(__file__).resolve().parents[1]
FAULT_ROWS = REPO / ".cache" / "test-reports" / "faults"  # one JSON file per fault scenario run
# hypothesis is imported above, at a shallow stack: otherwise its pytest plugin imports it
# inside the terminal summary, where the assertion rewriter's ast.parse trips CPython
# 3.11.7's recursion bookkeeping (SystemError: AST constructor recursion depth mismatch)
# whenever a run collects no hypothesis test.


@pytest.fixture(scope="session", autouse=True)
def no_worker_outlives_the_session() -> Iterator[None]:
    """Last line of defence: a worker whose test never stopped it is killed, and said so."""
    yield
    for proc in list(WorkerProcess.live):
        if proc.proc.poll() is None:
            print(f"\nkilling a worker left running by its test (log: {proc.log_path})")
            proc.proc.kill()
        proc.stop()


@pytest.fixture(scope="session")
def kafka_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A single-node KRaft broker of the tests' own (own data dir, free ports), via deploy/local/kafka."""
    # The broker aborts transactions that outlive their timeout on this interval (default 10 s,
    # which would make the pause scenario in test_faults hit an open transaction only now and then).
    extra = "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000"
    with broker(tmp_path_factory.mktemp("kafka-data"), extra) as env:
        yield env


@pytest.fixture(scope="session")
def bootstrap(kafka_env: dict[str, str]) -> str:
    return kafka_env["BOOTSTRAP"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.model.random_model import write_random_model

    return write_random_model(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=1)


@pytest.fixture
def topics() -> dict[str, str]:
    """Fresh topic and group names, so tests never see each other's records."""
    run = uuid.uuid4().hex[:8]
    return {"input_topic": f"in-{run}", "output_topic": f"out-{run}", "group_id": f"g-{run}"}


@pytest.fixture
def worker_factory(bootstrap: str, tiny_model: Path, tmp_path: Path) -> Iterator[object]:
    """Start worker processes; every one started is stopped at the end of the test."""
    started: list[WorkerProcess] = []
    closed = False

    def start(*, fault_flag: Path | None = None, faulty: bool = False, **settings: object) -> WorkerProcess:
        # The event loop is shared by the session: a task of a test that was interrupted
        # (pytest-timeout) can outlive it and must not start workers nobody will stop.
        if closed:
            raise RuntimeError("worker_factory used after its test ended")
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "MODEL": str(tiny_model),
            "WEB_PORT": str(free_port()),
            "WEB_HOST": "127.0.0.1",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "debug",
            "DATA_DIR": str(tmp_path / f"data-{len(started)}"),
            "TOPIC_PARTITIONS": "4",
            "STATS_INTERVAL_S": "5",
        }
        env.update({key.upper(): str(value) for key, value in settings.items()})
        argv = [sys.executable, "-m", "worker", "run"]
        if fault_flag is not None:
            env["FAULT_FLAG_FILE"] = str(fault_flag)
        if fault_flag is not None or faulty:
            argv = [sys.executable, str(REPO / "tests" / "fault_worker.py"), "run"]
        proc = WorkerProcess(argv, env, log_path=tmp_path / f"worker-{len(started)}.log", cwd=REPO)
        started.append(proc)
        return proc

    yield start
    closed = True
    for proc in started:  # SIGTERM all first, so that they shut down side by side
        proc.terminate()
    for proc in started:
        proc.stop(timeout_s=30)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the run itself, not one of its xdist workers
        shutil.rmtree(FAULT_ROWS, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fault-scenario figures (tests/test_faults.py) as a table, and keep them as JSON.

    Each scenario writes its row to a file of its own (the scenarios may run in other
    processes, under xdist); this reads them all.
    """
    rows = [json.loads(p.read_text()) for p in sorted(FAULT_ROWS.glob("*.json"))] if FAULT_ROWS.is_dir() else []
    if not rows:
        return
    cols = ["scenario", "guarantee", "produced", "scored", "lost", "duplicated", "restarts_by_supervisor",
            "transactions_interrupted", "seconds"]
    terminalreporter.section("fault scenarios (independent read_committed consumer)")
    terminalreporter.write_line(" | ".join(cols))
    for row in rows:
        terminalreporter.write_line(" | ".join(str(row.get(c, "")) for c in cols))
    (FAULT_ROWS.parent / "faults.json").write_text(json.dumps(rows, indent=2))


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """An environment for running the CLI: no inherited settings, offline hub, wide plain help output."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
        "TERM": "dumb",
        "COLUMNS": "220",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LOG_FORMAT": "json",
        "DATA_DIR": str(tmp_path / "data"),
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(free_port()),
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests on a Kubernetes control plane last: CI builds its binaries while the rest runs (.ci/run)."""
    items.sort(key=lambda item: item.get_closest_marker("kube") is not None)
