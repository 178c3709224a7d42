"""The CLI as an operator meets it: bad start-ups end with exit 2 and one clear line; model tools work.

Every command runs as a real subprocess with an environment built here from scratch, so nothing of
the test process (KAFKA_* and the like) leaks in; ``subprocess.run(timeout=...)`` kills and reaps a
process that overstays.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import REPO
from tests.kafka_helpers import consume_all, create_topic, end_offsets, free_port, topic_names, until
from worker.pipeline.codec import InputRecord, decode
from worker.settings import InputFormat, Settings

CLI = [sys.executable, "-m", "worker"]
EXIT_CONFIG = 2


def cli(args: list[str], env: dict[str, str], *, timeout: float = 60, stdin: str | None = None,
        argv0: list[str] = CLI) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv0, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    detail = f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == EXIT_CONFIG, detail
    assert any(line.startswith("error: ") for line in proc.stderr.splitlines()), detail
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, detail
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in stderr\n{detail}"


def log_events(stdout: str) -> list[str]:
    return [orjson.loads(line).get("event") for line in stdout.splitlines() if line.startswith("{")]


def dead_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound and released, so no one else took it)."""
    return free_port()


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        ({"BATCH_MAX_SIZE": "0"}, ["BATCH_MAX_SIZE", "greater than or equal to 1"]),
        ({"KAFKA_BOOTSTRAP_SERVERS": "nohostport"}, ["KAFKA_BOOTSTRAP_SERVERS", "'nohostport' is not host:port"]),
        ({"KAFKA_BOOTSTRAP_SERVERS": "broker:ninety"}, ["KAFKA_BOOTSTRAP_SERVERS", "is not host:port"]),
        ({"DEVICE": "tpu"}, ["DEVICE", "must be auto, cpu, cuda, cuda:N or mps"]),
        ({"INPUT_TOPIC": "same-topic", "OUTPUT_TOPIC": "same-topic"}, ["differ"]),
        ({"PRECISION": "fp8"}, ["PRECISION"]),
        ({"MAX_LENGTH": "4"}, ["MAX_LENGTH"]),
        ({"CREATE_TOPICS": "maybe"}, ["CREATE_TOPICS"]),
        ({"BATCH_MAX_SIZE": "0", "DEVICE": "tpu"}, ["BATCH_MAX_SIZE", "DEVICE"]),  # every problem at once
    ],
)
def test_invalid_settings_are_refused(base_env: dict[str, str], settings: dict[str, str], needles: list[str]) -> None:
    proc = cli(["run"], {**base_env, "MODEL": "/nonexistent", **settings}, timeout=30)
    assert_refused(proc, "invalid settings", *needles)
    assert "worker.starting" not in log_events(proc.stdout), "settings must be checked before anything starts"


@pytest.mark.parametrize(
    ("variable", "setting"),
    [("BATCH_MAX_SZE", "BATCH_MAX_SIZE"), ("MAX_BATCH_SIZE", "BATCH_MAX_SIZE"), ("LOGLEVEL", "LOG_LEVEL"),
     ("precission", "PRECISION")],
)
def test_a_misspelt_setting_stops_the_start(base_env: dict[str, str], variable: str, setting: str) -> None:
    """A setting a few edits away, or its words in another order, would be ignored without a word."""
    proc = cli(["run"], {**base_env, "MODEL": "/nonexistent", variable: "8"}, timeout=30)
    assert_refused(proc, f"{variable} looks like a misspelt {setting}", "ALLOW_ENV")
    assert len([line for line in proc.stderr.splitlines() if variable in line]) == 1
    assert "worker.starting" not in log_events(proc.stdout)


def test_allow_env_lets_a_look_alike_through(base_env: dict[str, str]) -> None:
    """Named in ALLOW_ENV, the variable is someone else's: the start goes on (to the missing model here)."""
    env = {**base_env, "MODEL": "/nonexistent", "BATCH_MAX_SZE": "8", "ALLOW_ENV": "BATCH_MAX_SZE",
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{dead_port()}", "KAFKA_TIMEOUT_S": "1"}
    proc = cli(["run"], env, timeout=60)
    assert_refused(proc, "Cannot reach Kafka")
    assert "misspelt" not in proc.stderr
    # Well-known variables of other software are never taken for ours (OpenSSL's CA bundle).
    env = {**env, "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}
    del env["ALLOW_ENV"], env["BATCH_MAX_SZE"]
    proc = cli(["run"], env, timeout=60)
    assert_refused(proc, "Cannot reach Kafka")
    assert "misspelt" not in proc.stderr


def test_flag_is_validated_and_wins_over_env(base_env: dict[str, str]) -> None:
    proc = cli(["run", "--batch-max-size", "0"], {**base_env, "BATCH_MAX_SIZE": "10"}, timeout=30)
    assert_refused(proc, "invalid settings", "BATCH_MAX_SIZE")


def test_missing_model_directory(base_env: dict[str, str], bootstrap: str) -> None:
    # Bad env values overridden by good flags are no error: start-up goes on to the model (the flag wins).
    run = uuid.uuid4().hex[:8]
    env = {**base_env, "DEVICE": "tpu", "BATCH_MAX_SIZE": "0", "MODEL": "/nonexistent",
           "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "INPUT_TOPIC": f"in-{run}", "OUTPUT_TOPIC": f"out-{run}"}
    proc = cli(["run", "--device", "cpu", "--batch-max-size", "8"], env, timeout=60)
    assert_refused(proc, "MODEL='/nonexistent'", "no such directory")
    assert "invalid settings" not in proc.stderr
    events = log_events(proc.stdout)
    assert "topics.ready" in events and "model.load_failed" in events


# ----------------------------------------------------------------------------- Kafka


def test_unreachable_broker(base_env: dict[str, str], tiny_model: Path) -> None:
    port = dead_port()
    env = {**base_env, "MODEL": str(tiny_model), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "KAFKA_TIMEOUT_S": "3"}
    started = time.monotonic()
    proc = cli(["run"], env, timeout=90)
    assert_refused(proc, f"Cannot reach Kafka at 127.0.0.1:{port}", "KAFKA_BOOTSTRAP_SERVERS")
    assert time.monotonic() - started < 60
    assert "KafkaConnectionError: KafkaConnectionError" not in proc.stderr, proc.stderr
    events = log_events(proc.stdout)
    # Kafka is checked before the model is loaded: a wrong address is reported in seconds.
    assert "kafka.setup_failed" in events and "model.loaded" not in events
    assert "topics.ready" not in events


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never answers a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_silent_broker_times_out_after_kafka_timeout(base_env: dict[str, str], silent_listener: int) -> None:
    # produce runs the same start-up check as run, without loading a model first.
    env = {**base_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{silent_listener}", "KAFKA_TIMEOUT_S": "2"}
    started = time.monotonic()
    proc = cli(["produce", "hello"], env, timeout=60)
    assert_refused(proc, f"127.0.0.1:{silent_listener}")
    assert time.monotonic() - started < 30, "KAFKA_TIMEOUT_S must bound the wait for a silent broker"


def _fresh_topics() -> tuple[str, str]:
    run = uuid.uuid4().hex[:8]
    return f"in-{run}", f"out-{run}"


@pytest.mark.kafka
async def test_missing_topics_without_create_topics(base_env: dict[str, str], tiny_model: Path, bootstrap: str) -> None:
    input_topic, output_topic = _fresh_topics()
    await create_topic(bootstrap, input_topic, 1)
    env = {
        **base_env,
        "MODEL": str(tiny_model),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TIMEOUT_S": "10",
        "INPUT_TOPIC": input_topic,
        "OUTPUT_TOPIC": output_topic,
        "GROUP_ID": f"g-{input_topic}",
        "CREATE_TOPICS": "false",
    }
    proc = await asyncio.to_thread(cli, ["run"], env, timeout=90)
    assert_refused(proc, "do not exist", "CREATE_TOPICS")
    found = re.search(r"Topic\(s\) (.+?) do not exist", proc.stderr)
    assert found, proc.stderr
    missing = set(found.group(1).split(", "))
    assert output_topic in missing and input_topic not in missing
    assert "topics.ready" not in log_events(proc.stdout)
    topics = await topic_names(bootstrap)
    assert input_topic in topics
    assert not missing & topics, "the start-up check must not create (or auto-create) missing topics"


@pytest.mark.kafka
async def test_produce_refuses_missing_topic_without_create(base_env: dict[str, str], bootstrap: str) -> None:
    topic, _ = _fresh_topics()
    env = {**base_env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TIMEOUT_S": "10"}
    proc = await asyncio.to_thread(cli, ["produce", "--input-topic", topic, "--create-topics", "false", "hello"], env)
    assert_refused(proc, topic, "do not exist")
    assert topic not in await topic_names(bootstrap)


@pytest.mark.kafka
async def test_produce_with_flags_over_env(base_env: dict[str, str], bootstrap: str) -> None:
    topic, _ = _fresh_topics()
    # The env says nonsense; the flags win.
    env = {**base_env, "KAFKA_BOOTSTRAP_SERVERS": "nohostport", "INPUT_TOPIC": "wrong-topic"}
    args = ["produce", "--kafka-bootstrap-servers", bootstrap, "--input-topic", topic, "--topic-partitions", "2",
            "I loved it", "  spaced  ", "ünïcödé ✓"]
    proc = await asyncio.to_thread(cli, args, env)
    assert proc.returncode == 0, proc.stderr
    assert f"produced 3 record(s) to {topic}" in proc.stderr
    received = await consume_all(bootstrap, topic, expected=3, timeout_s=30, settle_s=0.3)
    records = sorted((decode(r.value, InputFormat.json) for r in received), key=lambda rec: rec.text)
    assert records == [InputRecord(text=t) for t in sorted(["I loved it", "  spaced  ", "ünïcödé ✓"])]
    assert all(r.key is None for r in received)
    assert sorted(await end_offsets(bootstrap, topic)) == [0, 1]  # --topic-partitions 2 won
    assert "wrong-topic" not in await topic_names(bootstrap)


@pytest.mark.kafka
async def test_produce_jsonl_and_raw_from_stdin(base_env: dict[str, str], bootstrap: str) -> None:
    topic, _ = _fresh_topics()
    env = {**base_env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "INPUT_TOPIC": topic, "TOPIC_PARTITIONS": "1"}
    lines = '{"text": "a", "id": "k1"}\n\n   \n{"text": "b"}\nnot json\n'
    proc = await asyncio.to_thread(cli, ["produce", "--format", "jsonl", "--file", "-"], env, stdin=lines)
    assert proc.returncode == 0, proc.stderr
    proc = await asyncio.to_thread(cli, ["produce", "--format", "raw"], env, stdin="raw line\r\n")
    assert proc.returncode == 0, proc.stderr
    received = sorted(await consume_all(bootstrap, topic, expected=4, timeout_s=30, settle_s=0.3), key=lambda r: r.offset)
    assert [(r.key, r.value) for r in received] == [
        (b"k1", b'{"text": "a", "id": "k1"}'),
        (None, b'{"text": "b"}'),
        (None, b"not json"),
        (None, b"raw line"),
    ]


# ----------------------------------------------------------------------------- model tools


def test_init_random_then_check(base_env: dict[str, str], tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("sentiment-worker")
    argv0 = [str(script)] if script.exists() else CLI
    target = tmp_path / "random-model"
    proc = cli(["model", "init-random", str(target), "--size", "tiny"], base_env, timeout=120, argv0=argv0)
    assert proc.returncode == 0, proc.stderr
    assert "predictions mean nothing" in proc.stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "RANDOM_WEIGHTS"):
        assert (target / name).is_file(), f"{name} missing: {sorted(p.name for p in target.iterdir())}"
    assert "mean nothing" in (target / "RANDOM_WEIGHTS").read_text()
    assert not list(target.glob("*.bin")), "safetensors only"

    proc = cli(["model", "check", "--model", str(target)], base_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "labels ['NEGATIVE', 'POSITIVE']" in proc.stdout
    assert "revision sha256:" in proc.stdout
    assert "random weights" in proc.stdout
    assert proc.stdout.count("I loved this, wonderful!") == 1


def test_init_random_rejects_unknown_size(base_env: dict[str, str], tmp_path: Path) -> None:
    proc = cli(["model", "init-random", str(tmp_path / "m"), "--size", "huge"], base_env, timeout=30)
    assert proc.returncode == 2
    assert "huge" in proc.stderr
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- help


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_run_help_lists_every_setting(base_env: dict[str, str]) -> None:
    proc = cli(["run", "--help"], base_env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert len(Settings.model_fields) > 20
    missing = [name for name in Settings.model_fields if _flag(name) not in proc.stdout]
    assert not missing, f"run --help lacks {missing}"
    assert "--help" in proc.stdout and "--no-such-setting" not in proc.stdout


def test_produce_and_tail_help_list_their_settings_only(base_env: dict[str, str]) -> None:
    produce = cli(["produce", "--help"], base_env, timeout=30)
    tail = cli(["tail", "--help"], base_env, timeout=30)
    assert produce.returncode == 0 and tail.returncode == 0
    for flag in ("--kafka-bootstrap-servers", "--input-topic", "--create-topics", "--topic-partitions", "--format"):
        assert flag in produce.stdout
    for flag in ("--output-topic", "--model", "--batch-max-size"):
        assert flag not in produce.stdout
    for flag in ("--kafka-bootstrap-servers", "--output-topic", "--count", "--from-beginning"):
        assert flag in tail.stdout
    assert "--input-topic" not in tail.stdout


@pytest.mark.kafka
async def test_health_and_metrics_answer_while_the_model_loads(worker_factory, topics, tmp_path: Path) -> None:
    """A slow start (minutes on a GPU) is no dead worker: /health and /metrics answer from the first
    second; /ready and /started say 503 until the model is loaded, then the app's pages take over."""
    gate = tmp_path / "hold-the-model-load"
    gate.touch()
    worker = worker_factory(**topics, faulty=True, fault_load_gate_file=gate)
    stages: list[str] = []

    def loading() -> bool:
        body = worker.get("/health")
        stages.extend([orjson.loads(body)["stage"]] if body else [])
        return bool(stages) and stages[-1] == "loading the model"

    await until(loading, 60, "/health while the model loads")
    assert set(stages) <= {"starting", "checking Kafka", "loading the model"}, stages
    assert worker.get("/ready") is None and worker.get("/started") is None  # 503 (or no answer) until loaded
    assert b"process_start_time_seconds" in (worker.get("/metrics") or b"")
    assert not worker.events("model.loaded")
    gate.unlink()
    await asyncio.to_thread(worker.wait_ready)
    assert orjson.loads(worker.get("/started") or b"{}") == {"started": True}
    assert orjson.loads(worker.get("/health") or b"{}") == {"status": "ok"}
