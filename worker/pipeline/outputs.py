"""From a scored batch to what gets written: an output or a dead letter per input record, per partition.

Every record written here fits its topic: an output larger than the output
topic's ``max.message.bytes`` becomes a dead letter (``output_too_large``),
a dead letter larger than the dead-letter topic's limit loses its value
(``worker.pipeline.dead_letter.without_value``). Every record has a key: an
output without an input key is keyed by its id (compacted output topics
refuse keyless records). The same rules decide what replaces a record the
broker refuses anyway (:meth:`OutputBuilder.fallback`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Optional, Protocol, Union

import orjson
from aiokafka import TopicPartition

from worker.kafka.records import Delivery, Outbound, record_size
from worker.model.loading import Head, ModelInfo
from worker.pipeline.codec import DecodeError, InputRecord, Source, output_document
from worker.pipeline.dead_letter import dead_letter, without_value
from worker.pipeline.headers import HeaderPolicy
from worker.pipeline.observer import BatchTraceLike
from worker.pipeline.scoring import Scored

Decoded = Union[InputRecord, DecodeError]


class DeadLetterObserver(Protocol):
    def dead_lettered(self, reason: str, topic: str, partition: int, offset: int, error: str) -> None: ...


class OutputBuilder:
    """Builds each batch's deliveries; knows the topics, their size limits and the model block."""

    def __init__(
        self,
        *,
        output_topic: str,
        dead_letter_topic: str,
        model: ModelInfo,
        max_bytes: Mapping[str, int],
        include_text: bool,
        scored_text: Callable[[str], str],
        observer: DeadLetterObserver,
        copy_headers: Optional[Callable[[Sequence[tuple[str, bytes]]], tuple[tuple[str, bytes], ...]]] = None,
        schema_version: str = "2",
        threshold: float = 0.5,
        serialize: Optional[Callable[[dict[str, Any]], bytes]] = None,
    ) -> None:
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self._model = model
        self._model_block = model.as_output()
        self._max_bytes = dict(max_bytes)
        self._include_text = include_text
        self._scored_text = scored_text
        self._observer = observer
        self._copy_headers = copy_headers or HeaderPolicy(schema_version=schema_version)
        self._version = schema_version
        self._threshold = threshold
        self._head = model.head.value
        # an output document into its value: plain JSON, or a Schema Registry serializer (worker.registry)
        self._serialize = serialize or orjson.dumps
        if schema_version == "1" and model.head is not Head.single_label:
            raise ValueError(f"OUTPUT_SCHEMA_VERSION=1 has no room for a {model.head.value} model: use 2")

    def build(
        self, records: Sequence[Any], decoded: Sequence[Decoded], scored: Scored, trace: Optional[BatchTraceLike] = None
    ) -> list[Delivery]:
        """One delivery per input partition, records in offset order (an output or dead letter each).

        ``records``: the consumed records (aiokafka ConsumerRecords), per partition in
        offset order; ``decoded``: what each value decoded to; ``scored``: the scores
        of the decoded records' texts, in the same order; ``trace``: with TRACING on,
        whose trace context each output carries.
        """
        processed_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        labels = scored.scores.labels
        rows = scored.scores.values.tolist()
        truncated = scored.scores.truncated
        failures = scored.failures
        deliveries: dict[tuple[str, int], Delivery] = {}
        output_limit = self._max_bytes.get(self.output_topic)
        text = 0
        for position, (record, item) in enumerate(zip(records, decoded)):
            where = (record.topic, record.partition)
            delivery = deliveries.get(where)
            if delivery is None:
                delivery = deliveries[where] = Delivery(TopicPartition(record.topic, record.partition))
            if isinstance(item, DecodeError):
                out = self._letter(record, item.reason, "DecodeError", str(item))
            else:
                index, text = text, text + 1
                failure = failures.get(index)
                if failure is not None:
                    reason, exc = failure
                    cause = exc.__cause__ or exc
                    out = self._letter(record, reason, type(cause).__name__, str(cause) or repr(cause))
                else:
                    extra = trace.headers(position) if trace is not None else ()
                    out = self._output(
                        record, item, labels, rows[index], truncated[index], processed_at, output_limit, extra
                    )
            delivery.add(record.offset, out, record)
        return list(deliveries.values())

    def _output(
        self,
        record: Any,
        item: InputRecord,
        labels: Sequence[str],
        row: Sequence[float],
        truncated: bool,
        processed_at: str,
        limit: Optional[int],
        extra_headers: tuple[tuple[str, bytes], ...] = (),
    ) -> Outbound:
        source = Source(record.topic, record.partition, record.offset, record.timestamp)
        result: dict[str, Any]
        if self._head == "regression":
            result = {"value": row[0]}
        else:
            best = max(range(len(row)), key=row.__getitem__)
            result = {"label": labels[best], "score": row[best], "scores": dict(zip(labels, row))}
            if self._head == "multi_label":
                chosen = sorted((i for i, p in enumerate(row) if p >= self._threshold), key=lambda i: -row[i])
                result["labels"] = [labels[i] for i in chosen]
        try:
            value = self._serialize(output_document(
                item,
                source,
                truncated=truncated,
                model=self._model_block,
                processed_at=processed_at,
                head=self._head,
                version=self._version,
                include_text=self._include_text,
                text=self._scored_text(item.text) if self._include_text and truncated else None,
                **result,
            ))
        except (TypeError, ValueError) as exc:  # orjson or Avro: a value it can't write; never stall on it
            return self._letter(record, "encode_failed", type(exc).__name__, str(exc))
        key = record.key
        if key is None:
            key = (item.id if item.id is not None else source.default_id).encode()
        out = Outbound(self.output_topic, key, value, self._copy_headers(record.headers or ()) + extra_headers)
        if limit is not None and record_size(out) > limit:
            return self._letter(
                record,
                "output_too_large",
                "RecordTooLargeError",
                f"the output is about {record_size(out)} bytes, over {self.output_topic}'s max.message.bytes {limit}",
            )
        return out

    def _letter(self, record: Any, reason: str, exception_class: str, message: str) -> Outbound:
        self._observer.dead_lettered(reason, record.topic, record.partition, record.offset, message)
        letter = dead_letter(
            self.dead_letter_topic,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            reason=reason,
            exception_class=exception_class,
            message=message,
            headers=tuple(record.headers or ()),
        )
        return self._fitting(letter)

    def _fitting(self, letter: Outbound) -> Outbound:
        limit = self._max_bytes.get(self.dead_letter_topic)
        if limit is not None and record_size(letter) > limit:
            return without_value(letter)
        return letter

    def fallback(self, refused: Outbound, origin: Any, exc: BaseException) -> Optional[Outbound]:
        """What replaces a record the broker refused for good; None when nothing smaller is left."""
        if refused.kind == "output":
            return self._letter(origin, "output_rejected", type(exc).__name__, str(exc) or repr(exc))
        if refused.kind == "dead_letter":
            return without_value(refused)
        return None

