"""What a failed publish or commit means: this record can never be stored, the producer is fenced,
the principal lacks a right, or try again.

The answer decides between very different reactions (see
``worker.pipeline.delivery``): a record the broker refuses for good is
replaced by a dead letter, a fenced transactional producer is replaced by a
fresh one while the partition is still ours, and anything else is retried
with backoff, offsets held, until it works or the retry budget runs out.
Retrying a refused record would stall its partitions for ever; dead-lettering
on a passing outage would send good records to the dead-letter topic. A
missing ACL is retried too (an operator can grant it), but it is no passing
fault: it is said at once, naming the right that is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    GroupAuthorizationFailedError,
    IllegalOperation,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTxnState,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownError,
)


class Verdict(str, Enum):
    RECORD = "record"  # something about the record(s): try each alone, refuse those that fail again
    FENCED = "fenced"  # the transactional producer is gone (newer owner, or the broker aborted on timeout)
    RETRY = "retry"  # the broker, the network, the topic's state: back off and send again
    DENIED = "denied"  # the principal lacks an ACL: retried (it can be granted), but reported at once


# Broker answers that are about the records of the failed batch, not about the broker:
# - MESSAGE_TOO_LARGE / RECORD_LIST_TOO_LARGE: over max.message.bytes or the segment size;
# - CORRUPT_MESSAGE: fails validation (CRC, size);
# - INVALID_RECORD (a keyless record for a compacted topic, a bad timestamp...): newer
#   than aiokafka's error table, so it arrives as UnknownError.
_RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, CorruptRecordException, UnknownError)
# The producer's transactional state is gone; only a new producer (epoch) can go on.
_FENCED_ERRORS = (ProducerFenced, InvalidProducerEpoch, InvalidProducerIdMapping, InvalidTxnState, IllegalOperation)
_DENIED_ERRORS = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    ClusterAuthorizationFailedError,
)


def classify(exc: BaseException) -> Verdict:
    """The reaction to one failed send, batch or transaction step."""
    if isinstance(exc, _FENCED_ERRORS):
        return Verdict.FENCED
    if isinstance(exc, _DENIED_ERRORS):
        return Verdict.DENIED
    if isinstance(exc, _RECORD_ERRORS):
        return Verdict.RECORD
    # Raised by the client before anything went out: the record itself is unacceptable
    # (no key and no value, wrong types, over max_request_size).
    if isinstance(exc, (AssertionError, TypeError, ValueError)):
        return Verdict.RECORD
    return Verdict.RETRY


def describe(exc: BaseException) -> str:
    """One line for logs and dead-letter headers: the error's class once, then its message."""
    name = type(exc).__name__
    text = str(exc)
    while text.startswith(name + ": "):  # aiokafka's errors put their class name in front already
        text = text[len(name) + 2 :]
    if text == name:
        text = ""
    return f"{name}: {text}" if text else name


def missing_right(exc: BaseException, *, topic_operation: str, topics: Iterable[str] = ()) -> str:
    """The ACL an authorization error says is missing, as an operator grants it ("Write on topic out").

    ``topic_operation`` is what was being done to a topic (Write when publishing, Read when
    committing); ``topics`` name them where the error itself doesn't.
    """
    subject = exc.args[0] if exc.args else None
    if isinstance(exc, TopicAuthorizationFailedError):
        named = sorted(subject) if isinstance(subject, (set, frozenset, list, tuple)) else [subject] if subject else []
        return f"{topic_operation} on topic {', '.join(named or sorted(set(topics))) or '?'}"
    if isinstance(exc, GroupAuthorizationFailedError):
        return f"Read on group {subject or '?'}"
    if isinstance(exc, TransactionalIdAuthorizationFailed):
        return f"Write on transactional id {subject or '?'}"
    if isinstance(exc, ClusterAuthorizationFailedError):
        return "IdempotentWrite on the cluster"
    return describe(exc)
