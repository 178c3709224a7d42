"""``sentiment-worker compare A B``: where two scored topics (an old and a new model) disagree.

A shadow release scores the same input as the current one and writes its own output topic;
before promoting it one wants to know how often the two give another label, how far their
probabilities move, and whether both really scored the same events. This module has three
parts, kept apart so the arithmetic is tested without a broker:

- :class:`Side`: one topic's output documents, the last one per ``id`` (at-least-once
  delivery may write an event twice), with what could not be read counted;
- :func:`compare`: two sides joined by ``id`` into a :class:`Comparison` (pure);
- :func:`read_side`: one topic read from Kafka (read_committed, up to the end offsets it
  had when the command started) into a Side.

What is compared, per joined event, by head (``schemas/sentiment-output.v2.json``; v1
documents are single_label):

- single_label and multi_label: the top ``label`` (agreement and a confusion table, A rows
  by B columns) and |Δscore|: max over labels of |pA(label) - pB(label)| (a label one side
  lacks has probability 0 there). That is the largest move of any probability, which is what
  can change a decision; the top label's own score would miss a flip between two labels
  whose score is similar.
- multi_label also per label: membership agreement (in ``labels`` on both sides or on
  neither) and |pA(label) - pB(label)|.
- regression: |Δvalue|; no label agreement.

Joined events whose heads differ (a model with another head) are counted and not compared. p95 is the nearest-rank percentile.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import orjson
from aiokafka import TopicPartition

from worker.registry.wire import HEADER_SIZE, MAGIC
from worker.settings import Settings
from worker.tools.kafka_io import (
    BEGINNING,
    StartAt,
    ToolError,
    check_partitions,
    consumer,
    format_time,
    parse_start,
    partition_count,
    read,
    seek,
)

HEADS = ("single_label", "multi_label", "regression")


# ----------------------------------------------------------------------------- one side


@dataclass(frozen=True, slots=True)
class Scored:
    """What is compared of one output document."""

    head: str
    label: Optional[str]
    scores: dict[str, float]
    labels: Optional[frozenset[str]]  # multi_label only
    value: Optional[float]  # regression only
    model: tuple[str, Optional[str]]  # name, revision
    event_ms: Optional[int]  # source.timestamp: when the input event was written


def scored(doc: Any) -> tuple[str, Scored]:
    """The id and comparable fields of an output document; ValueError when it isn't one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise ValueError("not an output document (no string id)")
    head = doc.get("head", "single_label")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}")
    model = doc.get("model") or {}
    scores = doc.get("scores") or {}
    labels = doc.get("labels")
    value = doc.get("value")
    if head == "regression" and not isinstance(value, (int, float)):
        raise ValueError("regression document without a value")
    if head != "regression" and not isinstance(doc.get("label"), str):
        raise ValueError("classification document without a label")
    return doc["id"], Scored(
        head=head,
        label=doc.get("label"),
        scores={str(k): float(v) for k, v in scores.items()},
        labels=frozenset(labels) if head == "multi_label" and labels is not None else None,
        value=float(value) if head == "regression" else None,
        model=(str(model.get("name")), model.get("revision")),
        event_ms=_epoch_ms((doc.get("source") or {}).get("timestamp")),
    )


def _epoch_ms(stamp: Any) -> Optional[int]:
    if not isinstance(stamp, str):
        return None
    try:
        return round(datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return None


@dataclass
class Side:
    """One topic's documents, the last per id; records that aren't output documents are counted, not kept."""

    topic: str
    events: dict[str, Scored] = field(default_factory=dict)
    records: int = 0  # read from the topic (from --from's position on)
    duplicates: int = 0  # records whose id came before (the earlier one is replaced)
    unreadable: int = 0  # not a JSON output document
    avro: int = 0  # of those, Schema Registry framed but not JSON (Avro): not decoded here
    outside: int = 0  # output documents whose event time is outside --from/--until

    def add_value(self, value: Optional[bytes], *, record_ms: Optional[int] = None,
                  window: tuple[Optional[int], Optional[int]] = (None, None)) -> None:
        """Count and keep one record's value (plain JSON, or JSON framed by a Schema Registry).

        The window applies to the input event's time (``source.timestamp``, the record's own
        timestamp when it has none), the same on both sides even when one scored it later.
        """
        self.records += 1
        doc = _document(value)
        if doc is None:
            self.unreadable += 1
            if value is not None and len(value) > HEADER_SIZE and value[0] == MAGIC:
                self.avro += 1
            return
        try:
            event_id, item = scored(doc)
        except (ValueError, TypeError, AttributeError):
            self.unreadable += 1
            return
        when = item.event_ms if item.event_ms is not None else record_ms
        start, until = window
        if when is not None and ((start is not None and when < start) or (until is not None and when >= until)):
            self.outside += 1
            return
        self.add(event_id, item)

    def add(self, event_id: str, item: Scored) -> None:
        if event_id in self.events:
            self.duplicates += 1
            del self.events[event_id]  # re-inserted last: "the last one" also in iteration order
        self.events[event_id] = item

    def models(self) -> Counter[tuple[str, Optional[str]]]:
        """(name, revision) of the events kept, with how many each scored."""
        return Counter(item.model for item in self.events.values())

    def heads(self) -> Counter[str]:
        return Counter(item.head for item in self.events.values())

    def summary(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "records": self.records,
            "events": len(self.events),
            "duplicates": self.duplicates,
            "unreadable": self.unreadable,
            "avro": self.avro,
            "outside_window": self.outside,
            "heads": dict(sorted(self.heads().items())),
            "models": [
                {"name": name, "revision": revision, "events": n}
                for (name, revision), n in sorted(self.models().items(), key=lambda kv: (-kv[1], str(kv[0])))
            ],
        }


def _document(value: Optional[bytes]) -> Any:
    if value is None:
        return None
    if len(value) > HEADER_SIZE and value[0] == MAGIC:
        value = value[HEADER_SIZE:]  # OUTPUT_FORMAT=json_schema: the JSON after magic byte and schema id
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


# ----------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class Spread:
    """Mean, p95 (nearest rank) and max of absolute differences."""

    count: int
    mean: float
    p95: float
    max: float

    @staticmethod
    def of(values: Sequence[float]) -> Optional[Spread]:
        if not values:
            return None
        ordered = sorted(values)
        rank = max(1, math.ceil(0.95 * len(ordered)))
        return Spread(len(ordered), math.fsum(ordered) / len(ordered), ordered[rank - 1], ordered[-1])

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "p95": self.p95, "max": self.max}


@dataclass(frozen=True)
class LabelStats:
    """multi_label, one label: how often both sides agree it applies, and how far its probability moves."""

    compared: int
    agreeing: int
    delta: Optional[Spread]

    @property
    def agreement(self) -> float:
        return self.agreeing / self.compared if self.compared else math.nan


@dataclass
class Comparison:
    a: Side
    b: Side
    both: int
    only_a: int
    only_b: int
    head_mismatch: int  # joined events whose heads differ: not compared
    labelled: int  # joined events with a top label on both sides
    agreeing: int  # of those, the same top label
    confusion: dict[str, Counter[str]]  # A label -> B label -> events
    score_deltas: list[float]  # per labelled event: max over labels of |pA - pB|
    value_deltas: list[float]  # per regression event: |valueA - valueB|
    per_label: dict[str, LabelStats]  # multi_label heads only

    @property
    def agreement(self) -> Optional[float]:
        """Fraction of joined events with the same top label; None when no event has a label on both sides."""
        return self.agreeing / self.labelled if self.labelled else None

    def label_names(self) -> list[str]:
        """Every label either side gave a joined event: the confusion matrix's rows and columns."""
        return sorted(set(self.confusion) | {label for row in self.confusion.values() for label in row})

    def matrix(self) -> list[list[int]]:
        """The confusion matrix, square over :meth:`label_names`: rows A's label, columns B's."""
        names = self.label_names()
        return [[self.confusion.get(a, Counter()).get(b, 0) for b in names] for a in names]

    def as_dict(self) -> dict[str, Any]:
        score, value = Spread.of(self.score_deltas), Spread.of(self.value_deltas)
        return {
            "a": self.a.summary(),
            "b": self.b.summary(),
            "events": {"both": self.both, "only_a": self.only_a, "only_b": self.only_b,
                       "head_mismatch": self.head_mismatch},
            "labels": {
                "compared": self.labelled,
                "agreeing": self.agreeing,
                "agreement": self.agreement,
                "confusion": {a: dict(zip(self.label_names(), row)) for a, row in zip(self.label_names(), self.matrix())},
            },
            "score_delta": score.as_dict() if score else None,
            "value_delta": value.as_dict() if value else None,
            "multi_label": {
                label: {"compared": s.compared, "agreeing": s.agreeing, "agreement": s.agreement,
                        "delta": s.delta.as_dict() if s.delta else None}
                for label, s in sorted(self.per_label.items())
            } or None,
        }


def compare(a: Side, b: Side) -> Comparison:
    """Join the two sides by id and measure where they differ (see the module's docstring)."""
    joined = [(a.events[i], b.events[i]) for i in a.events if i in b.events]
    confusion: dict[str, Counter[str]] = {}
    score_deltas: list[float] = []
    value_deltas: list[float] = []
    membership: dict[str, list[int]] = {}  # label -> [compared, agreeing]
    label_deltas: dict[str, list[float]] = {}
    mismatch = labelled = agreeing = 0
    for x, y in joined:
        if x.head != y.head:
            mismatch += 1
            continue
        if x.head == "regression":
            value_deltas.append(abs(x.value - y.value))  # type: ignore[operator]
            continue
        labelled += 1
        agreeing += x.label == y.label
        confusion.setdefault(x.label or "", Counter())[y.label or ""] += 1
        names = x.scores.keys() | y.scores.keys()
        score_deltas.append(max((abs(x.scores.get(n, 0.0) - y.scores.get(n, 0.0)) for n in names), default=0.0))
        if x.head == "multi_label":
            for name in names:
                counts = membership.setdefault(name, [0, 0])
                counts[0] += 1
                counts[1] += (name in (x.labels or ())) == (name in (y.labels or ()))
                label_deltas.setdefault(name, []).append(abs(x.scores.get(name, 0.0) - y.scores.get(name, 0.0)))
    return Comparison(
        a=a, b=b, both=len(joined), only_a=len(a.events) - len(joined), only_b=len(b.events) - len(joined),
        head_mismatch=mismatch, labelled=labelled, agreeing=agreeing, confusion=confusion,
        score_deltas=score_deltas, value_deltas=value_deltas,
        per_label={name: LabelStats(c[0], c[1], Spread.of(label_deltas[name])) for name, c in membership.items()},
    )


# ----------------------------------------------------------------------------- showing


def report(result: Comparison, *, window: tuple[Optional[int], Optional[int]] = (None, None)) -> str:
    """The comparison for a person."""
    lines: list[str] = []
    start, until = window
    if start is not None or until is not None:
        lines.append(f"events from {format_time(start) if start is not None else 'the beginning'} "
                     f"until {format_time(until) if until is not None else 'the end'} (input event time)")
    for name, side in (("A", result.a), ("B", result.b)):
        extra = [f"{side.duplicates} duplicate(s)"]
        if side.unreadable:
            extra.append(f"{side.unreadable} unreadable" + (f" ({side.avro} Avro, not supported)" if side.avro else ""))
        if side.outside:
            extra.append(f"{side.outside} outside the window")
        lines.append(f"{name}: {side.topic}: {side.records} record(s), {len(side.events)} event(s), {', '.join(extra)}")
        for (model, revision), n in sorted(side.models().items(), key=lambda kv: (-kv[1], str(kv[0]))):
            lines.append(f"   model {model} revision {revision or '-'}: {n} event(s)")
    lines.append(f"events: {result.both} in both, {result.only_a} only in A, {result.only_b} only in B")
    if result.head_mismatch:
        lines.append(f"heads differ on {result.head_mismatch} event(s)")
    if result.agreement is not None:
        lines.append(f"label agreement: {result.agreement:.2%} ({result.agreeing} of {result.labelled})")
        lines.append("confusion (rows: A's label, columns: B's label):")
        lines.extend("  " + row for row in confusion_table(result.label_names(), result.matrix()))
    score = Spread.of(result.score_deltas)
    if score:
        lines.append(f"|Δscore| (max over labels of |pA - pB|): mean {score.mean:.4f}  p95 {score.p95:.4f}  max {score.max:.4f}")
    value = Spread.of(result.value_deltas)
    if value:
        lines.append(f"|Δvalue|: mean {value.mean:.4g}  p95 {value.p95:.4g}  max {value.max:.4g}")
    if result.per_label:
        lines.append("per label (multi-label): agreement on membership, |Δprob| mean and p95")
        width = max(len(name) for name in result.per_label)
        for name, s in sorted(result.per_label.items()):
            delta = f"mean {s.delta.mean:.4f}  p95 {s.delta.p95:.4f}" if s.delta else ""
            lines.append(f"  {name:<{width}}  {s.agreement:7.2%}  {delta}")
    return "\n".join(lines) + "\n"


def confusion_table(names: Sequence[str], matrix: Sequence[Sequence[int]]) -> list[str]:
    """Rows A's labels, columns B's, right-aligned counts."""
    head_width = max([len(n) for n in names] + [3])
    widths = [max(len(n), *(len(str(row[j])) for row in matrix)) for j, n in enumerate(names)]
    out = [" " * head_width + "".join(f"  {n:>{w}}" for n, w in zip(names, widths))]
    for name, row in zip(names, matrix):
        out.append(f"{name:<{head_width}}" + "".join(f"  {n:>{w}}" for n, w in zip(row, widths)))
    return out


def plot(result: Comparison, path: Path) -> None:
    """A histogram of |Δscore| (|Δvalue| for regression) and the confusion matrix, as a PNG.

    ImportError when matplotlib (the ``bench`` extra) is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deltas, what = (result.score_deltas, "|Δscore| (max over labels)") if result.score_deltas else (
        result.value_deltas, "|Δvalue|")
    fig, (hist, matrix) = plt.subplots(1, 2, figsize=(12, 5))
    hist.hist(deltas, bins=40, color="tab:blue")
    hist.set_xlabel(what)
    hist.set_ylabel("events")
    hist.set_title(f"{result.a.topic} vs {result.b.topic}: {len(deltas)} event(s)")
    names = result.label_names()
    if names:
        counts = result.matrix()
        top = max(max(row) for row in counts) or 1
        matrix.imshow(counts, cmap="Blues", vmin=0, vmax=top)
        matrix.set_xticks(range(len(names)), names, rotation=45, ha="right")
        matrix.set_yticks(range(len(names)), names)
        for i, row in enumerate(counts):
            for j, n in enumerate(row):
                matrix.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
        matrix.set_xlabel(f"B: {result.b.topic}")
        matrix.set_ylabel(f"A: {result.a.topic}")
        agreement = result.agreement
        matrix.set_title(f"labels: {agreement:.1%} agree" if agreement is not None else "labels")
    else:
        matrix.axis("off")
        matrix.text(0.5, 0.5, "no labels to compare (regression)", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- reading Kafka


def parse_time(text: str) -> int:
    """Epoch ms of an ISO 8601 time or ``@EPOCH_MS`` (the spellings ``tail --offset`` takes for a time)."""
    start = parse_start(text)
    if start.kind != "time":
        raise ValueError(f"{text!r} is not a time: use @EPOCH_MS or ISO 8601 (2024-05-01T12:00:00Z)")
    return start.value


async def read_side(settings: Settings, topic: str, window: tuple[Optional[int], Optional[int]] = (None, None)) -> Side:
    """One scored topic, read_committed, from the beginning (or ``window[0]``) to the end offsets it has now.

    Seeking by the output records' timestamps is safe for a window on event time: an event is
    scored after it was written, so its output record is not older than the event.
    """
    count = await partition_count(settings, topic)
    tps = [TopicPartition(topic, p) for p in check_partitions(topic, (), count)]
    side = Side(topic)
    client = consumer(settings)
    await client.start()
    try:
        client.assign(tps)
        await seek(client, tps, StartAt("time", window[0]) if window[0] is not None else BEGINNING)
        async for record in read(client, tps, until_end=True, idle_timeout_s=None):
            side.add_value(record.value, record_ms=record.timestamp, window=window)
    finally:
        await client.stop()
    if side.records and not side.events and side.unreadable == side.records:
        why = f"{side.avro} are Schema Registry Avro, which compare does not read" if side.avro else "none is JSON"
        raise ToolError(f"{topic}: none of its {side.records} record(s) is an output document ({why})")
    return side


async def compare_topics(settings: Settings, a: str, b: str,
                         window: tuple[Optional[int], Optional[int]] = (None, None)) -> Comparison:
    """Read both topics side by side (so both stop at the ends they had at the same moment) and compare."""
    side_a, side_b = await asyncio.gather(read_side(settings, a, window), read_side(settings, b, window))
    return compare(side_a, side_b)
