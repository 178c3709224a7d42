"""Scoring a batch of texts in worker threads, narrowing any failure down to the texts that cause it.

Tokenisation and inference each run in a thread of their own, so the event
loop keeps heartbeating and publishing while a batch is scored, and the next
batch is tokenised, planned and padded while this one runs on the model: the
inference thread only runs model calls. The happy path is one tokenizer call,
one :meth:`SentimentEngine.prepare` and one :meth:`SentimentEngine.infer` per batch.

When a call raises, the batch is split in halves and retried, down to single
texts: a text that still fails alone is reported as failed (and dead-lettered
by the pipeline) if the model still scores a known-good probe text;
otherwise the fault is systemic (a broken device or model) and
:class:`SystemicFailure` stops the worker without acknowledging anything of
the batch. At most about twice as many calls as texts; never a loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, TypeVar, Union

import numpy as np

from worker.model.engine import Encoded, PreparedCalls, Scores, SentimentEngine
from worker.model.report import EMPTY_REPORT, BatchReport

PROBE_TEXT = "a known-good probe text"
T = TypeVar("T")


class SystemicFailure(RuntimeError):
    """The model fails even on a known-good text: stop rather than dead-letter everything."""


@dataclass(slots=True)
class Scored:
    """A batch's scores; the texts in ``failures`` have no valid row in ``scores``."""

    scores: Scores
    failures: dict[int, tuple[str, BaseException]] = field(default_factory=dict)  # text -> (reason, error)
    tokens: list[int] = field(default_factory=list)  # tokens of each tokenised text (windows: of its first)
    encode_s: float = 0.0
    infer_s: float = 0.0


def split_retry(
    run: Callable[[list[int]], list[T]], indices: list[int], probe: Callable[[], object]
) -> dict[int, Union[T, BaseException]]:
    """Run ``run`` on all indices; on failure, on halves, down to single items.

    A single item that still fails is returned as its exception, unless
    ``probe`` fails too, in which case :class:`SystemicFailure` is raised.
    """
    try:
        return dict(zip(indices, run(indices)))
    except Exception as exc:  # noqa: BLE001 - any error is a reason to narrow down
        if len(indices) == 1:
            try:
                probe()
            except Exception as probe_exc:  # noqa: BLE001
                raise SystemicFailure(f"model fails on a known-good text too: {probe_exc!r}") from exc
            return {indices[0]: exc}
        mid = len(indices) // 2
        out = split_retry(run, indices[:mid], probe)
        out.update(split_retry(run, indices[mid:], probe))
        return out


class BatchScorer:
    """Tokenise (one thread) and infer (another thread) batches of texts with a loaded engine."""

    def __init__(self, engine: SentimentEngine) -> None:
        self.engine = engine
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")

    async def score(self, texts: Sequence[str]) -> Scored:
        loop = asyncio.get_running_loop()
        if not texts:
            return Scored(self._empty())
        # Timed inside the threads: a batch queued behind another one is not "slow".
        (encoded, failures), encode_s = await loop.run_in_executor(self._tokenize_pool, _timed, self._encode, texts)
        prepared = await loop.run_in_executor(self._tokenize_pool, self._prepare, encoded)
        scores, infer_s = await loop.run_in_executor(
            self._infer_pool, _timed, self._infer, encoded, failures, len(texts), prepared
        )
        tokens = encoded.lengths if encoded.text_of_row is None else [len(encoded.input_ids[r]) for r in _first_rows(encoded)]
        return Scored(scores, failures, encode_s=encode_s, infer_s=infer_s, tokens=tokens)

    def close(self) -> None:
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)

    def _empty(self) -> Scores:
        info = self.engine.info
        return Scores(np.empty((0, len(info.labels))), [], info.labels, info.head, EMPTY_REPORT)

    # -- in the tokenizer thread ------------------------------------------------------

    def _encode(self, texts: Sequence[str]) -> tuple[Encoded, dict[int, tuple[str, BaseException]]]:
        """Token ids of the texts that tokenise (in order), and why the others don't."""
        engine = self.engine
        try:
            return engine.encode(texts), {}
        except Exception:  # noqa: BLE001 - narrowed down below
            pass

        def run(indices: list[int]) -> list[Encoded]:
            encoded = engine.encode([texts[i] for i in indices])
            return [encoded.subset([k]) for k in range(len(indices))]

        found = split_retry(run, list(range(len(texts))), lambda: engine.encode([PROBE_TEXT]))
        failures = {i: ("tokenize_failed", r) for i, r in found.items() if isinstance(r, BaseException)}
        pieces = [r for i, r in sorted(found.items()) if not isinstance(r, BaseException)]
        return _concat(pieces), failures

    def _prepare(self, encoded: Encoded) -> Optional[PreparedCalls]:
        """The batch's calls, planned and padded; None if that fails (inference then narrows it down)."""
        try:
            return self.engine.prepare(encoded)
        except Exception:  # noqa: BLE001 - the inference thread retries and narrows it down
            return None

    # -- in the inference thread --------------------------------------------------------

    def _infer(
        self,
        encoded: Encoded,
        failures: dict[int, tuple[str, BaseException]],
        n_texts: int,
        prepared: Optional[PreparedCalls] = None,
    ) -> Scores:
        """Scores of all ``n_texts``; rows of texts that failed (before or here) are NaN."""
        engine = self.engine
        ok = [i for i in range(n_texts) if i not in failures]  # text index of each encoded text
        try:
            scores = engine.infer(encoded, prepared)
            values, report = scores.values, scores.report
        except Exception:  # noqa: BLE001 - narrowed down below
            values, report = self._infer_narrowing(encoded, failures, ok)
        if len(ok) == n_texts:
            return Scores(values, list(encoded.truncated), engine.info.labels, engine.info.head, report)
        full = np.full((n_texts, len(engine.info.labels)), np.nan)
        full[ok] = values
        truncated = [False] * n_texts
        for position, text in enumerate(ok):
            truncated[text] = encoded.truncated[position]
        return Scores(full, truncated, engine.info.labels, engine.info.head, report)

    def _infer_narrowing(
        self, encoded: Encoded, failures: dict[int, tuple[str, BaseException]], ok: list[int]
    ) -> tuple[np.ndarray, BatchReport]:
        engine = self.engine
        reports: list[BatchReport] = []

        def run(positions: list[int]) -> list[np.ndarray]:
            scores = engine.infer(encoded.subset(positions))
            reports.append(scores.report)
            return list(scores.values)

        found = split_retry(run, list(range(len(ok))), lambda: engine.infer(engine.encode([PROBE_TEXT])))
        values = np.full((len(ok), len(engine.info.labels)), np.nan)
        for position, row in found.items():
            if isinstance(row, BaseException):
                failures[ok[position]] = ("inference_failed", row)
            else:
                values[position] = row
        return values, sum(reports, EMPTY_REPORT)


def _timed(fn: Callable[..., T], *args: object) -> tuple[T, float]:
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started


def _first_rows(encoded: Encoded) -> list[int]:
    """The first row (window) of each text."""
    first: dict[int, int] = {}
    for row, text in enumerate(encoded.text_of_row or []):
        first.setdefault(text, row)
    return [first[t] for t in sorted(first)]


def _concat(pieces: Sequence[Encoded]) -> Encoded:
    """One Encoded of several, texts in order (windows keep pointing at their text)."""
    type_ids = [row for p in pieces for row in p.type_ids or []] if pieces and pieces[0].type_ids is not None else None
    if not pieces or pieces[0].text_of_row is None:
        return Encoded([row for p in pieces for row in p.input_ids], [t for p in pieces for t in p.truncated], None, type_ids)
    input_ids: list[list[int]] = []
    truncated: list[bool] = []
    text_of_row: list[int] = []
    for piece in pieces:
        base = len(truncated)
        input_ids.extend(piece.input_ids)
        text_of_row.extend(base + t for t in piece.text_of_row or [])
        truncated.extend(piece.truncated)
    return Encoded(input_ids, truncated, text_of_row, type_ids)
