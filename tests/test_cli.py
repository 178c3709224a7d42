"""The feeding and inspecting commands against the real broker, like kcat and Kafka's console tools.

``produce`` (key, headers, partition, key separator, null), ``tail`` (topic, partitions, start
offset or time, formats with partition/offset/timestamp/key/headers), ``dlt replay``, ``--version``
and the typed ``--help``. What a command wrote is read back with an independent aiokafka consumer;
what ``tail`` reads was written by kcat or aiokafka. Every command is a subprocess with an
environment built here; ``subprocess.run(timeout=...)`` kills one that overstays.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path

import orjson
import pytest

from tests.kafka_helpers import end_offsets
from worker.cli import legacy_bool_flags

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "worker"]


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """No inherited settings, wide plain help output."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
        "TERM": "dumb",
        "COLUMNS": "220",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LOG_FORMAT": "json",
    }


@pytest.fixture
def env(base_env: dict[str, str], bootstrap: str) -> dict[str, str]:
    """The same, with the tests' broker."""
    return {**base_env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TIMEOUT_S": "10"}


def cli(args: list[str], env: dict[str, str], *, stdin: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
    )


async def acli(args: list[str], env: dict[str, str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, args, env, **kwargs)  # type: ignore[arg-type]


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    return proc


def json_lines(stdout: str) -> list[dict]:
    return [orjson.loads(line) for line in stdout.splitlines() if line.strip()]


def fresh(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- version and help


def test_version(base_env: dict[str, str]) -> None:
    proc = ok(cli(["--version"], base_env, timeout=30))
    lines = proc.stdout.splitlines()
    assert lines[0] == f"sentiment-worker {metadata.version('sentiment-worker')}"
    named = dict(line.split() for line in lines[1:])
    assert named["python"] == ".".join(map(str, sys.version_info[:3]))
    for dist in ("torch", "transformers", "faust-streaming", "aiokafka"):
        assert named[dist] == metadata.version(dist)


def _help_row(help_text: str, flag: str) -> str:
    rows = [line for line in help_text.splitlines() if f" {flag} " in line]
    assert rows, f"{flag} not in help:\n{help_text}"
    return rows[0]


def test_help_shows_flag_types_choices_and_negatable_booleans(base_env: dict[str, str]) -> None:
    text = ok(cli(["run", "--help"], base_env, timeout=30)).stdout
    assert "<int>" in _help_row(text, "--batch-max-size")
    assert ">= 1" in text  # the bounds pydantic checks are told
    assert "<float>" in _help_row(text, "--kafka-timeout-s")
    assert "<path>" in _help_row(text, "--ssl-cafile")
    assert "<auto|fp32|fp16|bf16|int8>" in _help_row(text, "--precision")
    assert "<PLAIN|SCRAM-SHA-256|SCRAM-SHA-512>" in _help_row(text, "--sasl-mechanism")
    for name in ("create-topics", "include-text", "web-enabled", "torch-compile"):
        assert f"--no-{name}" in _help_row(text, f"--{name}"), f"--{name}/--no-{name} expected"



def test_unparsable_flag_value_is_refused_with_exit_2(base_env: dict[str, str]) -> None:
    proc = cli(["run", "--batch-max-size", "many"], base_env, timeout=30)
    assert proc.returncode == 2
    assert "Invalid value for '--batch-max-size'" in proc.stderr and "integer" in proc.stderr
    proc = cli(["run", "--precision", "fp8"], base_env, timeout=30)
    assert proc.returncode == 2 and "Invalid value for '--precision'" in proc.stderr and "'fp8'" in proc.stderr


def test_old_boolean_spelling_is_rewritten() -> None:
    assert legacy_bool_flags(["produce", "--create-topics", "false", "hi"]) == ["produce", "--no-create-topics", "hi"]
    assert legacy_bool_flags(["run", "--web-enabled=TRUE", "--include-text", "no"]) == ["run", "--web-enabled", "--no-include-text"]
    assert legacy_bool_flags(["run", "--create-topics", "--model", "m"]) == ["run", "--create-topics", "--model", "m"]
    assert legacy_bool_flags(["produce", "--", "--create-topics", "false"]) == ["produce", "--", "--create-topics", "false"]
    assert legacy_bool_flags(["produce", "--format", "false"]) == ["produce", "--format", "false"]


# ----------------------------------------------------------------------------- booleans against the broker


async def test_boolean_flags_negate_and_win_over_env(env: dict[str, str], bootstrap: str) -> None:
    refused, created = fresh("in"), fresh("in")
    proc = await acli(["produce", "--input-topic", refused, "--no-create-topics", "hello"], env)
    assert proc.returncode == 2 and "do not exist" in proc.stderr, proc.stderr
    # The env says don't create; the flag wins.
    proc = ok(await acli(["produce", "--input-topic", created, "--create-topics", "--topic-partitions", "1", "hello"],
                         {**env, "CREATE_TOPICS": "false"}))
    assert f"produced 1 record(s) to {created}" in proc.stderr
    assert await end_offsets(bootstrap, created) == {0: 1}
    assert await end_offsets(bootstrap, refused) == {}
