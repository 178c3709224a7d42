"""ONNX Runtime as the model's runtime: a loaded transformers classifier in, a forward function out.

The model is exported once (``torch.onnx.export``, the TorchScript exporter),
checked against torch on a shape it was not traced with, quantised for int8
(``onnxruntime.quantization.quantize_dynamic``, int8 weights) and cached next
to the model; later loads read the cached file. The forward function is called
like the torch model (``forward(**inputs).logits``), so the engine's batching,
padding and heads are the same for both runtimes. Knows nothing of Kafka.

Whatever ONNX Runtime can't run here (bf16, a device without its provider, an
export that fails or scores differently) raises :class:`OnnxUnavailable`, whose
message the caller logs once before it scores with torch instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from worker.model.loading import ModelInfo, takes_token_types

log = logging.getLogger(__name__)

OPSET = 17
# |delta| of the logits allowed between the export and torch on a shape it was not traced with (fp32; fp16: 20x).
EXPORT_CHECK_TOL = 1e-3
# Families the transformers optimizer fuses (attention, LayerNorm, GELU), by config.model_type.
OPTIMIZER_TYPES = {
    "bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
    "electra": "bert",
}
# The fused graph (attention, LayerNorm and GELU fusion by the transformers optimizer, where it knows the
# family) is not the default: on quiet runs it was level with the unfused graph in fp32 and 10-17 % behind
# in int8 (README, "Runtimes"; python -m worker.bench.runtimes compares both). True makes it the default.
OPTIMIZE = False
# ONNX Runtime's intra-op threads spin between calls by default: in the worker they then hold the
# cores its tokenizer and output threads need (README, "Runtimes": e2e / ceiling with and without).
SPIN = False


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime can't run this model here; the message says why (the caller falls back to torch)."""


@dataclass(frozen=True, slots=True)
class Logits:
    """What the engine reads from a forward call: ``.logits``, a torch tensor."""

    logits: torch.Tensor


def versions() -> dict[str, str]:
    """The libraries that make the exported file: a new version makes a new file."""
    import onnxruntime

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "opset": str(OPSET)}


def cache_root() -> Path:
    """Where exports of hub models (and of read-only model directories) go: under HF_HOME, which images mount."""
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        return Path(hf_home).expanduser() / "sentiment-worker" / "onnx"
    return Path("~/.cache/sentiment-worker/onnx").expanduser()


def cache_dirs(source: str) -> list[Path]:
    """Where exports are looked for, in order: ``<model_dir>/onnx`` for a local model, then the cache
    root's directory named after the model. New ones go to the first of them this process can write."""
    local = Path(source).expanduser()
    if local.is_dir():
        return [local / "onnx", cache_root() / f"local-{local.resolve().name}"]
    return [cache_root() / source.replace("/", "--")]


def cache_key(info: ModelInfo, precision: str, inputs: Sequence[str], optimized: bool) -> str:
    """A digest of everything the file depends on: model and its revision (weights hash for a local
    directory), precision, inputs, fusion, device type, and the exporting libraries' versions."""
    parts = {
        "model": info.name,
        "revision": info.revision,
        "precision": precision,
        "inputs": list(inputs),
        "optimized": optimized,
        "device": info.device.partition(":")[0],
        **versions(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def input_names(model: Any, tokenizer: Any) -> tuple[str, ...]:
    """The inputs the engine passes: ids and mask, and token types where tokenizer and model both use them."""
    return ("input_ids", "attention_mask", *(("token_type_ids",) if takes_token_types(model, tokenizer) else ()))


def supported(info: ModelInfo) -> None:
    """Raise OnnxUnavailable where ONNX Runtime has no way to run this device and precision."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxUnavailable("onnxruntime is not installed (pip install 'sentiment-worker[onnx]')") from exc

    device = info.device.partition(":")[0]
    if device not in ("cpu", "cuda"):
        raise OnnxUnavailable(f"ONNX Runtime has no provider for DEVICE={info.device}")
    if info.precision == "bf16":
        raise OnnxUnavailable("PRECISION=bf16: ONNX Runtime lacks bf16 kernels for these models")
    if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise OnnxUnavailable("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")


def exported(model: Any, tokenizer: Any, info: ModelInfo, *, optimize: Optional[bool] = None,
             scratch: bool = True) -> Path:
    """The cached ONNX file for this model, precision and device, made (and checked) if missing.

    int8 quantises the fp32 file (itself cached); ``optimize`` (default OPTIMIZE)
    fuses attention and LayerNorm where the optimizer knows the family. A cache this
    process can't write (a model volume mounted read-only) is still read; what is missing
    is made in a scratch directory (``scratch``) or, without it, raises. Raises
    OnnxUnavailable whatever the reason it can't be made.
    """
    supported(info)
    try:
        return _exported(model, tokenizer, info, optimize, scratch)
    except OnnxUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - exporters raise all sorts for what they can't trace
        raise OnnxUnavailable(f"the ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}") from exc


def scratch_dir(directory: Path) -> Path:
    """Where a process exports what a read-only cache lacks: its own temporary directory (a pod's /tmp)."""
    return Path(tempfile.gettempdir()) / "sentiment-worker-onnx" / directory.name


def _exported(model: Any, tokenizer: Any, info: ModelInfo, optimize: Optional[bool], scratch: bool) -> Path:
    names = input_names(model, tokenizer)
    model_type = OPTIMIZER_TYPES.get(getattr(model.config, "model_type", ""))
    optimized = (OPTIMIZE if optimize is None else optimize) and model_type is not None
    places = cache_dirs(info.name)
    base_precision = "fp32" if info.precision == "int8" else info.precision
    work = places[0]

    def path_for(precision: str, fused: bool) -> Path:
        """The cached file where it is; where it is missing, where it will be written."""
        key = cache_key(info, precision, names, fused)
        name = f"{precision}{'-fused' if fused else ''}-{key}.onnx"
        return next((d / name for d in places if (d / name).is_file()), work / name)

    target = path_for(info.precision, optimized)
    if target.is_file():
        log.debug("onnx.cached path=%s", target)
        return target
    writable = next((d for d in places if _writable(d)), None)
    if writable is None:
        if not scratch:
            raise OnnxUnavailable(f"the ONNX cache ({', '.join(map(str, places))}) is not writable")
        writable = scratch_dir(places[-1])
        log.warning("ONNX Runtime: the cache (%s) is read-only and lacks this model's export; exporting into %s "
                    "(each start will; `sentiment-worker model export` where the cache is writable makes it once)",
                    ", ".join(map(str, places)), writable)
    work = writable
    target = path_for(info.precision, optimized)
    started = time.perf_counter()
    graph = path_for(base_precision, False)
    if not graph.is_file():
        _atomic(graph, lambda tmp: _export_checked(model, names, tmp))
    if optimized:
        fused = path_for(base_precision, True)
        config = model.config
        plain = graph
        try:
            if not fused.is_file():
                _atomic(fused, lambda tmp: (_optimize(plain, tmp, model_type, config), _check(model, names, tmp)))
            graph = fused
        except OnnxUnavailable as exc:  # the unfused graph then serves (and the fusion is tried again next start)
            log.warning("ONNX Runtime: the fused graph is not used, %s", exc)
            target = path_for(info.precision, False)
    if info.precision == "int8" and not target.is_file():
        source = graph
        _atomic(target, lambda tmp: _quantize(source, tmp))
    log.info("onnx.exported path=%s seconds=%.1f", target, time.perf_counter() - started)
    return target


def build(model: Any, tokenizer: Any, info: ModelInfo, *, threads: int, optimize: Optional[bool] = None) -> "OnnxForward":
    """An ONNX Runtime forward for a loaded model (export or cache hit, then a session)."""
    return OnnxForward(exported(model, tokenizer, info, optimize=optimize), info.device, threads)


class OnnxForward:
    """An InferenceSession called like the transformers model: ``forward(**inputs).logits``.

    CPU: the input tensors are read in place (``.numpy()``) and the output array
    becomes the logits without a copy (``torch.from_numpy``). CUDA: inputs and
    output are bound to torch's device memory on torch's stream.
    """

    def __init__(self, path: Path, device: str, threads: int) -> None:
        import onnxruntime

        self.path = path
        self.device = torch.device(device)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its warnings are about nodes placed on the CPU
        if not SPIN:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            stream = torch.cuda.current_stream(index).cuda_stream
            providers: list[Any] = [
                ("CUDAExecutionProvider", {"device_id": index, "user_compute_stream": str(stream)}),
                "CPUExecutionProvider",
            ]
            self.device = torch.device("cuda", index)
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - a provider that fails to start, a corrupt file
            raise OnnxUnavailable(f"ONNX Runtime could not open {path}: {str(exc)[:300]}") from exc
        self.inputs = tuple(i.name for i in self.session.get_inputs())
        output = self.session.get_outputs()[0]
        self.output = output.name
        self.labels = int(output.shape[1])
        self.output_dtype = torch.float16 if "float16" in output.type else torch.float32

    def __call__(self, **inputs: torch.Tensor) -> Logits:
        if self.device.type == "cuda":
            return self._on_cuda(inputs)
        feed = {name: inputs[name].numpy() for name in self.inputs}
        return Logits(torch.from_numpy(self.session.run([self.output], feed)[0]))

    def _on_cuda(self, inputs: dict[str, torch.Tensor]) -> Logits:
        binding = self.session.io_binding()
        index = self.device.index
        rows = 0
        for name in self.inputs:
            tensor = inputs[name].contiguous()
            rows = tensor.shape[0]
            binding.bind_input(name, "cuda", index, np.int64, tuple(tensor.shape), tensor.data_ptr())
        out = torch.empty((rows, self.labels), dtype=self.output_dtype, device=self.device)
        np_type = np.float16 if self.output_dtype == torch.float16 else np.float32
        binding.bind_output(self.output, "cuda", index, np_type, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return Logits(out)


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def _atomic(target: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same directory, then rename: readers see the whole file or none,
    and replicas exporting at once each rename a complete file of their own."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain file would be (mkstemp makes it private)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class _Logits(torch.nn.Module):
    """The model with positional inputs and the logits as its one output (what the exporter traces)."""

    def __init__(self, model: Any, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, args))).logits


def _example(model: Any, names: Sequence[str], rows: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    """Inputs of a given shape with some padding (the last row is half padding), on the model's device."""
    generator = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 100))
    ids = torch.randint(min(5, vocab - 1), vocab, (rows, width), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, width // 2:] = 0
    pad = getattr(model.config, "pad_token_id", None)
    ids[mask == 0] = pad if pad is not None else 0
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    device = next(model.parameters()).device
    return {name: tensors[name].to(device) for name in names}


def _export(model: Any, names: Sequence[str], path: Path) -> None:
    """TorchScript export with dynamic batch and sequence axes (needs no extra packages)."""
    wrapper = _Logits(model, names).eval()  # eval: the exporter restores the wrapper's mode onto the model
    example = _example(model, names, rows=2, width=16, seed=0)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, tuple(example[n] for n in names), str(path), input_names=list(names), output_names=["logits"],
            dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )


def _export_checked(model: Any, names: Sequence[str], path: Path) -> None:
    _export(model, names, path)
    _check(model, names, path)


def _check(model: Any, names: Sequence[str], path: Path) -> None:
    """The export must score a shape it was not traced with as torch does (a traced constant would not)."""
    import onnxruntime

    example = _example(model, names, rows=3, width=23, seed=1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: example[i.name].cpu().numpy() for i in session.get_inputs()}
    got = session.run(None, feed)[0].astype(np.float64)
    with torch.no_grad():
        want = model(**example).logits.float().cpu().numpy().astype(np.float64)
    delta = float(np.abs(got - want).max())
    tol = EXPORT_CHECK_TOL if next(model.parameters()).dtype == torch.float32 else 20 * EXPORT_CHECK_TOL
    if not np.isfinite(delta) or delta > tol:
        raise OnnxUnavailable(f"the exported graph scores differently from torch (|delta| {delta:.2e})")


def _optimize(source: Path, path: Path, model_type: str, config: Any) -> None:
    """Attention, LayerNorm and GELU fused by the transformers optimizer (ORT's own passes run at load)."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    with _quiet():
        optimized = optimize_model(str(source), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=0)
    optimized.save_model_to_file(str(path))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The optimizer and quantiser report each fusion at info and give advice at warning, on the root
    logger too: silenced for the one-off export (at start, before the worker's own threads log)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _quantize(source: Path, path: Path) -> None:
    """Dynamic int8: weights int8 once, activations quantised per call (as torch's dynamic int8)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import onnx

    # DefaultTensorType: the fused graph's contrib ops leave some shapes uninferred; they are all float.
    with _quiet():
        quantize_dynamic(
            source, path, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}
        )
