"""The pipeline's pure logic with fakes: batching, the offset ledger, the intake, the delivery policy,
output sizing and keys, error classification, the partitioner. Kafka behaviour is in the broker tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownError,
)
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kafka_helpers import until
from worker.kafka.committer import Committer
from worker.kafka.errors import Verdict, classify, describe, missing_right
from worker.kafka.partitioner import murmur2
from worker.kafka.records import Delivery, Outbound, PartitionFenced, Rejected, record_size
from worker.model.engine import Scores
from worker.model.report import BatchReport
from worker.model.loading import Head, ModelInfo
from worker.pipeline.batcher import Batcher
from worker.pipeline.codec import DecodeError, InputRecord
from worker.pipeline.dead_letter import KEY_NULL_HEADER, OMITTED_HEADER, REASON_HEADER
from worker.pipeline.delivery import Deliverer, DeliveryFailed, Unpublishable
from worker.pipeline.intake import Intake
from worker.pipeline.ledger import OffsetLedger
from worker.pipeline.observer import NullObserver
from worker.pipeline.outputs import OutputBuilder
from worker.pipeline.scoring import Scored

TP0, TP1 = TopicPartition("in", 0), TopicPartition("in", 1)


@dataclass
class Rec:
    """A consumed record, as aiokafka's ConsumerRecord has it."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes] = None
    value: Optional[bytes] = None
    timestamp: int = 1_700_000_000_000
    headers: tuple = ()


def recs(partition: int, offsets: range) -> list[Rec]:
    return [Rec("in", partition, o) for o in offsets]


# ----------------------------------------------------------------------------- batcher


def test_batcher_cuts_full_batches_in_order_and_keeps_the_rest_waiting() -> None:
    b = Batcher(max_size=4, max_wait_s=0.5)
    b.add({TP0: recs(0, range(0, 3)), TP1: recs(1, range(10, 13))}, now=0.0)
    (cut,) = b.ready(now=0.0)
    assert [(r.partition, r.offset) for r in cut.records] == [(0, 0), (0, 1), (0, 2), (1, 10)]
    assert cut.ends == {TP0: 3, TP1: 11}
    assert len(b) == 2 and b.time_left(now=0.1, idle=1.0) == pytest.approx(0.4)
    assert b.ready(now=0.2) == []
    (late,) = b.ready(now=0.6)
    assert [r.offset for r in late.records] == [11, 12] and late.ends == {TP1: 13}
    assert b.time_left(now=0.7, idle=1.0) == 1.0 and len(b) == 0


def test_batcher_rejects_nonsense_and_clears() -> None:
    with pytest.raises(ValueError):
        Batcher(0, 1.0)
    b = Batcher(10, 1.0)
    b.add({TP0: recs(0, range(5))}, now=0)
    assert b.clear() == 5 and b.ready(now=100) == []


# ----------------------------------------------------------------------------- ledger


def test_ledger_commits_only_what_is_stored_and_only_once() -> None:
    ledger = OffsetLedger()
    ledger.revoked([])
    ledger.assigned([TP0, TP1])
    ticket = ledger.consumed({TP0: 5, TP1: 3}, events=8)
    assert ledger.in_flight_events == 8 and ledger.due() == {}
    assert ledger.stored(TP0, 5, ticket.epoch)
    assert ledger.due() == {TP0: 5}
    ledger.commits_done({TP0: 5})
    assert ledger.due() == {} and ledger.committed(TP0) == 5
    ledger.finished(ticket)
    assert ledger.in_flight_events == 0 and ledger.stored_total == 8


def test_a_revocation_abandons_what_is_in_flight_and_ignores_late_results() -> None:
    ledger = OffsetLedger()
    ledger.assigned([TP0])
    ticket = ledger.consumed({TP0: 10}, events=10)
    ledger.revoked([TP0])
    ledger.assigned([TP0])  # the same partition comes back
    assert not ledger.current(ticket) and ledger.in_flight_events == 0 and ledger.abandoned_total == 10
    assert not ledger.stored(TP0, 10, ticket.epoch), "a batch of an ended epoch must not move offsets"
    assert ledger.due() == {} and TP0 not in ledger.positions()


def test_floors_are_forgotten_for_a_new_producer_and_never_kept_for_partitions_not_owned() -> None:
    ledger = OffsetLedger()
    ledger.assigned([TP0])
    ledger.note_committed(TP0, 7)
    ledger.note_committed(TP1, 3)
    assert ledger.committed(TP0) == 7 and ledger.committed(TP1) is None
    ledger.forget_committed(TP0)
    assert ledger.committed(TP0) is None


# ----------------------------------------------------------------------------- intake


class FakePipeline:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.cuts: list[Any] = []

    async def submit(self, cut: Any, epoch: int) -> bool:
        if self.accept:
            self.cuts.append(cut)
        return self.accept


async def test_records_of_an_ended_assignment_are_rewound_not_skipped() -> None:
    ledger = OffsetLedger()
    ledger.assigned([TP0])
    rewound: list[dict] = []

    async def rewind(offsets: Any) -> None:
        rewound.append(dict(offsets))

    pipeline = FakePipeline()
    intake = Intake(Batcher(4, 1.0), pipeline, ledger, rewind)  # type: ignore[arg-type]
    token = intake.fetch_started()
    ledger.revoked([TP0])  # a rebalance while the fetch was on its way
    ledger.assigned([TP0])
    await intake.fetched({TP0: recs(0, range(20, 23))}, token, now=0)
    assert pipeline.cuts == [] and rewound == [{TP0: 20}]


async def test_a_refused_submit_rewinds_the_cut_and_what_waits_behind_it() -> None:
    ledger = OffsetLedger()
    ledger.assigned([TP0, TP1])
    rewound: list[dict] = []

    async def rewind(offsets: Any) -> None:
        rewound.append(dict(offsets))

    intake = Intake(Batcher(2, 1.0), FakePipeline(accept=False), ledger, rewind)  # type: ignore[arg-type]
    await intake.fetched({TP0: recs(0, range(5, 8)), TP1: recs(1, range(0, 1))}, intake.fetch_started(), now=0)
    assert rewound == [{TP0: 5, TP1: 0}]


# ----------------------------------------------------------------------------- outputs


class Letters:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def dead_lettered(self, reason: str, topic: str, partition: int, offset: int, error: str) -> None:
        self.reasons.append(reason)


INFO = ModelInfo("m", "r", "cpu", "fp32", ("NEGATIVE", "POSITIVE"), False)


def builder(max_bytes: dict[str, int], letters: Letters, include_text: bool = False) -> OutputBuilder:
    return OutputBuilder(output_topic="out", dead_letter_topic="dlt", model=INFO, max_bytes=max_bytes,
                         include_text=include_text, scored_text=lambda text: text[:5], observer=letters)


def scored(n: int, truncated: Optional[list[bool]] = None, failures: Optional[dict] = None) -> Scored:
    values = np.tile([0.25, 0.75], (n, 1))
    return Scored(Scores(values, truncated or [False] * n, INFO.labels, Head.single_label, BatchReport(n, n, n, 1)),
                  failures or {})


def test_outputs_are_keyed_by_input_key_else_by_id() -> None:
    letters = Letters()
    records = [Rec("in", 0, 0, key=b"k", value=b"x"), Rec("in", 0, 1, value=b"x"), Rec("in", 1, 5, value=b"x")]
    decoded = [InputRecord("a"), InputRecord("b", id="the-id"), InputRecord("c")]
    deliveries = builder({}, letters).build(records, decoded, scored(3))
    keys = [r.key for d in deliveries for r in d.records]
    assert keys == [b"k", b"the-id", b"in:1:5"]
    assert [d.next_offset for d in deliveries] == [2, 6]
    doc = orjson.loads(deliveries[0].records[0].value)
    assert doc["label"] == "POSITIVE" and doc["scores"] == {"NEGATIVE": 0.25, "POSITIVE": 0.75}


def test_oversized_output_becomes_a_dead_letter_and_an_oversized_dead_letter_loses_its_value() -> None:
    letters = Letters()
    small, big = b'{"text": "s"}', b'{"text": "b", "metadata": {"x": "' + b"y" * 5000 + b'"}}'
    records = [Rec("in", 0, 0, value=small), Rec("in", 0, 1, value=big)]
    decoded = [InputRecord("s", metadata={"x": "y" * 3000}), InputRecord("b", metadata={"x": "y" * 5000})]
    out = builder({"out": 3000, "dlt": 4000}, letters).build(records, decoded, scored(2))[0]
    first, second = out.records
    assert first.kind == "dead_letter" and first.value == small and record_size(first) <= 4000
    assert second.kind == "marker" and second.value == b""
    headers = dict(second.headers)
    assert headers[REASON_HEADER] == b"output_too_large" and headers[OMITTED_HEADER] == str(len(big)).encode()
    assert headers[KEY_NULL_HEADER] == b"true" and second.key == b"in:0:1"
    assert letters.reasons == ["output_too_large", "output_too_large"]


def test_decode_errors_and_model_failures_are_dead_letters_in_place() -> None:
    letters = Letters()
    records = [Rec("in", 0, 0, value=b"bad"), Rec("in", 0, 1, value=b"ok"), Rec("in", 0, 2, value=b"fails")]
    decoded = [DecodeError("not_json", "nope"), InputRecord("ok"), InputRecord("fails")]
    failure = RuntimeError("boom")
    (delivery,) = builder({}, letters).build(records, decoded, scored(2, failures={1: ("inference_failed", failure)}))
    assert [r.kind for r in delivery.records] == ["dead_letter", "output", "dead_letter"]
    assert letters.reasons == ["not_json", "inference_failed"]


def test_copied_text_is_what_was_scored() -> None:
    records = [Rec("in", 0, 0, value=b"x")]
    (delivery,) = builder({}, Letters(), include_text=True).build(records, [InputRecord("a long text")], scored(1, [True]))
    assert orjson.loads(delivery.records[0].value)["text"] == "a lon"


def test_fallbacks_end_with_nothing() -> None:
    b = builder({}, Letters())
    origin = Rec("in", 0, 3, key=None, value=b"v")
    output = Outbound("out", b"k", b"v")
    letter = b.fallback(output, origin, UnknownError())
    assert letter is not None and letter.kind == "dead_letter" and dict(letter.headers)[REASON_HEADER] == b"output_rejected"
    marker = b.fallback(letter, origin, UnknownError())
    assert marker is not None and marker.kind == "marker"
    assert b.fallback(marker, origin, UnknownError()) is None


# ----------------------------------------------------------------------------- delivery policy


class FakeSink:
    """Answers each deliver() with the next scripted outcome (None: stored)."""

    transactional = True

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def units(self, deliveries: Sequence[Delivery]) -> list[list[Delivery]]:
        return [[d] for d in deliveries]

    async def deliver(self, unit: Sequence[Delivery]) -> None:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if callable(outcome):
            outcome = outcome(unit)
        if outcome is not None:
            raise outcome


class Owner:
    def __init__(self, owned: set) -> None:
        self.owned = owned
        self.epoch = 1

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self.owned


def one_delivery() -> Delivery:
    d = Delivery(TP0)
    d.add(0, Outbound("out", b"k", b"v"), Rec("in", 0, 0, key=b"k", value=b"v"))
    return d


def deliverer(sink: FakeSink, owner: Owner, budget: float = 30.0, observer: Any = None) -> Deliverer:
    return Deliverer(sink, builder({}, Letters()), owner, observer or NullObserver(), backoff_initial_s=0.01,
                     backoff_max_s=0.02, retry_budget_s=budget)


class Denials(NullObserver):
    def __init__(self) -> None:
        self.denied: list[tuple[str, str]] = []
        self.restored: list[str] = []

    def access_denied(self, missing: str, during: str, error: str) -> None:
        self.denied.append((missing, during))

    def access_restored(self, during: str) -> None:
        self.restored.append(during)


async def test_a_publish_refused_for_an_acl_is_retried_and_said_at_once() -> None:
    """A missing Write ACL is no passing fault: said once, while it lasts (/ready reads ``denied``),
    and retried, so that granting it resumes the worker."""
    seen: list[Optional[str]] = []
    observer = Denials()

    def second(unit: Any) -> BaseException:
        seen.append(d.denied)  # what /ready would read while the ACL is missing
        return TopicAuthorizationFailedError("out")

    sink = FakeSink([TopicAuthorizationFailedError("out"), second, None])
    d = deliverer(sink, Owner({TP0}), observer=observer)
    delivery = one_delivery()
    assert await d.deliver([delivery], epoch=1) == [delivery]
    assert seen == ["Write on topic out"]
    assert observer.denied == [("Write on topic out", "publish")], "one line per episode, not per retry"
    assert observer.restored == ["publish"] and d.denied is None and sink.calls == 3


async def test_a_commit_refused_for_an_acl_says_which_and_is_retried() -> None:
    ledger = OffsetLedger()
    ledger.assigned([TP0])
    ledger.stored(TP0, 7, ledger.epoch)
    answers: list[Any] = [GroupAuthorizationFailedError("g"), True]

    async def commit(offsets: Any) -> bool:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    committer = Committer(ledger, commit, timeout_s=5)
    assert await committer.commit() is False
    assert committer.denied == "Read on group g" and ledger.due() == {TP0: 7}
    assert await committer.commit() is True
    assert committer.denied is None and ledger.due() == {}


@pytest.mark.parametrize(
    ("exc", "right"),
    [
        (TopicAuthorizationFailedError("out"), "Write on topic out"),
        (TopicAuthorizationFailedError({"b", "a"}), "Write on topic a, b"),
        (TopicAuthorizationFailedError(), "Write on topic fallback"),
        (GroupAuthorizationFailedError("g"), "Read on group g"),
        (TransactionalIdAuthorizationFailed("g-in-0"), "Write on transactional id g-in-0"),
    ],
)
def test_missing_right_names_what_to_grant(exc: BaseException, right: str) -> None:
    assert missing_right(exc, topic_operation="Write", topics=["fallback"]) == right


async def test_a_refused_record_is_replaced_and_the_unit_delivered_again() -> None:
    delivery = one_delivery()
    sink = FakeSink([lambda unit: Rejected([(unit[0], 0, MessageSizeTooLargeError())]), None])
    stored = await deliverer(sink, Owner({TP0})).deliver([delivery], epoch=1)
    assert stored == [delivery] and delivery.records[0].kind == "dead_letter" and sink.calls == 2


async def test_fenced_is_retried_while_owned_and_dropped_once_moved() -> None:
    owner = Owner({TP0})
    sink = FakeSink([PartitionFenced(TP0, ProducerFenced()), None])
    delivery = one_delivery()
    assert await deliverer(sink, owner).deliver([delivery], epoch=1) == [delivery] and sink.calls == 2
    owner.owned = set()
    sink = FakeSink([PartitionFenced(TP0, ProducerFenced())])
    assert await deliverer(sink, owner).deliver([one_delivery()], epoch=1) == [] and sink.calls == 1


async def test_retry_budget_ends_a_delivery_that_keeps_failing() -> None:
    sink = FakeSink([KafkaConnectionError()] * 1000)
    with pytest.raises(DeliveryFailed, match="retry budget"):
        await deliverer(sink, Owner({TP0}), budget=0.05).deliver([one_delivery()], epoch=1)


async def test_nothing_smaller_left_is_unpublishable() -> None:
    delivery = Delivery(TP0)
    delivery.add(0, Outbound("dlt", b"k", b"", kind="marker"), Rec("in", 0, 0))
    sink = FakeSink([lambda unit: Rejected([(unit[0], 0, UnknownError())])])
    with pytest.raises(Unpublishable):
        await deliverer(sink, Owner({TP0})).deliver([delivery], epoch=1)


async def test_an_ended_epoch_stops_the_retries() -> None:
    owner = Owner({TP0})
    sink = FakeSink([KafkaConnectionError()] * 1000)
    task = asyncio.ensure_future(deliverer(sink, owner).deliver([one_delivery()], epoch=1))
    await until(lambda: sink.calls >= 2, 5, "a retry (the first attempt failed, a second went out)", interval_s=0)
    owner.epoch = 2
    assert await asyncio.wait_for(task, 5) == []


# ----------------------------------------------------------------------------- errors and partitions


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (MessageSizeTooLargeError(), Verdict.RECORD),
        (UnknownError(), Verdict.RECORD),  # INVALID_RECORD (keyless record for a compacted topic) arrives so
        (AssertionError("Need at least one: key or value"), Verdict.RECORD),
        (ProducerFenced(), Verdict.FENCED),
        (NotEnoughReplicasError(), Verdict.RETRY),
        (KafkaConnectionError(), Verdict.RETRY),
        (TopicAuthorizationFailedError(), Verdict.DENIED),  # a topic's permissions, not a record's fault
        (GroupAuthorizationFailedError("g"), Verdict.DENIED),
        (TransactionalIdAuthorizationFailed("g-in-0"), Verdict.DENIED),
        (asyncio.TimeoutError(), Verdict.RETRY),
    ],
)
def test_classify(exc: BaseException, verdict: Verdict) -> None:
    assert classify(exc) is verdict


def test_describe_names_the_class_once() -> None:
    assert describe(KafkaConnectionError("Unable to bootstrap")).count("KafkaConnectionError") == 1


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)
