"""``sentiment-worker compare`` against the real broker: two scored topics with known differences.

A holds 100 events; B 95 of them, 3 others, an at-least-once duplicate and an aborted
transaction whose records must not count (read_committed). The documents are built by the
worker's codec; the command runs as a subprocess, as a pipeline would run it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.kafka_helpers import create_topic, free_port
from tests.test_cli import acli, cli, fresh, ok
from tests.test_compare import doc

T0 = int(time.time() * 1000) - 3_600_000  # input events' time: an hour ago, event i at T0 + i s


@pytest.fixture
def env(base_env: dict[str, str], bootstrap: str) -> dict[str, str]:
    return {**base_env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TIMEOUT_S": "10"}


def event(i: int, positive: float, *, model: str, revision: str, prefix: str = "e") -> dict[str, Any]:
    scores = {"NEGATIVE": round(1 - positive, 6), "POSITIVE": positive}
    return doc(f"{prefix}{i}", max(scores, key=scores.__getitem__), scores, model=model, revision=revision,
               offset=i, event_ms=T0 + i * 1000)


async def write(bootstrap: str, topic: str, docs: list[dict[str, Any]], *, lag_ms: int) -> None:
    """Each document as its worker would write it: ``lag_ms`` after its input event, partition by event."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for d in docs:
            when = int(d["source"]["offset"]) * 1000 + T0 + lag_ms
            await producer.send_and_wait(topic, orjson.dumps(d), key=d["id"].encode(),
                                         partition=int(d["source"]["offset"]) % 2, timestamp_ms=when)
    finally:
        await producer.stop()


async def write_aborted(bootstrap: str, topic: str, docs: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=fresh("compare-tx"))
    await producer.start()
    try:
        await producer.begin_transaction()
        for d in docs:
            await producer.send_and_wait(topic, orjson.dumps(d), partition=0)
        await producer.abort_transaction()
    finally:
        await producer.stop()


@pytest.fixture
async def scored_topics(bootstrap: str) -> tuple[str, str]:
    """A: e0..e99, e0..e49 POSITIVE (0.8), e50..e99 NEGATIVE (0.2).

    B: e0..e94 and x0..x2. Flips: e0..e4 (to 0.3) and e50..e54 (to 0.7), |Δ| 0.5; e55..e94 at 0.3,
    |Δ| 0.1; the rest the same. e20 is written twice, the first time flipped: the last one counts.
    Then an aborted transaction rewrites e0 unflipped and adds e95..e99: none of it may count.
    """
    a, b = fresh("scored-a"), fresh("scored-b")
    for topic in (a, b):
        await create_topic(bootstrap, topic, 2)
    await write(bootstrap, a, [event(i, 0.8 if i < 50 else 0.2, model="model-a", revision="sha256:aaaa")
                               for i in range(100)], lag_ms=500)

    def b_positive(i: int) -> float:
        if i < 5:
            return 0.3
        if i < 50:
            return 0.8
        return 0.7 if i < 55 else 0.3

    b_docs = [event(i, b_positive(i), model="model-b", revision="sha256:bbbb") for i in range(95)]
    b_docs.insert(20, event(20, 0.1, model="model-b", revision="sha256:bbbb"))  # the duplicate's first copy
    b_docs += [event(200 + i, 0.5, model="model-b", revision="sha256:old0", prefix="x") for i in range(3)]
    await write(bootstrap, b, b_docs, lag_ms=2000)
    await write_aborted(bootstrap, b, [event(0, 0.8, model="model-b", revision="sha256:bbbb")]
                        + [event(i, 0.5, model="model-b", revision="sha256:bbbb") for i in range(95, 100)])
    return a, b


async def test_compare_two_scored_topics(env: dict[str, str], scored_topics: tuple[str, str], tmp_path) -> None:
    a, b = scored_topics
    out = orjson.loads(ok(await acli(["compare", a, b, "--json"], env)).stdout)
    assert out["events"] == {"both": 95, "only_a": 5, "only_b": 3, "head_mismatch": 0}
    assert (out["a"]["records"], out["a"]["events"], out["a"]["duplicates"]) == (100, 100, 0)
    assert (out["b"]["records"], out["b"]["events"], out["b"]["duplicates"]) == (99, 98, 1)  # no aborted record
    assert out["a"]["models"] == [{"name": "model-a", "revision": "sha256:aaaa", "events": 100}]
    assert out["b"]["models"] == [{"name": "model-b", "revision": "sha256:bbbb", "events": 95},
                                  {"name": "model-b", "revision": "sha256:old0", "events": 3}]
    labels = out["labels"]
    assert (labels["compared"], labels["agreeing"]) == (95, 85)
    assert labels["agreement"] == pytest.approx(85 / 95)
    assert labels["confusion"] == {"NEGATIVE": {"NEGATIVE": 40, "POSITIVE": 5},
                                   "POSITIVE": {"NEGATIVE": 5, "POSITIVE": 45}}
    delta = out["score_delta"]
    assert delta["count"] == 95
    assert delta["mean"] == pytest.approx((10 * 0.5 + 40 * 0.1) / 95)
    assert delta["p95"] == pytest.approx(0.5) and delta["max"] == pytest.approx(0.5)  # rank 91 of 95 is a flip
    assert out["value_delta"] is None and out["multi_label"] is None

    text = ok(await acli(["compare", a, b], env)).stdout
    assert f"B: {b}: 99 record(s), 98 event(s), 1 duplicate(s)" in text
    assert "model model-b revision sha256:old0: 3 event(s)" in text
    assert "events: 95 in both, 5 only in A, 3 only in B" in text
    assert "label agreement: 89.47% (85 of 95)" in text
    assert "NEGATIVE        40         5" in text and "POSITIVE         5        45" in text

    # The gate: 89.47 % passes 0.85 and fails 0.9 (exit 1, the figures still printed).
    ok(await acli(["compare", a, b, "--min-agreement", "0.85"], env))
    proc = await acli(["compare", a, b, "--json", "--min-agreement", "0.9"], env)
    assert proc.returncode == 1, proc.stderr
    assert orjson.loads(proc.stdout)["min_agreement"] == {"required": 0.9, "passed": False}
    assert "label agreement 89.47% is below --min-agreement 90.00%" in proc.stderr


async def test_compare_window_on_event_time(env: dict[str, str], scored_topics: tuple[str, str]) -> None:
    """--from seeks both topics by time (records written before it aren't read), --until filters on event time."""
    a, b = scored_topics
    proc = ok(await acli(["compare", a, b, "--json", "--from", f"@{T0 + 10_000}", "--until", f"@{T0 + 60_000}"], env))
    out = orjson.loads(proc.stdout)
    assert out["events"] == {"both": 50, "only_a": 0, "only_b": 0, "head_mismatch": 0}  # e10..e59
    # A's records e0..e9 were written before --from: not read. B's were written 2 s after their
    # event, so e8 and e9 are read, and left out by their event time.
    assert (out["a"]["records"], out["a"]["outside_window"]) == (90, 40)
    assert (out["b"]["records"], out["b"]["outside_window"], out["b"]["duplicates"]) == (91, 40, 1)
    assert out["labels"]["agreeing"] == 45  # e50..e54 flipped


async def test_compare_plot_writes_a_png(env: dict[str, str], scored_topics: tuple[str, str], tmp_path) -> None:
    pytest.importorskip("matplotlib")
    a, b = scored_topics
    png = tmp_path / "compare.png"
    proc = ok(await acli(["compare", a, b, "--plot", str(png)], env))
    assert f"wrote {png}" in proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


async def test_compare_refuses_missing_topics_and_bad_times(env: dict[str, str], bootstrap: str) -> None:
    topic = fresh("scored")
    await create_topic(bootstrap, topic, 1)
    proc = await acli(["compare", topic, fresh("missing")], env)
    assert proc.returncode == 2 and "do not exist" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = await acli(["compare", topic, topic, "--from", "yesterday"], env)
    assert proc.returncode == 2 and "is not a" in proc.stderr, proc.stderr
    proc = await acli(["compare", topic, topic, "--from", "@2000", "--until", "@1000"], env)
    assert proc.returncode == 2 and "must be later than --from" in proc.stderr, proc.stderr
    proc = await acli(["compare", topic, topic, "--min-agreement", "1.5"], env)
    assert proc.returncode == 2, proc.stderr
    # Two empty topics were read: exit 0; but a gate can't pass on nothing.
    assert "events: 0 in both" in ok(await acli(["compare", topic, topic], env)).stdout
    proc = await acli(["compare", topic, topic, "--min-agreement", "0.5"], env)
    assert proc.returncode == 1 and "not measured" in proc.stderr, proc.stderr


async def test_compare_plot_without_matplotlib_says_so(base_env: dict[str, str], tmp_path) -> None:
    """Checked before anything is read: no broker needed."""
    shadow = tmp_path / "no-matplotlib" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    env = {**base_env, "PYTHONPATH": str(shadow.parent)}
    proc = await acli(["compare", "a", "b", "--plot", str(tmp_path / "x.png")], env)
    assert proc.returncode == 2 and "--plot needs matplotlib: pip install 'sentiment-worker[bench]'" in proc.stderr, \
        proc.stderr
    assert not (tmp_path / "x.png").exists()


async def test_compare_unreachable_brokers_exit_2(base_env: dict[str, str]) -> None:
    env = {**base_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "KAFKA_TIMEOUT_S": "2"}
    proc = await acli(["compare", "a", "b"], env)
    assert proc.returncode == 2 and "error: Cannot reach Kafka" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr


def test_compare_help(base_env: dict[str, str]) -> None:
    text = ok(cli(["compare", "--help"], base_env, timeout=30)).stdout
    for flag in ("--from", "--until", "--json", "--min-agreement", "--plot", "--kafka-bootstrap-servers", "--sasl-mechanism"):
        assert flag in text, flag
