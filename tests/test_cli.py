"""The feeding and inspecting commands against the real broker, like kcat and Kafka's console tools.

``produce`` (key, headers, partition, key separator, null), ``tail`` (topic, partitions, start
offset or time, formats with partition/offset/timestamp/key/headers), ``dlt replay``, ``--version``
and the typed ``--help``. What a command wrote is read back with an independent aiokafka consumer;
what ``tail`` reads was written by kcat or aiokafka. Every command is a subprocess with an
environment built here; ``subprocess.run(timeout=...)`` kills one that overstays.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import REPO
from tests.kafka_helpers import consume_all, create_topic, end_offsets, kcat_produce, produce, topic_names
from worker.cli import legacy_bool_flags
from worker.kafka.records import Outbound
from worker.pipeline.codec import InputRecord, encode_input
from worker.pipeline.dead_letter import KEY_NULL_HEADER, REASON_HEADER, dead_letter, without_value
from worker.tools.kafka_io import parse_start
from worker.tools.replay import REPLAYED_FROM_HEADER

CLI = [sys.executable, "-m", "worker"]


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
    assert "<PLAIN|SCRAM-SHA-256|SCRAM-SHA-512|OAUTHBEARER>" in _help_row(text, "--sasl-mechanism")
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
    assert refused not in await topic_names(bootstrap)


# ----------------------------------------------------------------------------- produce


def test_produce_help(base_env: dict[str, str]) -> None:
    text = ok(cli(["produce", "--help"], base_env, timeout=30)).stdout
    for flag in ("--key", "--header", "--partition", "--key-separator", "--null-empty", "--format", "--file"):
        assert flag in text
    assert "<int>" in _help_row(text, "--partition")


async def test_produce_key_headers_and_partition(env: dict[str, str], bootstrap: str) -> None:
    topic = fresh("in")
    await create_topic(bootstrap, topic, 3)
    args = ["produce", "--input-topic", topic, "--key", "K-1", "-H", "trace=abc", "--header", "eq=a=b", "-H", "empty=",
            "--partition", "2", "I loved it", "ünïcödé ✓"]
    proc = ok(await acli(args, env))
    assert f"produced 2 record(s) to {topic} (partition 2: 2)" in proc.stderr
    received = sorted(await consume_all(bootstrap, topic, expected=2, timeout_s=30, settle_s=0.3), key=lambda r: r.offset)
    assert [(r.partition, r.key, r.value) for r in received] == [
        (2, b"K-1", encode_input(InputRecord(text="I loved it"))),
        (2, b"K-1", encode_input(InputRecord(text="ünïcödé ✓"))),
    ]
    for record in received:
        assert record.headers == (("trace", b"abc"), ("eq", b"a=b"), ("empty", b""))


async def test_produce_key_separator_and_null_empty(env: dict[str, str], bootstrap: str) -> None:
    plain, nulls, jsonl = fresh("in"), fresh("in"), fresh("in")
    for topic in (plain, nulls, jsonl):
        await create_topic(bootstrap, topic, 1)
    lines = "k1:v1\nno separator\nk2:\n:v3\nk4:a:b\n"
    ok(await acli(["produce", "--input-topic", plain, "--format", "raw", "--key-separator", ":"], env, stdin=lines))
    proc = ok(await acli(["produce", "--input-topic", nulls, "--format", "raw", "-K", ":", "--null-empty"], env, stdin=lines))
    assert f"produced 5 record(s) to {nulls}" in proc.stderr
    # jsonl: the key before the separator wins over the "id"; text: the part after it is the text.
    ok(await acli(["produce", "--input-topic", jsonl, "--format", "jsonl", "-K", "\t"], env,
                  stdin='sep-key\t{"text": "a", "id": "id-a"}\n{"text": "b", "id": "id-b"}\n'))
    ok(await acli(["produce", "--input-topic", jsonl, "-K", "|", "k|some text"], env))

    async def read(topic: str, n: int) -> list[tuple]:
        got = await consume_all(bootstrap, topic, expected=n, timeout_s=30, settle_s=0.3)
        return [(r.key, r.value) for r in sorted(got, key=lambda r: r.offset)]

    assert await read(plain, 5) == [
        (b"k1", b"v1"), (None, b"no separator"), (b"k2", b""), (b"", b"v3"), (b"k4", b"a:b")
    ]
    assert await read(nulls, 5) == [
        (b"k1", b"v1"), (None, b"no separator"), (b"k2", None), (None, b"v3"), (b"k4", b"a:b")
    ]
    assert await read(jsonl, 3) == [
        (b"sep-key", b'{"text": "a", "id": "id-a"}'),
        (b"id-b", b'{"text": "b", "id": "id-b"}'),
        (b"k", encode_input(InputRecord(text="some text"))),
    ]


async def test_produce_refuses_what_it_cannot_send(env: dict[str, str], bootstrap: str) -> None:
    topic = fresh("in")
    await create_topic(bootstrap, topic, 2)
    proc = await acli(["produce", "--input-topic", topic, "--partition", "5", "x"], env)
    assert proc.returncode == 2 and f"topic {topic} has partitions 0..1; no partition 5" in proc.stderr, proc.stderr
    proc = await acli(["produce", "--input-topic", topic, "-H", "no-equals-sign", "x"], env)
    assert proc.returncode == 2 and "'no-equals-sign' is not name=value" in proc.stderr, proc.stderr
    # ":" with -K : -Z is neither key nor value: left out and said so, the rest is sent, exit 1.
    proc = await acli(["produce", "--input-topic", topic, "--format", "raw", "-K", ":", "-Z", "-p", "0"], env,
                      stdin=":\nk:v\n")
    assert proc.returncode == 1, proc.stderr
    assert "skipped line 1: neither key nor value" in proc.stderr
    assert f"produced 1 record(s) to {topic} (partition 0: 1); skipped 1" in proc.stderr
    assert await end_offsets(bootstrap, topic) == {0: 1, 1: 0}


# ----------------------------------------------------------------------------- tail


def test_tail_help(base_env: dict[str, str]) -> None:
    text = ok(cli(["tail", "--help"], base_env, timeout=30)).stdout
    for flag in ("--topic", "--partition", "--offset", "--exit-at-end", "--compact", "--from-beginning", "--since-ms"):
        assert flag in text
    assert "<auto|pretty|json|value>" in _help_row(text, "--format")


def test_start_positions() -> None:
    assert (parse_start("beginning").kind, parse_start("end").kind) == ("beginning", "end")
    assert (parse_start("17").kind, parse_start("17").value) == ("offset", 17)
    assert (parse_start("-3").kind, parse_start("-3").value) == ("from_end", 3)
    assert parse_start("@1700000000000").value == parse_start("s@1700000000000").value == 1_700_000_000_000
    assert parse_start("2023-11-14T22:13:20Z").value == 1_700_000_000_000
    assert parse_start("2023-11-14T23:13:20+01:00").value == 1_700_000_000_000
    with pytest.raises(ValueError, match="not a start position"):
        parse_start("yesterday")



async def _producer_with_timestamps(bootstrap: str, topic: str, records: list[tuple]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, partition=partition, timestamp_ms=ts, headers=headers)
            for partition, key, value, ts, headers in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_tail_shows_metadata_of_records_from_other_clients(env: dict[str, str], bootstrap: str) -> None:
    topic = fresh("t")
    await create_topic(bootstrap, topic, 2)
    # kcat: partition 1, keys, a header, a JSON value, a tombstone (-Z: empty value is NULL).
    kcat_produce(bootstrap, topic, ['k1:{"label": "POSITIVE"}', "k2:plain text", "k3:"], partition=1,
                 headers=["source=kcat", "h2=ü"])
    # aiokafka: partition 0, a key and a value that are not UTF-8, a JSON string.
    await produce(bootstrap, topic, [(b"\xff\xfe", b"\xc3\x28binary"), (None, b'"just a string"')], partition=0)
    expected = {(r.partition, r.offset): r for r in await consume_all(bootstrap, topic, expected=5, timeout_s=30, settle_s=0.3)}

    docs = json_lines(ok(await acli(["tail", "--topic", topic, "--offset", "beginning", "--exit-at-end"], env)).stdout)
    assert sorted((d["partition"], d["offset"]) for d in docs) == sorted(expected)
    by_place = {(d["partition"], d["offset"]): d for d in docs}
    for place, record in expected.items():
        doc = by_place[place]
        assert doc["topic"] == topic
        assert doc["timestamp"] == record.timestamp_ms and doc["timestamp_type"] == "create"
    assert by_place[(1, 0)]["key"] == "k1"
    assert by_place[(1, 0)]["headers"] == [{"key": "source", "value": "kcat"}, {"key": "h2", "value": "ü"}]
    assert (by_place[(1, 0)]["value"], by_place[(1, 0)]["value_format"]) == ({"label": "POSITIVE"}, "json")
    assert (by_place[(1, 1)]["value"], by_place[(1, 1)]["value_format"]) == ("plain text", "text")
    assert (by_place[(1, 2)]["key"], by_place[(1, 2)]["value"], by_place[(1, 2)]["value_format"]) == ("k3", None, "null")
    assert by_place[(0, 0)]["key_base64"] == "//4=" and "key" not in by_place[(0, 0)]
    assert (by_place[(0, 0)]["value"], by_place[(0, 0)]["value_format"]) == ("wyhiaW5hcnk=", "base64")
    assert (by_place[(0, 1)]["key"], by_place[(0, 1)]["value"], by_place[(0, 1)]["headers"]) == (None, "just a string", [])

    # One partition from an offset; the last record of each partition; a count.
    docs = json_lines(ok(await acli(["tail", "-t", topic, "-p", "1", "-o", "1", "-e"], env)).stdout)
    assert [(d["partition"], d["offset"]) for d in docs] == [(1, 1), (1, 2)]
    docs = json_lines(ok(await acli(["tail", "-t", topic, "-o", "-1", "-e"], env)).stdout)
    assert sorted((d["partition"], d["offset"]) for d in docs) == [(0, 1), (1, 2)]
    docs = json_lines(ok(await acli(["tail", "-t", topic, "-p", "1", "--from-beginning", "-n", "2"], env)).stdout)
    assert [(d["partition"], d["offset"]) for d in docs] == [(1, 0), (1, 1)]

    # For a person: a metadata line, then the value.
    text = ok(await acli(["tail", "-t", topic, "-p", "1", "-o", "beginning", "-e", "--format", "pretty"], env)).stdout
    stamp = datetime.fromtimestamp(expected[(1, 0)].timestamp_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    first = text.splitlines()[0]
    assert first.startswith(f"{topic} p1 @0 {stamp}") and 'key="k1"' in first and "headers[source=kcat, h2=ü]" in first
    assert '"label": "POSITIVE"' in text and "(null value: a tombstone)" in text
    compact = ok(await acli(["tail", "-t", topic, "-p", "1", "-o", "beginning", "-e", "--format", "pretty", "--compact"],
                            env)).stdout.splitlines()
    assert len(compact) == 3 and compact[0].endswith('{"label":"POSITIVE"}')
    # The value alone (what tail printed before it showed metadata): tombstones have none.
    values = ok(await acli(["tail", "-t", topic, "-p", "1", "-o", "beginning", "-e", "--format", "value"], env)).stdout
    assert values.splitlines() == ['{"label":"POSITIVE"}', "plain text"]


async def test_tail_starts_at_a_time(env: dict[str, str], bootstrap: str) -> None:
    topic = fresh("t")
    await create_topic(bootstrap, topic, 2)
    now = int(time.time() * 1000)
    stamps = [now - 300_000, now - 200_000, now - 100_000]
    await _producer_with_timestamps(bootstrap, topic, [
        (0, b"a", b"old", stamps[0], []), (0, b"b", b"middle", stamps[1], []), (0, b"c", b"new", stamps[2], []),
        (1, b"d", b"other", stamps[0], [("x", b"1")]),
    ])
    iso = datetime.fromtimestamp(stamps[1] / 1000, tz=timezone.utc).isoformat()
    for start in (["--offset", f"@{stamps[1]}"], ["--offset", iso], ["--since-ms", str(stamps[1])]):
        docs = json_lines(ok(await acli(["tail", "-t", topic, *start, "-e"], env)).stdout)
        assert [(d["partition"], d["offset"], d["value"]) for d in docs] == [(0, 1, "middle"), (0, 2, "new")], start
    docs = json_lines(ok(await acli(["tail", "-t", topic, "-o", f"@{now}", "-e"], env)).stdout)
    assert docs == []


async def test_tail_follows_new_records_and_says_when_too_few_came(env: dict[str, str], bootstrap: str) -> None:
    topic = fresh("t")
    await create_topic(bootstrap, topic, 1)
    await produce(bootstrap, topic, [(b"k", b"before")])
    # Offset 1 does not exist yet: tail waits for it, whether it starts before or after the send.
    follower = asyncio.create_task(acli(["tail", "-t", topic, "-o", "1", "-n", "1", "--timeout", "60"], env))
    await produce(bootstrap, topic, [(b"k", b"after")])
    docs = json_lines(ok(await follower).stdout)
    assert [(d["offset"], d["value"]) for d in docs] == [(1, "after")]

    proc = await acli(["tail", "-t", topic, "-o", "beginning", "-e", "-n", "5"], env)
    assert proc.returncode == 1 and "only 2 of 5 record(s) arrived before the end" in proc.stderr, proc.stderr
    proc = await acli(["tail", "-t", topic, "-o", "end", "-n", "1", "--timeout", "1"], env)
    assert proc.returncode == 1 and "only 0 of 1 record(s) arrived before the timeout" in proc.stderr


async def test_tail_refuses_missing_topic_partition_and_bad_offset(env: dict[str, str], bootstrap: str) -> None:
    topic = fresh("t")
    await create_topic(bootstrap, topic, 2)
    proc = await acli(["tail", "-t", fresh("missing"), "-e"], env)
    assert proc.returncode == 2 and "do not exist" in proc.stderr, proc.stderr
    proc = await acli(["tail", "-t", topic, "-p", "0", "-p", "2", "-e"], env)
    assert proc.returncode == 2 and "no partition 2" in proc.stderr, proc.stderr
    proc = await acli(["tail", "-t", topic, "-o", "yesterday", "-e"], env)
    assert proc.returncode == 2 and "not a start position" in proc.stderr, proc.stderr
    proc = await acli(["tail", "-t", topic, "-o", "end", "--from-beginning", "-e"], env)
    assert proc.returncode == 2 and "give one of" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- dlt replay


def test_dlt_replay_help(base_env: dict[str, str]) -> None:
    text = ok(cli(["dlt", "replay", "--help"], base_env, timeout=30)).stdout
    for flag in ("--reason", "--dry-run", "--count", "--offset", "--partition", "--input-topic", "--dead-letter-topic"):
        assert flag in text
    assert "--output-topic" not in text


def _headers(record: object) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}  # type: ignore[attr-defined]


async def test_dlt_replay_with_a_worker(env: dict[str, str], bootstrap: str, worker_factory, topics) -> None:
    source, dlt = topics["input_topic"], f"{topics['input_topic']}-dlt"
    await create_topic(bootstrap, source, 2)
    worker_factory(**topics).wait_ready()
    bad = [
        (b"k-missing", orjson.dumps({"id": "x"}), [("trace", b"t-1"), ("tenant", b"acme")]),  # text_missing
        (None, orjson.dumps({"id": "y"}), [("trace", b"t-2")]),  # text_missing, keyless
        (None, b"{not json", []),  # not_json
    ]
    await _producer_with_timestamps(bootstrap, source, [(None, k, v, None, h) for k, v, h in bad] + [
        (None, b"good", orjson.dumps({"text": "fine", "id": "good"}), None, []),
    ])
    dead = await consume_all(bootstrap, dlt, expected=3, timeout_s=120, settle_s=0.5)
    assert sorted(_headers(r)[REASON_HEADER] for r in dead) == ["not_json", "text_missing", "text_missing"]
    missing = {r.value: r for r in dead if _headers(r)[REASON_HEADER] == "text_missing"}
    ends_before = await end_offsets(bootstrap, source)
    renv = {**env, "INPUT_TOPIC": source}

    proc = ok(await acli(["dlt", "replay", "--reason", "text_missing", "--dry-run"], renv))
    listed = sorted(proc.stdout.splitlines())
    assert listed == sorted(
        f"{dlt}:{r.partition}:{r.offset} reason=text_missing key={'k-missing' if r.key == b'k-missing' else 'null'} "
        f"origin={source}:{_headers(r)['__connect.errors.partition']}:{_headers(r)['__connect.errors.offset']} "
        f"bytes={len(r.value)}"
        for r in missing.values()
    )
    assert f"would replay 2 record(s) from {dlt} to {source} (text_missing: 2); read 3, skipped 1 with another reason" \
        in proc.stderr
    assert await end_offsets(bootstrap, source) == ends_before, "a dry run sends nothing"
    proc = ok(await acli(["dlt", "replay", "--dry-run", "-n", "1"], renv))
    assert len(proc.stdout.splitlines()) == 1

    proc = ok(await acli(["dlt", "replay", "--reason", "text_missing"], renv))
    assert f"replayed 2 record(s) from {dlt} to {source} (text_missing: 2)" in proc.stderr

    received = await consume_all(bootstrap, source, expected=6, timeout_s=30, settle_s=0.3)
    replayed = [r for r in received if r.offset >= ends_before[r.partition]]
    assert len(replayed) == 2
    by_value = {r.value: r for r in replayed}
    assert set(by_value) == {orjson.dumps({"id": "x"}), orjson.dumps({"id": "y"})}, "original bytes"
    for key, value, headers in bad[:2]:
        again, letter = by_value[value], missing[value]
        assert again.key == key, "the original key, null again where the dead letter was keyed by origin"
        assert list(again.headers) == [*headers, (REPLAYED_FROM_HEADER, f"{dlt}:{letter.partition}:{letter.offset}".encode())]
    assert (_headers(missing[orjson.dumps({"id": "y"})])[KEY_NULL_HEADER]) == "true"

    # The worker dead-letters them again (nothing was fixed): the replay header travels with them.
    dead = await consume_all(bootstrap, dlt, expected=5, timeout_s=120, settle_s=0.5)
    again = [r for r in dead if REPLAYED_FROM_HEADER in _headers(r)]
    assert len(again) == 2 and all(_headers(r)[REASON_HEADER] == "text_missing" for r in again)


async def test_dlt_replay_skips_dead_letters_without_value(env: dict[str, str], bootstrap: str) -> None:
    source, dlt = fresh("in"), fresh("letters")  # a DEAD_LETTER_TOPIC of its own name
    await create_topic(bootstrap, source, 1)
    await create_topic(bootstrap, dlt, 1)
    letters = [
        dead_letter(dlt, source_topic=source, partition=0, offset=7, key=b"big", value=b'{"text": "' + b"x" * 100 + b'"}',
                    reason="output_too_large", exception_class="E", message="m", headers=(("trace", b"t-big"),)),
        dead_letter(dlt, source_topic=source, partition=0, offset=8, key=None, value=b"garbage",
                    reason="not_json", exception_class="E", message="m"),
    ]
    letters[0] = without_value(letters[0])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for letter in letters:
            assert isinstance(letter, Outbound)
            await (await producer.send(dlt, letter.value, key=letter.key, headers=list(letter.headers)))
    finally:
        await producer.stop()
    renv = {**env, "INPUT_TOPIC": source}
    proc = ok(await acli(["dlt", "replay", "--dead-letter-topic", dlt], renv))
    assert f"skipped {dlt}:0:0 (output_too_large): its value (" in proc.stderr
    assert f"the original is at {source}:0:7" in proc.stderr
    assert f"replayed 1 record(s) from {dlt} to {source} (not_json: 1)" in proc.stderr
    assert "1 without their value" in proc.stderr
    (record,) = await consume_all(bootstrap, source, expected=1, timeout_s=30, settle_s=0.3)
    assert (record.key, record.value, record.headers) == (None, b"garbage", ((REPLAYED_FROM_HEADER, f"{dlt}:0:1".encode()),))

    proc = await acli(["dlt", "replay", "--dead-letter-topic", fresh("missing")], renv)
    assert proc.returncode == 2 and "do not exist" in proc.stderr, proc.stderr

