"""The model: texts in, probabilities out, a batch at a time. Knows nothing of Kafka.

Everything here is synchronous and CPU/GPU bound; callers run it in executor
threads so the event loop keeps heartbeating while a batch is scored.
Tokenisation and inference are separate steps so a pipeline can overlap them.

The per-text work is kept out of Python where it can be: one call of the Rust
tokenizer per batch (it releases the GIL), padding and masks built as arrays,
one softmax per model call, results handed back as one array per batch.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from worker.model.batching import SubBatch, plan_sub_batches
from worker.model.costs import PROBE_REPEATS, PROBE_SHAPES, CostLearner, Observation, prior_for
from worker.model.loading import (
    Head,
    ModelInfo,
    ModelLoadError,
    default_threads,
    finish_torch,
    load_pretrained,
    takes_token_types,
)
from worker.model.report import BatchReport, CostFit
from worker.model.shapes import bucket_rows, bucket_width

if TYPE_CHECKING:
    from worker.settings import Settings

log = logging.getLogger(__name__)

# Upper bound on characters fed to the tokenizer: a WordPiece token covers at
# most ~100 characters, so this keeps every real token of the first max_length
# while bounding the cost of a megabyte-sized text.
CHARS_PER_TOKEN_LIMIT = 64
# Warm-up time spent timing probe shapes for the cost model (cheapest first; at least three are timed).
PROBE_BUDGET_S = 2.0
# A call overhead beyond any budget plans the same as an infinite one, without infinities in the planner.
MAX_CALL_OVERHEAD_TOKENS = 1e12
RUNTIMES = ("torch", "onnxruntime", "auto")
# RUNTIME=auto: each runtime is timed on calls of this shape (rows, tokens; within the batch limits) for about
# this long, after one untimed call; the faster best call wins.
RUNTIME_PROBE_SHAPE = (32, 32)
RUNTIME_PROBE_BUDGET_S = 2.0
RUNTIME_PROBE_REPEATS = 5


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    score: float
    scores: dict[str, float]
    truncated: bool


@dataclass(slots=True)
class Encoded:
    """Token ids of a batch, truncated to max_length, not yet padded.

    One row per text, unless ``text_of_row`` is set (LONG_TEXT=windows): then a
    text longer than max_length has several rows (overlapping windows) and
    ``text_of_row[r]`` is the index of the text row ``r`` belongs to.
    ``truncated`` always has one flag per text.
    """

    input_ids: list[list[int]]
    truncated: list[bool]
    text_of_row: Optional[list[int]] = None
    type_ids: Optional[list[list[int]]] = None  # only for models that take token_type_ids

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    @property
    def texts(self) -> int:
        return len(self.truncated)

    def subset(self, texts: Sequence[int]) -> "Encoded":
        """The rows of some texts only, in the order given (for retrying a part of a batch)."""
        if self.text_of_row is None:
            rows = list(texts)
            text_of_row = None
        else:
            position = {text: k for k, text in enumerate(texts)}
            rows = [r for r, text in enumerate(self.text_of_row) if text in position]
            text_of_row = [position[self.text_of_row[r]] for r in rows]
        return Encoded(
            [self.input_ids[r] for r in rows],
            [self.truncated[i] for i in texts],
            text_of_row,
            [self.type_ids[r] for r in rows] if self.type_ids is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Scores:
    """One batch's result: a row of outputs per text, in input order.

    ``values`` holds probabilities (single-label: softmax, multi-label: a
    sigmoid per label) or, for a regression head, the single predicted value.
    """

    values: np.ndarray  # [texts, labels], float64
    truncated: list[bool]
    labels: tuple[str, ...]
    head: Head
    report: BatchReport

    def __len__(self) -> int:
        return len(self.truncated)

    def predictions(self) -> list[Prediction]:
        """Per-text objects, for callers that want them (tests, the CLI); the worker reads ``values``."""
        labels = self.labels
        out = []
        for row, truncated in zip(self.values.tolist(), self.truncated):
            best = max(range(len(row)), key=row.__getitem__)
            out.append(Prediction(labels[best], row[best], dict(zip(labels, row)), truncated))
        return out


Forward = Callable[..., Any]


@dataclass(slots=True)
class PreparedCalls:
    """A batch's model calls, planned and padded ahead of the device.

    The scorer makes them in the tokenizer's thread, so the thread that feeds
    the device only runs calls: planning and padding a batch no longer leaves
    the device idle between batches (a tenth of its time with a device-bound
    simulated accelerator).
    """

    plan: list[SubBatch]
    shapes: list[tuple[int, int]]  # (rows, width) each call runs at
    inputs: list[tuple[int, dict[str, torch.Tensor]]]  # (rows used, model inputs) per call


class SentimentEngine:
    """A loaded sequence classifier with batch-aware tokenisation and inference."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        info: ModelInfo,
        *,
        max_length: int,
        max_batch_tokens: int,
        max_batch_rows: int,
        window_stride: int = 128,
        forward: Optional[Forward] = None,
        costs: Optional[CostLearner] = None,
        learn_costs: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_rows = max_batch_rows
        self.long_text = info.long_text
        self.window_stride = _usable_stride(window_stride, max_length, tokenizer) if self.long_text == "windows" else window_stride
        self._forward: Forward = forward if forward is not None else model
        self._device = torch.device(info.device)  # not the weights': with ONNX Runtime torch holds none
        # One cost model per engine, so per model, device and precision; learn_costs=False keeps the prior.
        self.costs = costs if costs is not None else CostLearner(prior_for(self._device.type))
        self.learn_costs = learn_costs
        self._pinned = self._device.type == "cuda"  # page-locked inputs: the copy to the device runs async
        # Captured graphs replay fixed shapes: calls then take their rows and width from a short series.
        self.graph_shapes = info.compiled and info.compile_mode == "reduce-overhead"
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._rust = _batch_tokenizer(tokenizer, max_length, self.window_stride if self.long_text == "windows" else 0)
        # BERT-style models embed a segment id per token; single texts are segment 0 throughout,
        # but a tokenizer may say otherwise, so they are passed where both sides take them.
        self._type_ids = takes_token_types(model, tokenizer)
        self.runtime_probe: Optional[dict[str, float]] = None  # RUNTIME=auto: ms per probe call of each runtime

    @classmethod
    def from_settings(cls, settings: "Settings") -> "SentimentEngine":
        """The engine as the worker configures it (one place that maps settings to load options)."""
        return cls.load(
            settings.model,
            revision=settings.model_revision,
            device=settings.device,
            precision=settings.precision.value,
            max_length=settings.max_length,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_rows=settings.batch_max_size,
            threads=settings.torch_threads,
            attention=settings.attention.value,
            compile=settings.torch_compile,
            compile_mode=settings.compile_mode.value,
            long_text=settings.long_text.value,
            window_stride=settings.window_stride,
            runtime=settings.runtime.value,
        )

    @classmethod
    def load(
        cls,
        source: str,
        *,
        revision: Optional[str] = None,
        device: str = "auto",
        precision: str = "auto",
        max_length: int = 512,
        max_batch_tokens: int = 16384,
        max_batch_rows: int = 256,
        threads: Optional[int] = None,
        attention: str = "auto",
        compile: bool = False,
        compile_mode: str = "default",
        long_text: str = "truncate",
        window_stride: int = 128,
        runtime: str = "torch",
    ) -> "SentimentEngine":
        """Load from a local directory or the hub (see :func:`worker.model.loading.load_pretrained`).

        ``runtime``: torch, onnxruntime (see :mod:`worker.model.onnx_runtime`; where it can't
        run the model, one warning and torch), or auto (both timed, the faster kept).
        """
        if runtime not in RUNTIMES:
            raise ModelLoadError(f"RUNTIME={runtime!r}: must be one of {', '.join(RUNTIMES)}")
        loaded = load_pretrained(
            source,
            revision=revision,
            device=device,
            precision=precision,
            max_length=max_length,
            threads=threads,
            attention=attention,
            compile=compile,
            compile_mode=compile_mode,
            long_text=long_text,
            defer_torch=runtime != "torch",
        )
        limits = dict(
            max_length=max_length, max_batch_tokens=max_batch_tokens, max_batch_rows=max_batch_rows,
            window_stride=window_stride,
        )
        info = loaded.info
        onnx_forward = None
        if runtime != "torch":
            from worker.model import onnx_runtime

            try:
                onnx_forward = onnx_runtime.build(
                    loaded.model, loaded.tokenizer, info, threads=threads or default_threads()
                )
            except onnx_runtime.OnnxUnavailable as exc:
                log.warning("RUNTIME=%s: scoring with torch, ONNX Runtime can't run this model: %s", runtime, exc)
        torch_engine = None
        if onnx_forward is None or runtime == "auto":
            model, forward = finish_torch(loaded.model, info.precision, compile, info.compile_mode)
            torch_engine = cls(model, loaded.tokenizer, info, forward=forward if forward is not model else None, **limits)
            if onnx_forward is None:
                return torch_engine
        onnx_info = replace(info, runtime="onnxruntime", compiled=False)
        onnx_engine = cls(loaded.model, loaded.tokenizer, onnx_info, forward=onnx_forward, **limits)
        if torch_engine is not None:
            timings = {"torch": torch_engine._probe_ms(), "onnxruntime": onnx_engine._probe_ms()}
            faster = min(timings, key=timings.__getitem__)
            rows, width = torch_engine._probe_shape()
            log.info(
                "RUNTIME=auto picked %s: %s per %dx%d call (best of up to %d)", faster,
                ", ".join(f"{name} {ms:.1f} ms" for name, ms in timings.items()), rows, width, RUNTIME_PROBE_REPEATS,
            )
            chosen = torch_engine if faster == "torch" else onnx_engine
            chosen.runtime_probe = timings
            if chosen is torch_engine:
                return torch_engine
        torch_engine = None
        _free_weights(loaded.model)
        return onnx_engine

    def _probe_shape(self) -> tuple[int, int]:
        rows, width = RUNTIME_PROBE_SHAPE
        width = min(width, self.max_length)
        rows = max(1, min(rows, self.max_batch_rows, self.max_batch_tokens // width))
        return rows, width

    def _probe_ms(self) -> float:
        """The best time of a few calls of a short-text batch (after an untimed first call), for RUNTIME=auto."""
        ids = self.encode(["a calm and ordinary sentence to time the model with " * 8]).input_ids[0]
        rows, width = self._probe_shape()
        width = min(width, len(ids))
        row = [*ids[: width - 1], ids[-1]]
        type_rows = [[0] * width] * rows if self._type_ids else None
        plan = [SubBatch(tuple(range(rows)), width)]
        self._run_calls([row] * rows, type_rows, plan)
        times: list[float] = []
        spent = 0.0
        while len(times) < RUNTIME_PROBE_REPEATS and (not times or spent + min(times) <= RUNTIME_PROBE_BUDGET_S):
            times.append(self._run_calls([row] * rows, type_rows, plan)[1])
            spent += times[-1]
        return min(times) * 1e3

    def with_forward(self, forward: Forward, *, learn_costs: bool = True) -> "SentimentEngine":
        """The same engine with another forward function (the benchmark's no-op model, a simulated device).

        Another forward is another device: its costs are learnt afresh, from the same prior.
        """
        return SentimentEngine(
            self.model,
            self.tokenizer,
            self.info,
            max_length=self.max_length,
            max_batch_tokens=self.max_batch_tokens,
            max_batch_rows=self.max_batch_rows,
            window_stride=self.window_stride,
            forward=forward,
            learn_costs=learn_costs,
        )

    # -- tokenisation ---------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenise a batch in one call of the fast tokenizer, truncating to max_length.

        With LONG_TEXT=windows a text longer than max_length becomes several
        rows: windows of max_length tokens (special tokens included) that share
        ``window_stride`` tokens with their neighbour; ``infer`` averages them.
        """
        if not texts:
            return Encoded(input_ids=[], truncated=[])
        limit = self.max_length * CHARS_PER_TOKEN_LIMIT
        cut = [len(text) > limit for text in texts]
        clipped = [text[:limit] if over else text for text, over in zip(texts, cut)] if any(cut) else list(texts)
        if self._rust is None:
            return self._encode_slow(clipped, cut)
        encodings = self._rust.encode_batch_fast(clipped)
        if self.long_text == "windows":
            rows: list[Any] = []
            text_of_row: list[int] = []
            for index, enc in enumerate(encodings):
                rows.append(enc)
                text_of_row.append(index)
                for window in enc.overflowing:
                    rows.append(window)
                    text_of_row.append(index)
            return Encoded(
                input_ids=[row.ids for row in rows],
                truncated=cut,
                text_of_row=text_of_row,
                type_ids=[row.type_ids for row in rows] if self._type_ids else None,
            )
        return Encoded(
            input_ids=[enc.ids for enc in encodings],
            truncated=[over or bool(enc.overflowing) for over, enc in zip(cut, encodings)],
            type_ids=[enc.type_ids for enc in encodings] if self._type_ids else None,
        )

    def _encode_slow(self, texts: Sequence[str], cut: Sequence[bool]) -> Encoded:
        full = self.tokenizer(list(texts), truncation=False, return_attention_mask=False)["input_ids"]
        short = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, return_attention_mask=False)
        truncated = [over or len(f) > len(s) for over, f, s in zip(cut, full, short["input_ids"])]
        type_ids = short.get("token_type_ids") if self._type_ids else None
        return Encoded(input_ids=short["input_ids"], truncated=truncated, type_ids=type_ids)

    def scored_text(self, text: str) -> str:
        """The beginning of ``text`` that its first window covers: what a truncated text was scored on."""
        limit = self.max_length * CHARS_PER_TOKEN_LIMIT
        clipped = text[:limit]
        if self._rust is None:
            return clipped
        encoding = self._rust.encode(clipped)
        ends = [end for (start, end), special in zip(encoding.offsets, encoding.special_tokens_mask) if not special]
        return clipped[: max(ends)] if ends else ""

    # -- inference ------------------------------------------------------------

    @property
    def cost_key(self) -> str:
        """What the cost model is for: it holds for one model on one device at one precision."""
        info = self.info
        runtime = "" if info.runtime == "torch" else f"/{info.runtime}"
        return f"{info.name}@{info.revision or 'local'}/{info.device}/{info.precision}{runtime}"

    def plan(self, encoded: Encoded) -> list[SubBatch]:
        """The model calls of a batch, cut under the cost model learnt so far (on bucketed widths with graphs)."""
        fit = self.costs.current
        lengths = encoded.lengths
        if self.graph_shapes:
            lengths = [bucket_width(length, self.max_length) for length in lengths]
        return plan_sub_batches(
            lengths,
            max_tokens=self.max_batch_tokens,
            max_rows=self.max_batch_rows,
            call_overhead=min(fit.call_overhead_tokens, MAX_CALL_OVERHEAD_TOKENS),
            attention_scale=fit.attention_scale,
        )

    def pad(
        self, rows: Sequence[Sequence[int]], width: int, type_rows: Optional[Sequence[Sequence[int]]] = None
    ) -> dict[str, torch.Tensor]:
        """The model inputs of one call (ids, attention mask, token types), built as arrays (no per-token Python)."""
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        mask = np.arange(width, dtype=np.int64)[None, :] < lengths[:, None]
        total = int(lengths.sum())
        ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}
        if type_rows is not None:
            types = np.zeros((len(rows), width), dtype=np.int64)
            types[mask] = np.fromiter(itertools.chain.from_iterable(type_rows), dtype=np.int64, count=total)
            inputs["token_type_ids"] = torch.from_numpy(types)
        return inputs

    def prepare(self, encoded: Encoded) -> PreparedCalls:
        """Plan and pad a batch's calls (host work, any thread) for :meth:`infer`."""
        plan = self.plan(encoded)
        shapes = self.call_shapes(plan)
        return PreparedCalls(plan, shapes, self._pad_calls(encoded.input_ids, encoded.type_ids, plan, shapes))

    def infer_rows(self, encoded: Encoded, prepared: Optional[PreparedCalls] = None) -> tuple[np.ndarray, BatchReport]:
        """Outputs of every row (window) of an encoded batch, in row order, and what it cost."""
        lengths = encoded.lengths
        calls = prepared if prepared is not None else self.prepare(encoded)
        plan, shapes = calls.plan, calls.shapes
        out, forward_s = self._forward_calls(calls)
        costs: Optional[CostFit] = None
        if plan and self.learn_costs:
            costs = self.costs.observe(Observation.of_calls(shapes, forward_s))
        report = BatchReport(
            rows=len(lengths),
            real_tokens=sum(lengths),
            padded_tokens=sum(rows * width for rows, width in shapes),
            model_calls=len(plan),
            forward_s=forward_s,
            costs=costs,
        )
        return out, report

    def call_shapes(self, plan: Sequence[SubBatch]) -> list[tuple[int, int]]:
        """The (rows, width) each call of a plan runs at: with graphs, the rows are bucketed too."""
        if not self.graph_shapes:
            return [(len(sub.indices), sub.width) for sub in plan]
        return [
            (bucket_rows(len(sub.indices), sub.width, self.max_batch_rows, self.max_batch_tokens), sub.width)
            for sub in plan
        ]

    def _pad_calls(
        self,
        input_ids: Sequence[Sequence[int]],
        type_ids: Optional[Sequence[Sequence[int]]],
        plan: Sequence[SubBatch],
        shapes: Sequence[tuple[int, int]],
    ) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """The inputs of each planned call, padded on the host (page-locked on a GPU, so each copy runs async)."""
        calls = []
        for sub, (rows, _) in zip(plan, shapes):
            filler = [sub.indices[0]] * (rows - len(sub.indices))  # graph rows beyond the call's own: dropped
            chosen = [*sub.indices, *filler]
            type_rows = [type_ids[i] for i in chosen] if type_ids is not None else None
            inputs = self.pad([input_ids[i] for i in chosen], sub.width, type_rows)
            calls.append((len(sub.indices), {name: t.pin_memory() for name, t in inputs.items()} if self._pinned else inputs))
        return calls

    def _run_calls(
        self, input_ids: Sequence[Sequence[int]], type_ids: Optional[Sequence[Sequence[int]]], plan: Sequence[SubBatch]
    ) -> tuple[np.ndarray, float]:
        """Pad and run planned calls (the calibration's probes)."""
        shapes = self.call_shapes(plan)
        return self._forward_calls(PreparedCalls(list(plan), shapes, self._pad_calls(input_ids, type_ids, plan, shapes)))

    def _forward_calls(self, prepared: PreparedCalls) -> tuple[np.ndarray, float]:
        """Run prepared calls; outputs in row order, and the calls' time.

        Logits stay on the device until the last call and come back in one
        copy: the device is synchronised once per batch, not once per call,
        and the time measured is the device's.
        """
        plan, calls = prepared.plan, prepared.inputs
        out = np.empty((sum(len(sub.indices) for sub in plan), len(self.info.labels)), dtype=np.float64)
        if not plan:
            return out, 0.0
        device = self._device
        graphs = self.graph_shapes
        on_device = []
        with torch.inference_mode():
            started = time.perf_counter()
            for used, inputs in calls:
                if graphs:  # a new replay may reuse the last one's output memory: keep a copy of what we need
                    torch.compiler.cudagraph_mark_step_begin()
                logits = self._forward(**{name: t.to(device, non_blocking=True) for name, t in inputs.items()}).logits
                on_device.append(logits[:used].clone() if graphs else logits)
            logits = torch.cat(on_device).float().cpu().numpy()  # the batch's one synchronisation
            forward_s = time.perf_counter() - started
        order = np.fromiter(itertools.chain.from_iterable(sub.indices for sub in plan), dtype=np.int64, count=len(out))
        out[order] = _activate(logits.astype(np.float64), self.info.head)
        return out, forward_s

    def infer(self, encoded: Encoded, prepared: Optional[PreparedCalls] = None) -> Scores:
        """Score an encoded batch in length-sorted model calls; one row per text, in input order.

        ``prepared``: its calls from :meth:`prepare`, when another thread made them.
        """
        rows, report = self.infer_rows(encoded, prepared)
        values = rows if encoded.text_of_row is None else _combine_windows(encoded, rows)
        return Scores(values, list(encoded.truncated), self.info.labels, self.info.head, report)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return self.infer(self.encode(texts)).predictions()

    def warmup(self) -> None:
        """Calls at start so the first real batch doesn't pay for lazy initialisation, then the cost probes.

        A compiled model is compiled here (a few shapes); oneDNN and CUDA
        kernels for the common shapes are created here too. These first
        calls are slow for reasons that don't recur, so the cost model does
        not learn from them.
        """
        learning, self.learn_costs = self.learn_costs, False
        try:
            self.predict(["warm up the model", "a second, somewhat longer warm-up sentence for the batch"])
            self.predict(["warm up " * 40] * 3 + ["short"])
            if self.info.compiled:
                self.predict(["a third shape " * 12] * 5)
        finally:
            self.learn_costs = learning
        if learning:
            self.calibrate()

    def calibrate(self, budget_s: float = PROBE_BUDGET_S) -> CostFit:
        """Time a few call shapes (each a few times, the fastest counts) and fit the cost model to them.

        Shapes go from cheapest to dearest and stop before one that the fit
        of those timed so far says would overrun ``budget_s``: a slow device
        gets a few, a fast one all. Only shapes within MAX_LENGTH and the
        token and row budgets are tried.
        """
        ids = self.encode(["a calm and ordinary sentence to time the model with " * 64]).input_ids[0]
        spent = 0.0
        probed = 0
        for rows, width in PROBE_SHAPES:
            if width > len(ids) or rows > self.max_batch_rows or rows * width > self.max_batch_tokens:
                continue
            if probed >= 3 and spent + PROBE_REPEATS * self.costs.refit().seconds(rows, width) > budget_s:
                break
            row = [*ids[: width - 1], ids[-1]]
            type_rows = [[0] * width] * rows if self._type_ids else None
            plan = [SubBatch(tuple(range(rows)), width)]
            times = [self._run_calls([row] * rows, type_rows, plan)[1] for _ in range(PROBE_REPEATS)]
            self.costs.probe(Observation.of_calls([(rows, width)], min(times)))
            spent += sum(times)
            probed += 1
        return self.costs.refit()


def _free_weights(model: Any) -> None:
    """Hand the torch weights back once ONNX Runtime holds its own copy (the module stays, on the meta device)."""
    model.to("meta")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _activate(logits: np.ndarray, head: Head) -> np.ndarray:
    """Logits to the head's outputs, on the host in float64.

    A few hundred rows of a few labels: numpy does it in microseconds, where
    torch's CPU kernels may hand so small a tensor to their thread pool and
    wait milliseconds for its threads on a busy machine.
    """
    if head is Head.single_label:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if head is Head.multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def _batch_tokenizer(tokenizer: Any, max_length: int, stride: int) -> Any:
    """A private copy of the fast tokenizer's Rust backend, truncating to ``max_length``.

    Overflowing rows (``Encoding.overflowing``) tell that a text was truncated,
    and with a stride they are the overlapping windows. None for a slow
    (pure Python) tokenizer.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    from tokenizers import Tokenizer

    rust = Tokenizer.from_str(backend.to_str())
    rust.no_padding()
    rust.enable_truncation(max_length, stride=stride, strategy="longest_first", direction="right")
    return rust


def _combine_windows(encoded: Encoded, rows: np.ndarray) -> np.ndarray:
    """Per text: the mean of its windows' outputs, weighted by each window's token count.

    A text with one window gets exactly that window's outputs, so short
    texts score the same as with LONG_TEXT=truncate.
    """
    assert encoded.text_of_row is not None
    text_of_row = np.asarray(encoded.text_of_row, dtype=np.int64)
    weights = np.asarray(encoded.lengths, dtype=np.float64)
    sums = np.zeros((encoded.texts, rows.shape[1]), dtype=np.float64)
    np.add.at(sums, text_of_row, rows * weights[:, None])
    totals = np.bincount(text_of_row, weights=weights, minlength=encoded.texts)
    return sums / totals[:, None]


def _usable_stride(stride: int, max_length: int, tokenizer: Any) -> int:
    """The fast tokenizer needs the overlap to be shorter than a window's content; cap it at half."""
    content = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    cap = max(0, content // 2)
    if stride > cap:
        log.warning("WINDOW_STRIDE=%d is too large for MAX_LENGTH=%d; using %d", stride, max_length, cap)
        return cap
    return stride


__all__ = [
    "BatchReport",
    "Encoded",
    "ModelLoadError",
    "Prediction",
    "PreparedCalls",
    "Scores",
    "SentimentEngine",
]
