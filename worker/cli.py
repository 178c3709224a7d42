"""``sentiment-worker``: run the worker, feed it, watch its output, make test models.

Flags are generated from :class:`worker.settings.Settings`, so every setting is
both an env var and a ``--flag`` (the flag wins) without a second list to keep
in step.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

import typer
from pydantic import ValidationError

from worker.bench import bench
from worker.ops import logs
from worker.settings import Settings, misspelt_settings
from worker.tools.kafka_io import BEGINNING, END, OFFSET_HELP, StartAt, ToolError, parse_start
from worker.tools.produce import ProduceFormat
from worker.tools.tail import TailFormat

app = typer.Typer(
    help="Streaming sentiment classification on Kafka.", no_args_is_help=True, pretty_exceptions_enable=False
)
model_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
app.add_typer(model_app, name="model")
dlt_app = typer.Typer(help="Dead-letter topic tools (read it with: tail --topic <INPUT_TOPIC>-dlt).", no_args_is_help=True)
app.add_typer(dlt_app, name="dlt")
app.command("bench")(bench)

EXIT_CONFIG = 2  # bad settings or arguments (the worker's own start-up refusals: worker.service.EXIT_CONFIG)

KAFKA_FIELDS = (
    "kafka_bootstrap_servers",
    "kafka_timeout_s",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password_file",
    "oauth_token_endpoint_url",
    "oauth_client_id",
    "oauth_client_secret_file",
    "oauth_scope",
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
    """Settings from the environment and the flags; a value that doesn't validate, or an
    environment variable that looks like a misspelt setting, refuses the command (exit 2)."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']).upper() or 'settings'}: {err['msg']}" for err in exc.errors()
        ]
        raise _fail("invalid settings\n" + "\n".join(lines)) from None
    misspelt = misspelt_settings(dict(os.environ), settings.allow_env)
    if misspelt:
        raise _fail("\n".join(
            f"{name} looks like a misspelt {setting} (it would be ignored): rename it, or add it to ALLOW_ENV "
            "if it is meant for something else" for name, setting in misspelt
        ))
    return settings


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
    from worker.service import main

    raise typer.Exit(main(settings))


# ----------------------------------------------------------------------- produce


@app.command()
@with_settings([*KAFKA_FIELDS, "input_topic", "create_topics", "topic_partitions", "topic_replication_factor"])
def produce(
    settings: Settings,
    texts: Optional[list[str]] = typer.Argument(None, help="Texts to send; none: read lines from --file or stdin."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read lines from this file ('-' for stdin)."),
    fmt: ProduceFormat = typer.Option(
        ProduceFormat.text, "--format",
        help='text: each line becomes {"text": line}; jsonl: JSON objects sent as they are (key: their "id"); '
        "raw: lines sent as they are (INPUT_FORMAT=text).",
    ),
    key: Optional[str] = typer.Option(
        None, "--key", "-k", help="Key of every record (wins over the id field and --key-separator)."
    ),
    key_separator: Optional[str] = typer.Option(
        None, "--key-separator", "-K",
        help="Each line is KEY<SEP>VALUE, split at the first SEP (kcat -K); a line without SEP has no key.",
    ),
    headers: Optional[list[str]] = typer.Option(
        None, "--header", "-H", help="A header name=value on every record; repeat for more."
    ),
    partition: Optional[int] = typer.Option(
        None, "--partition", "-p", help="Send every record to this partition (default: by key, as Kafka does)."
    ),
    null_empty: bool = typer.Option(
        False, "--null-empty", "-Z",
        help="Send an empty key or value as null (kcat -Z): with --key-separator, 'k:' is a tombstone for k.",
    ),
) -> None:
    """Send texts to the input topic (one record per argument or line)."""
    from aiokafka.errors import KafkaError

    from worker.kafka.errors import describe
    from worker.kafka.topics import KafkaSetupError
    from worker.tools import produce as tool

    logs.configure(settings.log_level.value, settings.log_format.value)
    try:
        parsed_headers = tuple(tool.parse_header(h) for h in headers or ())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--header'") from None
    if key_separator == "":
        raise typer.BadParameter("must not be empty", param_hint="'--key-separator'")
    opts = tool.ProduceOptions(fmt=fmt, key=key, key_separator=key_separator, null_empty=null_empty,
                               headers=parsed_headers, partition=partition)
    try:
        result = asyncio.run(tool.produce(settings, tool.lines(texts or [], file), opts))
    except (KafkaSetupError, ToolError) as exc:
        raise _fail(str(exc)) from None
    except KafkaError as exc:
        typer.secho(f"error: a send failed ({describe(exc)}); records before it may have been written",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    for why in result.skipped:
        typer.echo(f"skipped {why}", err=True)
    typer.echo(result.summary(), err=True)
    if result.skipped:
        raise typer.Exit(1)


# -------------------------------------------------------------------------- tail


@app.command()
@with_settings([*KAFKA_FIELDS, "output_topic"])
def tail(
    settings: Settings,
    topic: Optional[str] = typer.Option(
        None, "--topic", "-t", help="Topic to read (default: OUTPUT_TOPIC); e.g. the dead-letter topic <INPUT_TOPIC>-dlt."
    ),
    partitions: Optional[list[int]] = typer.Option(
        None, "--partition", "-p", help="Read only this partition; repeat for more (default: all)."
    ),
    offset: Optional[str] = typer.Option(
        None, "--offset", "-o", help=f"Where to start in each partition: {OFFSET_HELP} Default: end (new records)."
    ),
    count: Optional[int] = typer.Option(None, "--count", "-n", help="Stop after this many records."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop after this many idle seconds."),
    exit_at_end: bool = typer.Option(
        False, "--exit-at-end", "-e", help="Stop at the end the partitions had when tail started (kcat -e)."
    ),
    fmt: TailFormat = typer.Option(
        TailFormat.auto, "--format",
        help="pretty: metadata line then the value; json: one object per record with partition, offset, timestamp, "
        "key, headers and value; value: the value alone; auto: pretty on a terminal, json otherwise.",
    ),
    compact: bool = typer.Option(False, "--compact", help="One line per record (pretty and value formats)."),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Same as --offset beginning."),
    since_ms: Optional[int] = typer.Option(None, "--since-ms", help="Same as --offset @MS: records from this epoch ms on."),
) -> None:
    """Print records of the output topic (or --topic) with partition, offset, timestamp, key and headers (read_committed)."""
    from worker.kafka.topics import KafkaSetupError
    from worker.tools import tail as tool

    if (offset is not None) + (since_ms is not None) + from_beginning > 1:
        raise typer.BadParameter("give one of --offset, --from-beginning and --since-ms", param_hint="'--offset'")
    start = END
    if offset is not None:
        start = _start(offset)
    elif from_beginning:
        start = BEGINNING
    elif since_ms is not None:
        start = StartAt("time", since_ms)
    opts = tool.TailOptions(topic=topic or settings.output_topic, partitions=partitions or (), start=start,
                            count=count, idle_timeout_s=timeout, until_end=exit_at_end, fmt=fmt, compact=compact)
    try:
        seen = asyncio.run(tool.tail(settings, opts))
    except (KafkaSetupError, ToolError) as exc:
        raise _fail(str(exc)) from None
    if count is not None and seen < count:
        why = "the end" if exit_at_end else "the timeout"
        typer.echo(f"only {seen} of {count} record(s) arrived before {why}", err=True)
        raise typer.Exit(1)


@app.command()
@with_settings(KAFKA_FIELDS)
def compare(
    settings: Settings,
    topic_a: str = typer.Argument(..., metavar="A", help="Scored topic of one release (e.g. the current model's)."),
    topic_b: str = typer.Argument(..., metavar="B", help="Scored topic of the other (e.g. the shadow release's)."),
    since: Optional[str] = typer.Option(
        None, "--from", help="Only input events (source.timestamp) at or after this time: @EPOCH_MS or ISO 8601 (no zone: local time).",
    ),
    until: Optional[str] = typer.Option(None, "--until", help="Only input events before this time (same spellings)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object with every figure, on stdout."),
    min_agreement: Optional[float] = typer.Option(
        None, "--min-agreement", min=0.0, max=1.0,
        help="Exit 1 when the label agreement is lower than this fraction (0..1), or can't be measured.",
    ),
    plot_file: Optional[Path] = typer.Option(
        None, "--plot", help="Write a PNG: histogram of score differences and the confusion matrix (needs matplotlib)."
    ),
) -> None:
    """Where two scored topics disagree: events in both or one, models, label agreement, confusion, score deltas.

    Reads both topics (read_committed) from the beginning up to the end they have when the command
    starts, and joins their events by id (the last one of an id that was written twice). --from and
    --until select by the input event's time (source.timestamp), the same on both sides. Exit 0 when
    both were read, 1 below --min-agreement, 2 on usage errors and unreachable or missing topics.
    """
    import orjson

    from worker.kafka.topics import KafkaSetupError
    from worker.tools import compare as tool

    window = (_time(since, "--from"), _time(until, "--until"))
    if window[0] is not None and window[1] is not None and window[1] <= window[0]:
        raise typer.BadParameter("must be later than --from", param_hint="'--until'")
    if plot_file is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise _fail("--plot needs matplotlib: pip install 'sentiment-worker[bench]'") from None
    logs.configure(settings.log_level.value, settings.log_format.value)
    try:
        result = asyncio.run(tool.compare_topics(settings, topic_a, topic_b, window))
    except (KafkaSetupError, ToolError) as exc:
        raise _fail(str(exc)) from None
    doc = result.as_dict()
    gate_failed = min_agreement is not None and (result.agreement is None or result.agreement < min_agreement)
    if min_agreement is not None:
        doc["min_agreement"] = {"required": min_agreement, "passed": not gate_failed}
    if as_json:
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(tool.report(result, window=window), nl=False)
    if plot_file is not None:
        tool.plot(result, plot_file)
        typer.echo(f"wrote {plot_file}", err=True)
    if gate_failed:
        shown = "not measured (no labelled event in both)" if result.agreement is None else f"{result.agreement:.2%}"
        typer.echo(f"label agreement {shown} is below --min-agreement {min_agreement:.2%}", err=True)
        raise typer.Exit(1)


def _time(text: Optional[str], flag: str) -> Optional[int]:
    from worker.tools.compare import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{flag}'") from None


def _start(text: str) -> StartAt:
    try:
        return parse_start(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--offset'") from None


# --------------------------------------------------------------------------- dlt


@dlt_app.command("replay")
@with_settings([*KAFKA_FIELDS, "input_topic", "dead_letter_topic"])
def dlt_replay(
    settings: Settings,
    reasons: Optional[list[str]] = typer.Option(
        None, "--reason", "-r",
        help="Replay only dead letters with this __sentiment.errors.reason (not_json, text_missing...); repeatable.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List what would be replayed (partition, offset, reason, key); send nothing."
    ),
    count: Optional[int] = typer.Option(None, "--count", "-n", help="Replay at most this many."),
    offset: Optional[str] = typer.Option(
        None, "--offset", "-o", help=f"Where to start in the dead-letter topic: {OFFSET_HELP} Default: beginning."
    ),
    partitions: Optional[list[int]] = typer.Option(
        None, "--partition", "-p", help="Only this partition of the dead-letter topic; repeatable (default: all)."
    ),
) -> None:
    """Send dead letters back to the input topic: original key, value and headers, plus __sentiment.replayed.from.

    Reads the dead-letter topic (DEAD_LETTER_TOPIC, default <INPUT_TOPIC>-dlt) up to the end it has
    when the replay starts. Dead letters whose value was dropped for size are skipped and named.
    """
    from aiokafka.errors import KafkaError

    from worker.kafka.errors import describe
    from worker.kafka.topics import KafkaSetupError
    from worker.tools import replay as tool

    opts = tool.ReplayOptions(reasons=frozenset(reasons or ()), partitions=partitions or (),
                              start=_start(offset) if offset is not None else BEGINNING, count=count, dry_run=dry_run)
    try:
        result = asyncio.run(tool.replay(settings, opts))
    except (KafkaSetupError, ToolError) as exc:
        raise _fail(str(exc)) from None
    except KafkaError as exc:
        typer.secho(
            f"error: replay stopped ({describe(exc)}); records before the failure may have been sent: "
            f"look for {tool.REPLAYED_FROM_HEADER} on {settings.input_topic}",
            fg=typer.colors.RED, err=True,
        )
        raise typer.Exit(1) from None
    typer.echo(result.summary(), err=True)


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
@with_settings(
    ["model", "model_revision", "device", "precision", "max_length", "attention", "torch_compile", "compile_mode",
     "runtime"]
)
def check(settings: Settings) -> None:
    """Load the configured model and score two texts: exits non-zero if it can't be loaded."""
    from worker.model.engine import ModelLoadError, SentimentEngine

    try:
        engine = SentimentEngine.from_settings(settings)
    except ModelLoadError as exc:
        raise _fail(str(exc)) from None
    info = engine.info
    typer.echo(
        f"model {info.name} revision {info.revision} on {info.device} ({info.precision}, {info.runtime}), "
        f"labels {list(info.labels)}"
    )
    for text, prediction in zip(
        ["I loved this, wonderful!", "This was a terrible waste of time."],
        engine.predict(["I loved this, wonderful!", "This was a terrible waste of time."]),
    ):
        typer.echo(f"  {prediction.label:>10} {prediction.score:.3f}  {text}")
    if info.random_weights:
        typer.secho("  (random weights: these predictions mean nothing)", fg=typer.colors.YELLOW)


@model_app.command("export")
@with_settings(["model", "model_revision", "device", "precision", "max_length", "attention"])
def export(settings: Settings) -> None:
    """Export the configured model to ONNX (int8-quantised for PRECISION=int8) into the cache that
    RUNTIME=onnxruntime reads, so replicas start without exporting (images, volumes); prints its path."""
    from worker.model import onnx_runtime
    from worker.model.loading import ModelLoadError, load_pretrained

    try:
        loaded = load_pretrained(
            settings.model, revision=settings.model_revision, device=settings.device,
            precision=settings.precision.value, max_length=settings.max_length, attention=settings.attention.value,
            defer_torch=True,
        )
        path = onnx_runtime.exported(loaded.model, loaded.tokenizer, loaded.info, scratch=False)
    except (ModelLoadError, onnx_runtime.OnnxUnavailable) as exc:
        raise _fail(str(exc)) from None
    typer.echo(str(path))


def main() -> None:
    app(args=legacy_bool_flags(sys.argv[1:]))


if __name__ == "__main__":
    main()
