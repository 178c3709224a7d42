"""Shared fixtures: a real Kafka broker for the session, a tiny random model, worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka_helpers import free_port
from tests.worker_process import WorkerProcess

REPO = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO / "deploy" / "local" / "kafka"


@pytest.fixture(scope="session")
def kafka_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A single-node KRaft broker of the tests' own (own data dir, free ports), via deploy/local/kafka."""
    env = {
        **os.environ,
        "KAFKA_DATA_DIR": str(tmp_path_factory.mktemp("kafka-data")),
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    started = subprocess.run(
        [str(KAFKA_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600
    )
    if started.returncode != 0:
        pytest.fail(f"local Kafka did not start:\n{started.stdout}\n{started.stderr}")
    env["BOOTSTRAP"] = started.stdout.strip().splitlines()[-1]
    try:
        yield env
    finally:
        subprocess.run([str(KAFKA_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def bootstrap(kafka_env: dict[str, str]) -> str:
    return kafka_env["BOOTSTRAP"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.random_model import write_random_model

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

    def start(*, fault_flag: Path | None = None, faulty: bool = False, **settings: object) -> WorkerProcess:
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
    for proc in started:
        proc.stop()
