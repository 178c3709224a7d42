"""Loading a sequence classifier: hub id or local directory, safetensors only, no remote code.

Everything an operator can get wrong here (a missing directory, a base model
without a classifier head, a precision the device can't run) becomes a
:class:`ModelLoadError` whose message says how to fix it, so the CLI can end
with one line and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
# Weights are loaded in this dtype; int8 loads fp32 and then quantises the Linear layers.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
ATTENTIONS = ("auto", "sdpa", "eager")
COMPILE_MODES = ("default", "reduce-overhead")


class ModelLoadError(RuntimeError):
    """The model can't be loaded; the message says how to fix it."""


class Head(str, Enum):
    """What the classifier's outputs mean, read from the model's config."""

    single_label = "single_label"  # softmax over the labels; one label per text
    multi_label = "multi_label"  # a sigmoid per label; every label above a threshold applies
    regression = "regression"  # one output, a number


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
    compile_mode: str = "default"  # torch.compile's mode when compiled: default or reduce-overhead (CUDA graphs)
    long_text: str = "truncate"  # truncate or windows
    head: Head = Head.single_label
    runtime: str = "torch"  # what runs the forward: torch or onnxruntime

    def as_output(self) -> dict[str, Optional[str]]:
        """The ``model`` block of every output event."""
        return {"name": self.name, "revision": self.revision}


@dataclass(frozen=True, slots=True)
class Loaded:
    """What :func:`load_pretrained` hands to the engine."""

    model: Any
    tokenizer: Any
    info: ModelInfo
    forward: Any  # the compiled module, or the model itself


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


def head_of(config: Any) -> Head:
    """The head type as transformers itself decides it (``problem_type``, else from ``num_labels``)."""
    problem = getattr(config, "problem_type", None)
    if problem == "multi_label_classification":
        return Head.multi_label
    if problem == "regression" or (problem is None and config.num_labels == 1):
        return Head.regression
    return Head.single_label


# RoBERTa's family numbers positions from padding_idx + 1: two of max_position_embeddings
# (514 for the base models) are never a token's.
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text", "xmod"})


def usable_positions(config: Any) -> Optional[int]:
    """How many tokens (special ones included) a text may have for this model."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit


def load_pretrained(
    source: str,
    *,
    revision: Optional[str] = None,
    device: str = "auto",
    precision: str = "auto",
    max_length: int = 512,
    threads: Optional[int] = None,
    attention: str = "auto",
    compile: bool = False,
    compile_mode: str = "default",
    long_text: str = "truncate",
    defer_torch: bool = False,
) -> Loaded:
    """Load model and tokenizer from a local directory or the hub (or its cache).

    ``precision``: auto (fp16 on CUDA, else fp32), fp32, fp16 (CUDA), bf16,
    int8 (CPU: dynamic quantisation of the Linear layers). ``attention``:
    auto (what transformers picks: SDPA where it supports the model, else
    eager), sdpa or eager. ``compile``: wrap the model in torch.compile
    (dynamic shapes; the first calls compile, so warm up) in ``compile_mode``
    (``reduce-overhead`` also captures CUDA graphs on a GPU). ``threads``: CPU
    threads for inference, default the cores this process may use.
    ``defer_torch``: leave the model as loaded (not quantised, not compiled), for
    an ONNX export; :func:`finish_torch` does the rest if torch runs it after all.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if attention not in ATTENTIONS:
        raise ModelLoadError(f"ATTENTION={attention!r}: must be one of {', '.join(ATTENTIONS)}")
    if long_text not in ("truncate", "windows"):
        raise ModelLoadError(f"LONG_TEXT={long_text!r}: must be truncate or windows")
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
    if is_local and not any((local / name).exists() for name in TOKENIZER_FILES):
        missing = FileNotFoundError(f"no tokenizer file ({', '.join(TOKENIZER_FILES)})")
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
            dtype=DTYPES[precision],
            output_loading_info=True,
            **kwargs,
            **model_kwargs,
        )
    except Exception as exc:  # noqa: BLE001 - corrupt files raise all sorts; all mean "can't load"
        if attention != "auto" and "attn" in str(exc).lower():
            raise ModelLoadError(f"ATTENTION={attention} is not supported for this model: {exc}") from exc
        raise ModelLoadError(_explain_load_failure(source, is_local, exc)) from exc
    untrained = [
        *loading.get("missing_keys", ()),
        *(k[0] if isinstance(k, tuple) else k for k in loading.get("mismatched_keys", ())),
    ]
    if untrained:
        raise ModelLoadError(
            f"MODEL={source!r} is not a trained sequence classifier: {len(untrained)} weights would be "
            f"randomly initialised ({', '.join(map(str, untrained[:4]))}...). Use a fine-tuned checkpoint."
        )
    model.eval().to(torch_device)
    attn_used = str(getattr(model.config, "_attn_implementation", None) or "eager")
    forward = model
    if compile_mode not in COMPILE_MODES:
        raise ModelLoadError(f"COMPILE_MODE={compile_mode!r}: must be one of {', '.join(COMPILE_MODES)}")
    if not defer_torch:
        model, forward = finish_torch(model, precision, compile, compile_mode)
    labels = tuple(str(model.config.id2label[i]) for i in range(model.config.num_labels))
    limit = usable_positions(model.config)
    if limit and max_length > limit:
        raise ModelLoadError(f"MAX_LENGTH={max_length} exceeds the model's {limit} positions")
    info = ModelInfo(
        name=source,
        revision=_fingerprint(local) if is_local else getattr(model.config, "_commit_hash", None) or revision,
        device=str(torch_device),
        precision=precision,
        labels=labels,
        random_weights=is_local and (local / RANDOM_WEIGHTS_MARKER).exists(),
        attention=attn_used,
        compiled=bool(compile),
        compile_mode=compile_mode,
        long_text=long_text,
        head=head_of(model.config),
    )
    return Loaded(model, tokenizer, info, forward)


def finish_torch(model: Any, precision: str, compile: bool, compile_mode: str = "default") -> tuple[Any, Any]:
    """The model torch runs: int8 quantised, and (model, forward) where forward may be the compiled module."""
    if precision == "int8":
        model = quantize_int8(model)
    forward = model
    if compile:
        try:
            forward = torch.compile(model, dynamic=True, mode=compile_mode)
        except Exception as exc:  # noqa: BLE001 - backend missing (no compiler, unsupported platform)
            raise ModelLoadError(f"TORCH_COMPILE=true but torch.compile failed: {exc}") from exc
    return model, forward


def takes_token_types(model: Any, tokenizer: Any) -> bool:
    """Whether to pass token_type_ids: the tokenizer makes them and the model's forward takes them."""
    import inspect

    if "token_type_ids" not in getattr(tokenizer, "model_input_names", ()):
        return False
    try:
        return "token_type_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


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
        "`sentiment-worker model init-random DIR` writes a random model."
    )
