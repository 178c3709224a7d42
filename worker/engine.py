"""The model: texts in, label probabilities out. Knows nothing of Kafka.

Everything here is synchronous and CPU/GPU bound; callers run it in an
executor thread so the event loop keeps heartbeating while a batch is scored.
Tokenisation and inference are separate steps so a pipeline can overlap them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from worker.batching import SubBatch, plan_sub_batches

if TYPE_CHECKING:
    from worker.settings import Settings

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"
# Upper bound on characters fed to the tokenizer: a WordPiece token covers at
# most ~100 characters, so this keeps every real token of the first max_length
# while bounding the cost of a megabyte-sized text.
CHARS_PER_TOKEN_LIMIT = 64


class ModelLoadError(RuntimeError):
    """The model can't be loaded; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    revision: Optional[str]
    device: str
    precision: str
    labels: tuple[str, ...]
    random_weights: bool

    def as_output(self) -> dict[str, Optional[str]]:
        """The ``model`` block of every output event."""
        return {"name": self.name, "revision": self.revision}


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    score: float
    scores: dict[str, float]
    truncated: bool


@dataclass(slots=True)
class Encoded:
    """Token ids of a batch, truncated to max_length, not yet padded."""

    input_ids: list[list[int]]
    truncated: list[bool]

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one inference call did, for logs and metrics."""

    rows: int
    real_tokens: int
    padded_tokens: int
    model_calls: int

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


def resolve_device(requested: str) -> torch.device:
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"DEVICE={requested} but CUDA is not available on this machine")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError(f"DEVICE={requested} but MPS is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if requested == "fp16" and device.type == "cpu":
        raise ModelLoadError("PRECISION=fp16 is not supported on CPU; use fp32 or bf16")
    return requested


def _fingerprint(directory: Path) -> Optional[str]:
    """A revision for local models: a hash of the weights, so outputs say which ones scored them."""
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        return None
    digest = hashlib.sha256()
    for path in weights:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


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
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_rows = max_batch_rows
        self._device = next(model.parameters()).device
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
        self.last_report = BatchReport(0, 0, 0, 0)

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
    ) -> "SentimentEngine":
        """Load from a local directory or the hub (or its cache); safetensors only, no remote code."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        torch_device = resolve_device(device)
        precision = resolve_precision(precision, torch_device)
        if torch_device.type == "cpu":
            torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        local = Path(source).expanduser()
        is_local = local.is_dir()
        if not is_local and source.startswith((".", "/", "~")):
            raise ModelLoadError(f"MODEL={source!r}: no such directory")
        kwargs: dict[str, Any] = {"trust_remote_code": False}
        if not is_local and revision:
            kwargs["revision"] = revision
        where = str(local) if is_local else source
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            model = AutoModelForSequenceClassification.from_pretrained(
                where, use_safetensors=True, dtype=_DTYPES[precision], **kwargs
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(_explain_load_failure(source, is_local, exc)) from exc
        model.eval().to(torch_device)
        labels = tuple(model.config.id2label[i] for i in range(model.config.num_labels))
        random_weights = is_local and (local / RANDOM_WEIGHTS_MARKER).exists()
        info = ModelInfo(
            name=source,
            revision=_fingerprint(local) if is_local else getattr(model.config, "_commit_hash", None) or revision,
            device=str(torch_device),
            precision=precision,
            labels=labels,
            random_weights=random_weights,
        )
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and max_length > limit:
            raise ModelLoadError(f"MAX_LENGTH={max_length} exceeds the model's {limit} positions")
        return cls(
            model,
            tokenizer,
            info,
            max_length=max_length,
            max_batch_tokens=max_batch_tokens,
            max_batch_rows=max_batch_rows,
        )

    # -- tokenisation ---------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenise a batch in one call of the fast tokenizer, truncating to max_length."""
        limit = self.max_length * CHARS_PER_TOKEN_LIMIT
        cut = [len(text) > limit for text in texts]
        clipped = [text[:limit] if over else text for text, over in zip(texts, cut)]
        if not getattr(self.tokenizer, "is_fast", False):
            return self._encode_slow(clipped, cut)
        enc = self.tokenizer(
            clipped,
            truncation=True,
            max_length=self.max_length,
            return_overflowing_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        # Overflow rows follow their text; the first row of each text is the truncated text.
        input_ids: list[list[int]] = [[] for _ in texts]
        rows_seen = [0] * len(texts)
        for row, sample in zip(enc["input_ids"], enc["overflow_to_sample_mapping"]):
            if rows_seen[sample] == 0:
                input_ids[sample] = row
            rows_seen[sample] += 1
        truncated = [over or seen > 1 for over, seen in zip(cut, rows_seen)]
        return Encoded(input_ids=input_ids, truncated=truncated)

    def _encode_slow(self, texts: Sequence[str], cut: Sequence[bool]) -> Encoded:
        full = self.tokenizer(list(texts), truncation=False, return_attention_mask=False)["input_ids"]
        short = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, return_attention_mask=False
        )["input_ids"]
        truncated = [over or len(f) > len(s) for over, f, s in zip(cut, full, short)]
        return Encoded(input_ids=short, truncated=truncated)

    # -- inference ------------------------------------------------------------

    def plan(self, encoded: Encoded) -> list[SubBatch]:
        return plan_sub_batches(encoded.lengths, max_tokens=self.max_batch_tokens, max_rows=self.max_batch_rows)

    @torch.inference_mode()
    def infer(self, encoded: Encoded) -> list[Prediction]:
        """Score an encoded batch in length-sorted model calls; results in input order."""
        lengths = encoded.lengths
        plan = self.plan(encoded)
        probs: list[Optional[list[float]]] = [None] * len(lengths)
        for sub in plan:
            ids = torch.full((len(sub.indices), sub.width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((len(sub.indices), sub.width), dtype=torch.long)
            for row, index in enumerate(sub.indices):
                seq = encoded.input_ids[index]
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            logits = self.model(
                input_ids=ids.to(self._device, non_blocking=True),
                attention_mask=mask.to(self._device, non_blocking=True),
            ).logits.float()
            out = torch.sigmoid(logits) if self._multi_label else torch.softmax(logits, dim=-1)
            for index, row_probs in zip(sub.indices, out.cpu().tolist()):
                probs[index] = row_probs
        self.last_report = BatchReport(
            rows=len(lengths),
            real_tokens=sum(lengths),
            padded_tokens=sum(sub.padded_tokens for sub in plan),
            model_calls=len(plan),
        )
        labels = self.info.labels
        predictions = []
        for row_probs, truncated in zip(probs, encoded.truncated):
            assert row_probs is not None
            best = max(range(len(row_probs)), key=row_probs.__getitem__)
            predictions.append(
                Prediction(
                    label=labels[best],
                    score=row_probs[best],
                    scores=dict(zip(labels, row_probs)),
                    truncated=truncated,
                )
            )
        return predictions

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return self.infer(self.encode(texts))

    def warmup(self) -> None:
        """One call at start so the first real batch doesn't pay for lazy initialisation."""
        self.predict(["warm up the model", "a second, somewhat longer warm-up sentence for the batch"])


def _explain_load_failure(source: str, is_local: bool, exc: Exception) -> str:
    if is_local:
        return (
            f"Could not load the model from directory {source!r}: {exc}. It must hold config.json, "
            "*.safetensors weights and tokenizer files (as written by save_pretrained)."
        )
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"Could not load model {source!r} from the Hugging Face hub or its cache ({cache}): {exc}. "
        "Provide the weights in one of these ways: (1) on a machine with hub access run "
        f"`hf download {source}` and mount that cache as HF_HOME; (2) set MODEL to a local directory "
        "written by save_pretrained (safetensors weights); (3) for tests only, "
        "`sentiment-worker model init-random DIR` writes a random model (its scores mean nothing)."
    )


__all__ = [
    "BatchReport",
    "Encoded",
    "ModelInfo",
    "ModelLoadError",
    "Prediction",
    "SentimentEngine",
    "resolve_device",
]
