"""``sentiment-worker``: run the worker, feed it, watch its output, make test models.

Flags are generated from :class:`worker.settings.Settings`, so every setting is
both an env var and a ``--flag`` (the flag wins) without a second list to keep
in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

import orjson
import typer
from pydantic import ValidationError

from worker.bench import bench
from worker.ops import logs
from worker.ops.memory import tune_malloc
from worker.settings import Settings

app = typer.Typer(
    help="Streaming sentiment classification on Kafka.", no_args_is_help=True, pretty_exceptions_enable=False
)
model_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.command("bench")(bench)

EXIT_CONFIG = 2  # start-up refused: bad settings, unreachable Kafka, missing topics, unusable model

KAFKA_FIELDS = (
    "kafka_bootstrap_servers",
    "kafka_timeout_s",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password_file",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "log_level",
    "log_format",
)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(EXIT_CONFIG)


def load_settings(overrides: dict[str, Any]) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']).upper() or 'settings'}: {err['msg']}" for err in exc.errors()
        ]
        raise _fail("invalid settings\n" + "\n".join(lines)) from None


def with_settings(fields: Optional[Iterable[str]] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one ``--flag`` per setting (all, or ``fields``) and a ``settings`` argument.

    Each flag has its setting's type (``<int>``, ``<float>``, ``<path>``, an enum's choices;
    booleans are ``--x/--no-x``) and is None unless given, so the env var applies unless
    the flag is on the command line. Bounds (``ge=1``...) are left to pydantic, so a value out
    of range is reported like a bad env var: "invalid settings" and the setting's NAME.
    """
    names = list(fields) if fields is not None else list(Settings.model_fields)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "settings"]
        flags = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=_flag_option(name),
                              annotation=Optional[flag_type(name)])
            for name in names
        ]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            overrides = {n: kwargs.pop(n) for n in names if kwargs.get(n) is not None}
            for n in names:
                kwargs.pop(n, None)
            return fn(settings=load_settings(overrides), **kwargs)

        wrapper.__signature__ = inspect.Signature([*own, *flags])  # type: ignore[attr-defined]
        return wrapper

    return decorate


def flag_type(name: str) -> type:
    """The type of a setting's flag: the field's own (Optional unwrapped); secrets are plain text."""
    annotation = Settings.model_fields[name].annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation in (bool, int, float, Path) or (isinstance(annotation, type) and issubclass(annotation, Enum)):
        return annotation  # type: ignore[return-value]
    return str


def flag_names(name: str) -> str:
    """``--create-topics/--no-create-topics`` for a boolean setting, ``--batch-max-size`` otherwise."""
    flag = name.replace("_", "-")
    return f"--{flag}/--no-{flag}" if flag_type(name) is bool else f"--{flag}"


def _flag_option(name: str) -> Any:
    info = Settings.model_fields[name]
    bounds = ", ".join(_bound(m) for m in info.metadata if _bound(m))
    help_text = (
        f"{info.description or ''} (env {name.upper()}, default {_show(info.default)}"
        f"{', ' + bounds if bounds else ''})"
    )
    return typer.Option(None, flag_names(name), help=help_text, show_default=False, rich_help_panel="Settings")


def _bound(constraint: Any) -> str:
    for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if getattr(constraint, attr, None) is not None:
            return f"{sign} {getattr(constraint, attr)}"
    return ""


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return value.value if isinstance(value, Enum) else str(value)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def legacy_bool_flags(argv: list[str]) -> list[str]:
    """Rewrite the old spelling of boolean settings (``--create-topics false``) as ``--no-create-topics``.

    Boolean settings used to take a value; scripts written then keep working (and ``produce``
    does not take a stray ``false`` for a text to send).
    """
    flags = {"--" + n.replace("_", "-") for n in Settings.model_fields if flag_type(n) is bool}
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        flag, eq, value = arg.partition("=")
        if flag in flags and not eq and i + 1 < len(argv) and argv[i + 1].lower() in _TRUE | _FALSE:
            value, i = argv[i + 1], i + 1
            eq = "="
        if flag in flags and eq and value.lower() in _TRUE | _FALSE:
            arg = flag if value.lower() in _TRUE else "--no-" + flag[2:]
        out.append(arg)
        i += 1
    return out


# ----------------------------------------------------------------------- version

VERSIONED = ("python", "torch", "transformers", "faust-streaming", "aiokafka")


def versions() -> list[tuple[str, str]]:
    """This package's version and its main libraries' (from their metadata: nothing is imported)."""
    import platform
    from importlib import metadata

    def of(dist: str) -> str:
        if dist == "python":
            return platform.python_version()
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        own = metadata.version("sentiment-worker")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from worker import __version__ as own
    return [("sentiment-worker", own), *((dist, of(dist)) for dist in VERSIONED)]


def _print_version(value: bool) -> None:
    if value:
        name, own = versions()[0]
        typer.echo(f"{name} {own}")
        for dist, version in versions()[1:]:
            typer.echo(f"  {dist} {version}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version,
        help="Print the version (and those of python, torch, transformers, faust, aiokafka) and exit.",
    ),
) -> None:
    pass


# --------------------------------------------------------------------------- run


@app.command()
@with_settings()
def run(settings: Settings) -> None:
    """Consume the input topic, score batches, publish to the output topic (until stopped)."""
    from worker.service import StartupError, run_worker

    logs.configure(settings.log_level, settings.log_format.value)
    try:
        status = run_worker(settings)
    except StartupError as exc:  # already logged where it happened
        raise _fail(str(exc)) from None
    raise typer.Exit(status)


# ----------------------------------------------------------------------- produce


def _lines(texts: list[str], file: Optional[Path]) -> Iterator[str]:
    yield from texts
    if file is None and texts:
        return
    source = contextlib.nullcontext(sys.stdin) if file is None or str(file) == "-" else file.open(encoding="utf-8")
    with source as stream:
        for line in stream:
            line = line.rstrip("\r\n")
            if line.strip():
                yield line


class ProduceFormat(str, Enum):
    text = "text"  # each line/argument becomes {"text": ...}
    jsonl = "jsonl"  # each line is a JSON object, sent unchanged
    raw = "raw"  # each line is sent as-is (for INPUT_FORMAT=text)


@app.command()
@with_settings([*KAFKA_FIELDS, "input_topic", "create_topics", "topic_partitions", "topic_replication_factor"])
def produce(
    settings: Settings,
    texts: list[str] = typer.Argument(None, help="Texts to send; none: read lines from --file or stdin."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read lines from this file ('-' for stdin)."),
    fmt: ProduceFormat = typer.Option(ProduceFormat.text, "--format", help="text, jsonl or raw."),
) -> None:
    """Send texts to the input topic (one record per argument or line)."""
    from aiokafka import AIOKafkaProducer

    from worker.pipeline.codec import InputRecord, encode_input
    from worker.kafka.security import aiokafka_options
    from worker.kafka.topics import KafkaSetupError, ensure_topics

    logs.configure(settings.log_level, settings.log_format.value)

    def records() -> Iterator[tuple[Optional[bytes], bytes]]:
        for line in _lines(texts or [], file):
            if fmt is ProduceFormat.text:
                yield None, encode_input(InputRecord(text=line))
            elif fmt is ProduceFormat.raw:
                yield None, line.encode("utf-8")
            else:
                key = None
                try:
                    doc = orjson.loads(line)
                    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                        key = doc["id"].encode("utf-8")
                except orjson.JSONDecodeError:
                    pass  # sent anyway: the worker decides what is bad input
                yield key, line.encode("utf-8")

    async def send() -> int:
        await ensure_topics(
            settings.kafka_bootstrap_servers,
            [settings.input_topic],
            create=settings.create_topics,
            partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
            timeout_s=settings.kafka_timeout_s,
            options=aiokafka_options(settings),
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            **aiokafka_options(settings),
        )
        await producer.start()
        try:
            futures = [await producer.send(settings.input_topic, value, key=key) for key, value in records()]
            await asyncio.gather(*futures)
            return len(futures)
        finally:
            await producer.stop()

    try:
        count = asyncio.run(send())
    except KafkaSetupError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"produced {count} record(s) to {settings.input_topic}", err=True)


# -------------------------------------------------------------------------- tail


@app.command()
@with_settings([*KAFKA_FIELDS, "output_topic"])
def tail(
    settings: Settings,
    count: Optional[int] = typer.Option(None, "--count", "-n", help="Stop after this many records."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop after this many idle seconds."),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the oldest record."),
    since_ms: Optional[int] = typer.Option(None, "--since-ms", help="Start at records newer than this epoch ms."),
    compact: bool = typer.Option(False, "--compact", help="One JSON object per line."),
) -> None:
    """Print scored events from the output topic (read_committed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from worker.kafka.security import aiokafka_options
    from worker.kafka.topics import KafkaSetupError, ensure_topics

    async def consume() -> int:
        counts = await ensure_topics(
            settings.kafka_bootstrap_servers,
            [settings.output_topic],
            create=False,
            partitions=1,
            replication_factor=1,
            timeout_s=settings.kafka_timeout_s,
            options=aiokafka_options(settings),
        )
        consumer = AIOKafkaConsumer(
            **aiokafka_options(settings),
            bootstrap_servers=settings.kafka_bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest" if from_beginning else "latest",
        )
        await consumer.start()
        seen = 0
        try:
            tps = [TopicPartition(settings.output_topic, p) for p in range(counts.partitions[settings.output_topic])]
            consumer.assign(tps)
            if since_ms is not None:
                found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
                ends = await consumer.end_offsets(tps)
                for tp in tps:
                    consumer.seek(tp, found[tp].offset if found[tp] is not None else ends[tp])
            elif from_beginning:
                await consumer.seek_to_beginning(*tps)
            else:
                await consumer.seek_to_end(*tps)
            while count is None or seen < count:
                batch = await consumer.getmany(timeout_ms=int((timeout or 3600) * 1000))
                if not batch:
                    break
                for records in batch.values():
                    for record in records:
                        _print_event(record.value, compact)
                        seen += 1
                        if count is not None and seen >= count:
                            return seen
            return seen
        finally:
            await consumer.stop()

    try:
        seen = asyncio.run(consume())
    except KafkaSetupError as exc:
        raise _fail(str(exc)) from None
    if count is not None and seen < count:
        typer.echo(f"only {seen} of {count} record(s) arrived before the timeout", err=True)
        raise typer.Exit(1)


def _print_event(value: Optional[bytes], compact: bool) -> None:
    if value is None:
        return
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        typer.echo(value.decode("utf-8", "replace"))
        return
    if compact or not sys.stdout.isatty():
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        from rich import print_json

        print_json(data=doc)
    sys.stdout.flush()


# ------------------------------------------------------------------------- model


class ModelSize(str, Enum):
    tiny = "tiny"
    base = "base"


@model_app.command("init-random")
def init_random(
    directory: Path = typer.Argument(..., help="Where to write the model."),
    size: ModelSize = typer.Option(ModelSize.tiny, "--size", help="tiny (tests) or base (DistilBERT-base compute)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a randomly initialised DistilBERT classifier. ITS PREDICTIONS MEAN NOTHING."""
    from worker.model.random_model import write_random_model

    write_random_model(directory, size.value, seed=seed)
    typer.secho(
        f"wrote a RANDOM {size.value} DistilBERT classifier to {directory}: its predictions mean nothing "
        "(for tests and benchmarks only)",
        fg=typer.colors.YELLOW,
        err=True,
    )


@model_app.command("check")
@with_settings(["model", "model_revision", "device", "precision", "max_length", "attention", "torch_compile"])
def check(settings: Settings) -> None:
    """Load the configured model and score two texts: exits non-zero if it can't be loaded."""
    from worker.model.engine import ModelLoadError, SentimentEngine

    try:
        engine = SentimentEngine.from_settings(settings)
    except ModelLoadError as exc:
        raise _fail(str(exc)) from None
    info = engine.info
    typer.echo(f"model {info.name} revision {info.revision} on {info.device} ({info.precision}), labels {list(info.labels)}")
    for text, prediction in zip(
        ["I loved this, wonderful!", "This was a terrible waste of time."],
        engine.predict(["I loved this, wonderful!", "This was a terrible waste of time."]),
    ):
        typer.echo(f"  {prediction.label:>10} {prediction.score:.3f}  {text}")
    if info.random_weights:
        typer.secho("  (random weights: these predictions mean nothing)", fg=typer.colors.YELLOW)


def main() -> None:
    tune_malloc()  # first, before any thread allocates: see worker.ops.memory
    app(args=legacy_bool_flags(sys.argv[1:]))


if __name__ == "__main__":
    main()
