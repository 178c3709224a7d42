"""What the benchmark and the test suite both need: a local broker, worker subprocesses, output readers.

One implementation for both, so that what the tests prove and what the
benchmark measures run the worker the same way.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import orjson

REPO = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = REPO / "deploy" / "local" / "kafka"


def free_port() -> int:
    """A free port on 127.0.0.1, from the kernel's ephemeral range (for servers that are never restarted)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes source ports of outgoing connections from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def broker_port() -> int:
    """A free port below the ephemeral range, for a broker that may be stopped and started again.

    While a broker on an ephemeral port is down, a client reconnecting to it can be given
    that very port as its source port and connect to itself (TCP simultaneous open); the
    broker then can't bind when it restarts. Below the range no client is given it.
    """
    low, _ = ephemeral_ports()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low}")


# ----------------------------------------------------------------------------- the broker


def start_broker(
    data_dir: Path,
    extra_properties: str = "",
    port: Optional[int] = None,
    controller_port: Optional[int] = None,
    scram_users: Sequence[str] = (),
) -> dict[str, str]:
    """A broker of our own through deploy/local/kafka; returns its environment, with BOOTSTRAP added."""
    env = {
        **os.environ,
        "KAFKA_DATA_DIR": str(data_dir),
        "KAFKA_PORT": str(port or broker_port()),
        "KAFKA_CONTROLLER_PORT": str(controller_port or broker_port()),
        "KAFKA_EXTRA_PROPERTIES": extra_properties,
        "KAFKA_SCRAM_USERS": "\n".join(scram_users),
    }
    started = subprocess.run([str(KAFKA_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        raise RuntimeError(f"local Kafka did not start:\n{started.stdout}\n{started.stderr}")
    env["BOOTSTRAP"] = started.stdout.strip().splitlines()[-1]
    return env


def stop_broker(env: dict[str, str]) -> None:
    subprocess.run([str(KAFKA_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


@contextmanager
def kafka_broker(bootstrap: Optional[str], work: Path) -> Iterator[str]:
    """The given broker, or a fresh one of our own (stopped at the end)."""
    if bootstrap:
        yield bootstrap
        return
    env = start_broker(work / "kafka-data")
    try:
        yield env["BOOTSTRAP"]
    finally:
        stop_broker(env)


async def create_topics(
    bootstrap: str,
    names: Sequence[str],
    partitions: int,
    *,
    log_append: Sequence[str] = (),
    configs: Optional[dict[str, str]] = None,
) -> None:
    """Topics with ``configs`` (``log_append``: those stamped with the broker's append time), once they have leaders."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs={
                        **(configs or {}),
                        **({"message.timestamp.type": "LogAppendTime"} if name in log_append else {}),
                    },
                )
                for name in names
            ]
        )
    finally:
        await admin.close()
    await _wait_for_leaders(bootstrap, names, partitions)


async def _wait_for_leaders(bootstrap: str, names: Sequence[str], partitions: int, timeout_s: float = 30.0) -> None:
    """New topics take a moment to get partition leaders; producing before that only logs retries."""
    for name in names:
        await topic_partitions(bootstrap, name, timeout_s=timeout_s, expected=partitions)


async def topic_partitions(bootstrap: str, topic: str, *, timeout_s: float = 30.0, expected: int = 1) -> list[int]:
    """The topic's partitions, once it has at least ``expected`` of them and each has a leader (admin API)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            # Listed first: describing a topic that doesn't exist would have the broker create it.
            meta = (await admin.describe_topics([topic]))[0] if topic in await admin.list_topics() else {}
            found = meta.get("partitions", [])
            led = all(p.get("leader", -1) >= 0 for p in found)
            if meta.get("error_code") == 0 and led and len(found) >= expected:
                return sorted(p["partition"] for p in found)
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no {expected} partition(s) with leaders after {timeout_s:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def produce_texts(bootstrap: str, topic: str, texts: Sequence[str], prefix: str, start: int = 0) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256 * 1024, enable_idempotence=True
    )
    await producer.start()
    try:
        futures = []
        for i, text in enumerate(texts, start):
            futures.append(await producer.send(topic, orjson.dumps({"text": text, "id": f"{prefix}-{i}"})))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# ----------------------------------------------------------------------------- reading outputs


def iso_ms(value: str) -> float:
    return datetime.fromisoformat(value).timestamp() * 1000


@dataclass
class Outputs:
    count: int = 0
    first_append_ms: Optional[float] = None
    last_append_ms: Optional[float] = None
    latencies_ms: list[float] = field(default_factory=list)


class OutputReader:
    """Reads the output topic (read_committed) and keeps append times and end-to-end latencies."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.out = Outputs()
        self._consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=5000,
        )
        await self._consumer.start()
        tps = [TopicPartition(self.topic, p) for p in await topic_partitions(self.bootstrap, self.topic, timeout_s=10)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)

    async def poll(self, timeout_ms: int = 200) -> int:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        got = 0
        for records in batch.values():
            for record in records:
                got += 1
                append = float(record.timestamp)
                out = self.out
                out.first_append_ms = append if out.first_append_ms is None else min(out.first_append_ms, append)
                out.last_append_ms = append if out.last_append_ms is None else max(out.last_append_ms, append)
                try:
                    doc = orjson.loads(record.value)
                    ts = doc.get("source", {}).get("timestamp")
                    if ts:
                        out.latencies_ms.append(append - iso_ms(ts))
                except (orjson.JSONDecodeError, ValueError, AttributeError):
                    pass
        self.out.count += got
        return got

    async def wait_for(self, expected: int, *, idle_timeout_s: float, progress: Any = None, alive: Any = None) -> Outputs:
        last_progress = time.monotonic()
        while self.out.count < expected:
            got = await self.poll()
            if got:
                last_progress = time.monotonic()
                if progress is not None:
                    progress.update(got)
            elif time.monotonic() - last_progress > idle_timeout_s:
                raise RuntimeError(f"no output for {idle_timeout_s:.0f}s: {self.out.count} of {expected} arrived")
            if alive is not None and not alive():
                raise RuntimeError(f"the scoring process exited: {self.out.count} of {expected} arrived")
        return self.out

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


# ----------------------------------------------------------------------------- worker processes


def proc_status_kib(pid: int, key: str) -> Optional[int]:
    """VmHWM (peak RSS) or VmRSS of a live process, in KiB (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _stat(pid: int) -> Optional[list[str]]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU time of a live process, its threads and its live child processes (Linux)."""
    fields = _stat(pid)
    if fields is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = (int(fields[11]) + int(fields[12])) / ticks
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            child = _stat(int(entry.name))
            if child is not None and child[1] == str(pid):
                total += cpu_seconds(int(entry.name)) or 0.0
    return total


class WorkerProcess:
    """A worker (or any of our CLIs) as a subprocess, its output in a file; every one started is tracked."""

    live: "set[WorkerProcess]" = set()  # started and not yet stopped, for a last sweep

    def __init__(self, argv: list[str], env: dict[str, str], *, log_path: Path, cwd: Path = REPO) -> None:
        self.log_path = log_path
        self.web_port = int(env["WEB_PORT"])
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
        full_env.update(env)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(argv, env=full_env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)
        WorkerProcess.live.add(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str) -> Optional[bytes]:
        """The body of a page, if it answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=2) as resp:
                return resp.read() if resp.status == 200 else None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return None

    def ready(self) -> bool:
        return self.get("/ready") is not None

    def wait_ready(self, timeout_s: float = 300.0) -> "WorkerProcess":
        """Block until /ready says partitions are assigned (polling an HTTP endpoint, not sleeping blind)."""
        return self._wait(self.ready, timeout_s, "ready")

    def wait_joined(self, timeout_s: float = 90.0) -> "WorkerProcess":
        """Block until the worker has joined its group (an assignment, possibly empty, was logged)."""
        return self._wait(lambda: bool(self.events("partitions.assigned")), timeout_s, "joined")

    def _wait(self, done: Any, timeout_s: float, what: str) -> "WorkerProcess":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            if done():
                return self
            time.sleep(0.05)
        raise AssertionError(f"worker not {what} after {timeout_s}s:\n{self.log_text()[-4000:]}")

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
        if not self._log.closed:
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

    def assigned_at(self) -> Optional[float]:
        """When the worker first got partitions (its own log), i.e. when consuming began."""
        for doc in self.events("partitions.assigned"):
            if doc.get("count") and doc.get("timestamp"):
                return datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00")).timestamp()
        return None

    def metrics(self) -> dict[str, float]:
        body = self.get("/metrics")
        out: dict[str, float] = {}
        if body:
            for line in body.decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    try:
                        out[name] = float(value)
                    except ValueError:
                        pass
        return out

    def peak_rss_mib(self) -> Optional[float]:
        kib = proc_status_kib(self.proc.pid, "VmHWM")
        return round(kib / 1024, 1) if kib else None

    def rss_mib(self) -> Optional[float]:
        kib = proc_status_kib(self.proc.pid, "VmRSS")
        return round(kib / 1024, 1) if kib else None

    def cpu_seconds(self) -> Optional[float]:
        return cpu_seconds(self.proc.pid)
