"""The model: texts in, label probabilities out. Knows nothing of Kafka.

Everything here is synchronous and CPU/GPU bound; callers run it in an
executor thread so the event loop keeps heartbeating while a batch is scored.
Tokenisation and inference are separate steps so a pipeline can overlap them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from worker.batching import (
    ATTENTION_SCALE,
    CPU_CALL_OVERHEAD_TOKENS,
    GPU_CALL_OVERHEAD_TOKENS,
    SubBatch,
    plan_sub_batches,
)

if TYPE_CHECKING:
    from worker.settings import Settings

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
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
    attention: str = "eager"  # the attention kernel transformers uses: sdpa or eager
    compiled: bool = False  # torch.compile'd
    long_text: str = "truncate"  # truncate or windows

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
    """Token ids of a batch, truncated to max_length, not yet padded.

    One row per text, unless ``text_of_row`` is set (LONG_TEXT=windows): then a
    text longer than max_length has several rows (overlapping windows) and
    ``text_of_row[r]`` is the index of the text row ``r`` belongs to.
    ``truncated`` always has one flag per text.
    """

    input_ids: list[list[int]]
    truncated: list[bool]
    text_of_row: Optional[list[int]] = None

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    @property
    def texts(self) -> int:
        return len(self.truncated)


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


# Weights are loaded in this dtype; int8 loads fp32 and then quantises the Linear layers.
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
ATTENTIONS = ("auto", "sdpa", "eager")


def resolve_precision(requested: str, device: torch.device) -> str:
    """auto: fp16 on CUDA, else fp32. Reduced precision on a CPU is opt-in (bf16, int8)."""
    if requested not in PRECISIONS:
        raise ModelLoadError(f"PRECISION={requested!r}: must be one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if requested == "fp16" and device.type == "cpu":
        raise ModelLoadError("PRECISION=fp16 is not supported on CPU; use fp32, bf16 or int8")
    if requested == "int8" and device.type != "cpu":
        raise ModelLoadError("PRECISION=int8 (dynamic quantisation) runs on CPU only; use fp16 or bf16 on a GPU")
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ModelLoadError("PRECISION=bf16 but this GPU does not support bfloat16; use fp16")
    return requested


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations quantised per call).

    ``torch.ao.quantization.quantize_dynamic`` is deprecated (torch points to
    torchao) but present and working in torch 2.15, and it is what the measured
    figures use; without it, torchao's ``quantize_`` with int8 dynamic
    activations and int8 weights is the supported replacement.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        quantize_dynamic = None
    if quantize_dynamic is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:  # pragma: no cover - depends on the torch build
        raise ModelLoadError(
            "PRECISION=int8 needs torch.ao.quantization.quantize_dynamic (removed from this torch) or torchao"
        ) from exc
    quantize_(model, Int8DynamicActivationInt8WeightConfig())  # pragma: no cover
    return model  # pragma: no cover


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
        long_text: str = "truncate",
        window_stride: int = 128,
        forward: Optional[Any] = None,
        call_overhead_tokens: Optional[float] = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_rows = max_batch_rows
        if long_text not in ("truncate", "windows"):
            raise ModelLoadError(f"LONG_TEXT={long_text!r}: must be truncate or windows")
        self.long_text = long_text
        self.window_stride = window_stride
        # The compiled module when torch_compile is on; the plain model otherwise.
        self._forward = forward if forward is not None else model
        self._device = next(model.parameters()).device
        self.call_overhead_tokens = (
            call_overhead_tokens
            if call_overhead_tokens is not None
            else (CPU_CALL_OVERHEAD_TOKENS if self._device.type == "cpu" else GPU_CALL_OVERHEAD_TOKENS)
        )
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
            attention=settings.attention.value,
            compile=settings.torch_compile,
            long_text=settings.long_text.value,
            window_stride=settings.window_stride,
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
        long_text: str = "truncate",
        window_stride: int = 128,
        call_overhead_tokens: Optional[float] = None,
    ) -> "SentimentEngine":
        """Load from a local directory or the hub (or its cache); safetensors only, no remote code.

        ``precision``: auto (fp16 on CUDA, else fp32), fp32, fp16 (CUDA), bf16,
        int8 (CPU: dynamic quantisation of the Linear layers). ``attention``:
        auto (what transformers picks: SDPA where it supports the model, else
        eager), sdpa or eager. ``compile``: wrap the model in torch.compile
        (dynamic shapes; the first calls compile, so warm up). ``threads``: CPU
        threads for inference, default the cores this process may use.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        if attention not in ATTENTIONS:
            raise ModelLoadError(f"ATTENTION={attention!r}: must be one of {', '.join(ATTENTIONS)}")
        torch_device = resolve_device(device)
        precision = resolve_precision(precision, torch_device)
        if torch_device.type == "cpu":
            torch.set_num_threads(threads or default_threads())
        local = Path(source).expanduser()
        is_local = local.is_dir()
        if not is_local and source.startswith((".", "/", "~")):
            raise ModelLoadError(
                f"MODEL={source!r}: no such directory. Point MODEL at a directory written by save_pretrained "
                "(config.json, *.safetensors, tokenizer files), or at a hub id; for tests only, "
                "`sentiment-worker model init-random DIR` writes a random model."
            )
        if is_local and not any((local / name).exists() for name in _TOKENIZER_FILES):
            missing = FileNotFoundError(f"no tokenizer file ({', '.join(_TOKENIZER_FILES)})")
            raise ModelLoadError(_explain_load_failure(source, True, missing))
        kwargs: dict[str, Any] = {"trust_remote_code": False}
        if not is_local and revision:
            kwargs["revision"] = revision
        model_kwargs: dict[str, Any] = {}
        if attention != "auto":
            model_kwargs["attn_implementation"] = attention
        where = str(local) if is_local else source
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                where,
                use_safetensors=True,
                dtype=_DTYPES[precision],
                output_loading_info=True,
                **kwargs,
                **model_kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - corrupt files raise all sorts; all mean "can't load"
            if attention != "auto" and "attn" in str(exc).lower():
                raise ModelLoadError(f"ATTENTION={attention} is not supported for this model: {exc}") from exc
            raise ModelLoadError(_explain_load_failure(source, is_local, exc)) from exc
        untrained = [*loading.get("missing_keys", ()), *(k[0] if isinstance(k, tuple) else k for k in loading.get("mismatched_keys", ()))]
        if untrained:
            raise ModelLoadError(
                f"MODEL={source!r} is not a trained sequence classifier: {len(untrained)} weights would be "
                f"randomly initialised ({', '.join(map(str, untrained[:4]))}...). Use a fine-tuned checkpoint."
            )
        model.eval().to(torch_device)
        attn_used = str(getattr(model.config, "_attn_implementation", None) or "eager")
        if precision == "int8":
            model = quantize_int8(model)
        forward = None
        if compile:
            try:
                forward = torch.compile(model, dynamic=True)
            except Exception as exc:  # noqa: BLE001 - backend missing (no compiler, unsupported platform)
                raise ModelLoadError(f"TORCH_COMPILE=true but torch.compile failed: {exc}") from exc
        labels = tuple(model.config.id2label[i] for i in range(model.config.num_labels))
        random_weights = is_local and (local / RANDOM_WEIGHTS_MARKER).exists()
        info = ModelInfo(
            name=source,
            revision=_fingerprint(local) if is_local else getattr(model.config, "_commit_hash", None) or revision,
            device=str(torch_device),
            precision=precision,
            labels=labels,
            random_weights=random_weights,
            attention=attn_used,
            compiled=bool(compile),
            long_text=long_text,
        )
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and max_length > limit:
            raise ModelLoadError(f"MAX_LENGTH={max_length} exceeds the model's {limit} positions")
        if long_text == "windows":
            window_stride = _usable_stride(window_stride, max_length, tokenizer)
        return cls(
            model,
            tokenizer,
            info,
            max_length=max_length,
            max_batch_tokens=max_batch_tokens,
            max_batch_rows=max_batch_rows,
            long_text=long_text,
            window_stride=window_stride,
            forward=forward,
            call_overhead_tokens=call_overhead_tokens,
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
        clipped = [text[:limit] if over else text for text, over in zip(texts, cut)]
        if not getattr(self.tokenizer, "is_fast", False):
            return self._encode_slow(clipped, cut)
        windows = self.long_text == "windows"
        enc = self.tokenizer(
            clipped,
            truncation=True,
            max_length=self.max_length,
            return_overflowing_tokens=True,
            stride=self.window_stride if windows else 0,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        mapping = enc["overflow_to_sample_mapping"]
        if windows:
            return Encoded(input_ids=list(enc["input_ids"]), truncated=cut, text_of_row=list(mapping))
        # Overflow rows follow their text; the first row of each text is the truncated text.
        input_ids: list[list[int]] = [[] for _ in texts]
        rows_seen = [0] * len(texts)
        for row, sample in zip(enc["input_ids"], mapping):
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
        return plan_sub_batches(
            encoded.lengths,
            max_tokens=self.max_batch_tokens,
            max_rows=self.max_batch_rows,
            call_overhead=self.call_overhead_tokens,
            attention_scale=ATTENTION_SCALE,
        )

    def _pad(self, rows: Sequence[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self._pad_id
        ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in rows], dtype=torch.long)
        return ids, mask

    def infer_rows(self, encoded: Encoded) -> list[list[float]]:
        """Probabilities of every row (window) of an encoded batch, in row order."""
        lengths = encoded.lengths
        plan = self.plan(encoded)
        probs: list[Optional[list[float]]] = [None] * len(lengths)
        with torch.inference_mode():
            for sub in plan:
                ids, mask = self._pad([encoded.input_ids[i] for i in sub.indices], sub.width)
                logits = self._forward(
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
        return probs  # type: ignore[return-value]

    def infer(self, encoded: Encoded) -> list[Prediction]:
        """Score an encoded batch in length-sorted model calls; one prediction per text, in input order."""
        row_probs = self.infer_rows(encoded)
        per_text = row_probs if encoded.text_of_row is None else _combine_windows(encoded, row_probs)
        labels = self.info.labels
        predictions = []
        for probs, truncated in zip(per_text, encoded.truncated):
            best = max(range(len(probs)), key=probs.__getitem__)
            predictions.append(
                Prediction(
                    label=labels[best],
                    score=probs[best],
                    scores=dict(zip(labels, probs)),
                    truncated=truncated,
                )
            )
        return predictions

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return self.infer(self.encode(texts))

    def warmup(self) -> None:
        """Calls at start so the first real batch doesn't pay for lazy initialisation.

        A compiled model is compiled here (a few shapes); oneDNN and CUDA
        kernels for the common shapes are created here too.
        """
        self.predict(["warm up the model", "a second, somewhat longer warm-up sentence for the batch"])
        self.predict(["warm up " * 40] * 3 + ["short"])
        if self.info.compiled:
            self.predict(["a third shape " * 12] * 5)


def _combine_windows(encoded: Encoded, row_probs: Sequence[Sequence[float]]) -> list[list[float]]:
    """Per text: the mean of its windows' probabilities, weighted by each window's token count.

    A text with one window gets exactly that window's probabilities, so short
    texts score the same as with LONG_TEXT=truncate.
    """
    assert encoded.text_of_row is not None
    sums: list[Optional[list[float]]] = [None] * encoded.texts
    weights = [0.0] * encoded.texts
    for row, (text, probs) in enumerate(zip(encoded.text_of_row, row_probs)):
        weight = float(len(encoded.input_ids[row]))
        acc = sums[text]
        if acc is None:
            sums[text] = [p * weight for p in probs]
        else:
            for k, p in enumerate(probs):
                acc[k] += p * weight
        weights[text] += weight
    out = []
    for acc, weight in zip(sums, weights):
        assert acc is not None
        out.append([p / weight for p in acc])
    return out


def _usable_stride(stride: int, max_length: int, tokenizer: Any) -> int:
    """The fast tokenizer needs the overlap to be shorter than a window's content; cap it at half."""
    content = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    cap = max(0, content // 2)
    if stride > cap:
        log.warning("WINDOW_STRIDE=%d is too large for MAX_LENGTH=%d; using %d", stride, max_length, cap)
        return cap
    return stride


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
    "resolve_precision",
    "quantize_int8",
]
