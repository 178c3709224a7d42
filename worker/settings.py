"""Every knob of the worker, read from environment variables and CLI flags.

One pydantic model is the single source of truth: the CLI builds its flags from
these fields (see ``cli.py``), so an env var and a flag can never drift apart.
Validation happens once, at start, with messages an operator can act on.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "distilbert-base-uncased-finetuned-sst-2-english"


class InputFormat(str, Enum):
    """How input record values are read."""

    json = "json"  # a JSON object with a "text" field (schemas/sentiment-input.v1.json)
    text = "text"  # the whole value is the UTF-8 text (console producers, kcat)
    json_schema = "json_schema"  # Schema Registry wire format, JSON payload (worker.registry)
    avro = "avro"  # Schema Registry wire format, Avro payload (schemas/sentiment-input.v1.avsc)


class OutputFormat(str, Enum):
    """How output record values are written."""

    json = "json"  # plain JSON (schemas/sentiment-output.v2.json)
    json_schema = "json_schema"  # Schema Registry wire format, JSON payload, that schema registered
    avro = "avro"  # Schema Registry wire format, Avro payload (schemas/sentiment-output.v2.avsc)


class SubjectNameStrategy(str, Enum):
    """The subject a schema is registered under (Confluent's strategies)."""

    topic = "topic"  # TopicNameStrategy: <topic>-value
    record = "record"  # RecordNameStrategy: the record's full name (JSON Schema: its title)
    topic_record = "topic_record"  # TopicRecordNameStrategy: <topic>-<record full name>


class Precision(str, Enum):
    """Numeric precision of the model weights and activations."""

    auto = "auto"  # fp16 on CUDA, fp32 elsewhere
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"  # CPU only: dynamic quantisation of the Linear layers


class Runtime(str, Enum):
    """What runs the model's forward pass (worker.model.onnx_runtime)."""

    torch = "torch"
    onnxruntime = "onnxruntime"  # exported to ONNX once, cached next to the model; torch where it can't run
    auto = "auto"  # both timed at start, the faster kept


class Attention(str, Enum):
    auto = "auto"  # sdpa where transformers supports it for the model, else eager
    sdpa = "sdpa"
    eager = "eager"


class CompileMode(str, Enum):
    """torch.compile's mode (TORCH_COMPILE=true)."""

    default = "default"
    reduce_overhead = "reduce-overhead"  # CUDA graphs on a GPU; model calls take shapes from a short series


class LongText(str, Enum):
    truncate = "truncate"  # score the first MAX_LENGTH tokens (output truncated=true)
    windows = "windows"  # score overlapping windows and average their probabilities


class Guarantee(str, Enum):
    at_least_once = "at_least_once"  # idempotent producer, offsets committed after outputs are stored
    exactly_once = "exactly_once"  # outputs and offsets in one Kafka transaction per partition batch


class SecurityProtocol(str, Enum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(str, Enum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    OAUTHBEARER = "OAUTHBEARER"  # tokens from OAUTH_TOKEN_ENDPOINT_URL (worker.kafka.oauth)


class Allocator(str, Enum):
    auto = "auto"
    jemalloc = "jemalloc"
    system = "system"


class LogFormat(str, Enum):
    auto = "auto"  # pretty on a TTY, JSON otherwise
    json = "json"
    console = "console"


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class OffsetReset(str, Enum):
    """Where a group with no committed offset starts reading a partition."""

    earliest = "earliest"
    latest = "latest"


class SchemaVersion(str, Enum):
    """The output event's schema (schemas/sentiment-output.v<N>.json)."""

    v1 = "1"  # single-label models only
    v2 = "2"  # any head


def secret(value: Optional[SecretStr], file: Optional[Path]) -> Optional[str]:
    """A secret from its file (preferred: no secret in the environment) or its variable; never logged."""
    if file is not None:
        return file.read_text().strip()
    return value.get_secret_value() if value is not None else None


class Settings(BaseSettings):
    """Worker configuration. Each field is the env var of the same name, upper-cased."""

    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", protected_namespaces=()
    )

    # --- Kafka -----------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    input_topic: str = Field("sentiment-input", description="Topic the texts are read from.")
    output_topic: str = Field("sentiment-output", description="Topic the scored events go to.")
    group_id: str = Field(
        "sentiment-worker",
        description="Consumer group (and Faust app id); replicas sharing it split the partitions.",
    )
    create_topics: bool = Field(
        True,
        description="Create missing input/output topics at start. Turn off where topics are managed.",
    )
    topic_partitions: int = Field(6, ge=1, description="Partitions of topics this worker creates.")
    topic_replication_factor: int = Field(
        1, ge=1, description="Replication factor of topics this worker creates."
    )
    auto_offset_reset: OffsetReset = Field(
        OffsetReset.earliest, description="Where a new group starts reading: earliest or latest."
    )
    start_from: Optional[str] = Field(
        None,
        description="Where the group begins on a partition it has no committed offset for: earliest, latest, "
        "an ISO-8601 time with a zone or @EPOCH_MS (the first record at or after it; a partition with none "
        "starts at its end). Committed offsets always win. Unset: AUTO_OFFSET_RESET.",
    )
    run_until: Optional[str] = Field(
        None,
        description="A bounded run (a backfill): end (each partition's end when this replica is first assigned "
        "it; the last stable offset), or a past ISO-8601 time with a zone or @EPOCH_MS (stop at the first record "
        "at or after it). Exits 0 once everything before the stops is stored and committed. Unset: run forever.",
    )
    commit_interval_s: float = Field(
        1.0, gt=0, description="How often the offsets of stored outputs are committed (at-least-once), in seconds."
    )
    kafka_timeout_s: float = Field(
        15.0, gt=0, description="How long start-up waits for the brokers before failing."
    )
    processing_guarantee: Guarantee = Field(
        Guarantee.at_least_once,
        description="at_least_once (lighter; duplicates possible after failures) or exactly_once "
        "(Kafka transactions; readers must use isolation.level=read_committed).",
    )
    transaction_timeout_ms: int = Field(
        60000,
        ge=1000,
        description="Kafka transaction timeout in exactly-once mode: bounds one publish-and-commit (must exceed "
        "KAFKA_REQUEST_TIMEOUT_S); a transaction the broker aborts for it is retried, never lost.",
    )
    dead_letter_topic: Optional[str] = Field(
        None, description="Topic for records that can't be scored; default <INPUT_TOPIC>-dlt."
    )
    kafka_request_timeout_s: float = Field(
        30.0, gt=0, description="How long the producer waits for a broker answer before a send counts as failed."
    )
    publish_backoff_max_s: float = Field(
        30.0, gt=0, description="Longest pause between retries when the output can't be written."
    )
    publish_retry_budget_s: float = Field(
        300.0,
        gt=0,
        description="How long a batch may keep failing to publish before the worker gives up and exits 1 (its "
        "replacement resumes from the committed offsets); /ready says 503 once it has failed for 10 s (or half this).",
    )
    min_insync_replicas: int = Field(
        2,
        ge=1,
        description="min.insync.replicas of topics this worker creates (capped at TOPIC_REPLICATION_FACTOR).",
    )
    session_timeout_s: float = Field(
        30.0, ge=6, description="A replica that sends no heartbeat for this long loses its partitions."
    )
    stall_timeout_s: float = Field(
        120.0,
        ge=0,
        description="Exit (to be restarted) when input waits but nothing was consumed for this long, or a batch "
        "sits in one stage this long (publish retries excepted); 0: never.",
    )
    group_instance_id: Optional[str] = Field(
        None, description="Static group membership id (e.g. the pod name): no rebalance on quick restarts."
    )
    security_protocol: SecurityProtocol = Field(
        SecurityProtocol.PLAINTEXT, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: SaslMechanism = Field(
        SaslMechanism.PLAIN, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER."
    )
    sasl_username: Optional[str] = Field(None, description="SASL user name.")
    sasl_password: Optional[SecretStr] = Field(None, description="SASL password (prefer SASL_PASSWORD_FILE).")
    sasl_password_file: Optional[Path] = Field(None, description="File holding the SASL password.")
    oauth_token_endpoint_url: Optional[str] = Field(
        None, description="SASL_MECHANISM=OAUTHBEARER: the OAuth 2 token endpoint (client credentials grant)."
    )
    oauth_client_id: Optional[str] = Field(None, description="OAUTHBEARER: the client id at the token endpoint.")
    oauth_client_secret: Optional[SecretStr] = Field(
        None, description="OAUTHBEARER: the client secret (prefer OAUTH_CLIENT_SECRET_FILE)."
    )
    oauth_client_secret_file: Optional[Path] = Field(None, description="OAUTHBEARER: file holding the client secret.")
    oauth_scope: Optional[str] = Field(None, description="OAUTHBEARER: the scope to ask tokens for, if the endpoint needs one.")
    ssl_cafile: Optional[Path] = Field(None, description="CA bundle to verify the brokers.")
    ssl_certfile: Optional[Path] = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: Optional[Path] = Field(None, description="Client private key (mutual TLS).")

    # --- Input / output --------------------------------------------------------
    input_format: InputFormat = Field(
        InputFormat.json,
        description="json: JSON objects with a text field; text: raw UTF-8 lines; json_schema or avro: "
        "Schema Registry framed JSON or Avro (needs SCHEMA_REGISTRY_URL).",
    )
    output_format: OutputFormat = Field(
        OutputFormat.json,
        description="json: plain JSON; json_schema or avro: Schema Registry framed, the output schema "
        "registered at start (needs SCHEMA_REGISTRY_URL).",
    )
    include_text: bool = Field(False, description="Copy the input text (as far as it was scored) into each output event.")
    copy_headers: str = Field(
        "*",
        description="Input headers copied to the output: comma-separated names or glob patterns; empty: none. "
        "The worker's own namespaces (sentiment.*, __sentiment.*, __connect.*) are never copied.",
    )
    drop_headers: str = Field("", description="Input headers never copied (names or glob patterns; wins over COPY_HEADERS).")
    output_schema_version: SchemaVersion = Field(
        SchemaVersion.v2,
        description="2: any head (schemas/sentiment-output.v2.json); 1: the version-1 event, single-label models only.",
    )
    multi_label_threshold: float = Field(
        0.5, ge=0, le=1, description="Multi-label models: a label applies (output labels) from this probability on."
    )

    # --- Schema Registry -------------------------------------------------------
    schema_registry_url: Optional[str] = Field(
        None,
        description="Base URL of a Confluent-compatible Schema Registry API (e.g. http://registry:8081, or "
        "Apicurio's .../apis/ccompat/v7); needed by the json_schema and avro formats.",
    )
    schema_registry_username: Optional[str] = Field(None, description="Schema Registry basic-auth user name.")
    schema_registry_password: Optional[SecretStr] = Field(
        None, description="Schema Registry basic-auth password (prefer SCHEMA_REGISTRY_PASSWORD_FILE)."
    )
    schema_registry_password_file: Optional[Path] = Field(
        None, description="File holding the Schema Registry basic-auth password."
    )
    subject_name_strategy: SubjectNameStrategy = Field(
        SubjectNameStrategy.topic,
        description="Subject of the output schema: topic (<OUTPUT_TOPIC>-value), record (the record's full "
        "name) or topic_record (<OUTPUT_TOPIC>-<record full name>).",
    )
    schema_registry_auto_register: bool = Field(
        True,
        description="Register the output schema at start; false: it must already be registered under its "
        "subject (start fails otherwise).",
    )
    schema_registry_timeout_s: float = Field(
        10.0, gt=0, description="Timeout of one Schema Registry request, in seconds."
    )

    # --- Batching --------------------------------------------------------------
    batch_max_size: int = Field(64, ge=1, description="Most events gathered into one batch.")
    batch_max_wait_ms: int = Field(
        50, ge=1, description="Longest wait for a batch to fill before it is scored anyway."
    )
    latency_target_ms: Optional[int] = Field(
        None,
        ge=1,
        description="p99 time from fetch to stored output to aim for: the batch size and wait are then "
        "chosen within BATCH_MAX_SIZE and BATCH_MAX_WAIT_MS, and follow the rate and the texts, for the "
        "most throughput that meets it; unset: the fixed size and wait.",
    )
    max_batch_tokens: int = Field(
        16384,
        ge=1,
        description="Padded-token budget (rows x longest row) of one model call; "
        "a batch is cut into model calls that fit it.",
    )

    # --- Model -----------------------------------------------------------------
    model: str = Field(
        DEFAULT_MODEL, description="Hugging Face hub id or local directory of a sequence classifier."
    )
    model_revision: Optional[str] = Field(
        None, description="Hub revision (branch, tag or commit) to pin; ignored for local paths."
    )
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
    precision: Precision = Field(Precision.auto, description="auto (fp16 on CUDA, else fp32), fp32, fp16 (CUDA), bf16, int8 (CPU).")
    max_length: int = Field(
        512, ge=8, description="Token limit per text; longer texts are truncated (and flagged)."
    )
    torch_threads: Optional[int] = Field(
        None, ge=1, description="CPU threads for inference; default: the cores this process may use."
    )
    attention: Attention = Field(Attention.auto, description="Attention kernel: auto, sdpa or eager.")
    tokenizer_threads: int = Field(
        1,
        ge=1,
        description="Threads of the Rust tokenizer per batch. 1 leaves the cores to the model (CPU hosts); "
        "on a GPU host the tokenizer is the limit: give it the cores.",
    )
    allocator: Allocator = Field(
        Allocator.auto,
        description="Memory allocator of `run`: jemalloc (preloaded by re-executing the worker), system "
        "(glibc, tuned for flat RSS; slower inference), auto = jemalloc where libjemalloc.so.2 is installed.",
    )
    worker_processes: int = Field(
        1,
        ge=1,
        description="Worker processes in this container (group members sharing its device); "
        "they use WEB_PORT+1..N on 127.0.0.1, the parent serves WEB_PORT.",
    )
    torch_compile: bool = Field(False, description="Compile the model with torch.compile (slower start).")
    compile_mode: CompileMode = Field(
        CompileMode.default,
        description="torch.compile mode with TORCH_COMPILE=true: default, or reduce-overhead (CUDA graphs: "
        "call shapes rounded up to a short series so each is captured once).",
    )
    runtime: Runtime = Field(
        Runtime.torch,
        description="What runs the model: torch, onnxruntime (extra onnx; exported once and cached, torch where "
        "it can't run the model) or auto (both timed at start, the faster kept).",
    )
    long_text: LongText = Field(
        LongText.truncate, description="truncate: score the first MAX_LENGTH tokens; windows: average overlapping windows."
    )
    window_stride: int = Field(
        128, ge=1, description="Tokens shared by consecutive windows when LONG_TEXT=windows."
    )

    # --- Operations ------------------------------------------------------------
    web_enabled: bool = Field(True, description="Serve /health, /ready and /metrics on WEB_PORT.")
    web_port: int = Field(6066, ge=1, le=65535, description="Port of the worker's web endpoints.")
    web_host: str = Field("0.0.0.0", description="Address the web endpoints bind to.")
    web_builtin_pages: bool = Field(
        False,
        description="Also serve Faust's own pages (/router, /table, /graph, statistics): they show host names "
        "and assignments. Off: only /health, /ready and /metrics.",
    )
    data_dir: Path = Field(
        Path(os.environ.get("TMPDIR", "/tmp")) / "sentiment-worker",
        description="Scratch directory for Faust's local state.",
    )
    log_level: LogLevel = Field(LogLevel.info, description="debug, info, warning or error.")
    log_format: LogFormat = Field(LogFormat.auto, description="auto, json or console.")
    tracing: bool = Field(
        False,
        description="Export OpenTelemetry traces (extra otel), configured by the standard OTEL_* variables: "
        "a span per batch stage, linked to each input's trace; traceparent written on outputs.",
    )
    stats_interval_s: float = Field(
        30.0, gt=0, description="How often the throughput summary is logged at info."
    )
    allow_env: str = Field(
        "",
        description="Environment variables that look like a misspelt setting but are meant for something else "
        "(comma-separated names): the start refuses such a variable otherwise.",
    )
    shutdown_timeout_s: float = Field(
        25.0,
        ge=5,
        description="The longest a shutdown takes (SIGTERM, a crash, a failed start), whatever the broker does: "
        "in-flight batches get most of it, then the process ends. Keep it below the orchestrator's grace period "
        "(Kubernetes: terminationGracePeriodSeconds, 30 s by default).",
    )

    @field_validator("log_level", "device", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("needs at least one host:port")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return ",".join(servers)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        base, _, index = value.partition(":")
        if base not in {"auto", "cpu", "cuda", "mps"} or (index and not (base == "cuda" and index.isdigit())):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("start_from")
    @classmethod
    def _check_start_from(cls, value: Optional[str]) -> Optional[str]:
        return _position(value, "start", ("beginning", "end", "time"),
                         "earliest, latest, an ISO-8601 time with a zone (2026-12-01T00:00:00Z) or @EPOCH_MS")

    @field_validator("run_until")
    @classmethod
    def _check_run_until(cls, value: Optional[str]) -> Optional[str]:
        import time

        from worker.kafka.positions import parse_start

        value = _position(value, "stop", ("end", "time"),
                          "end, a past ISO-8601 time with a zone (2026-12-01T00:00:00Z) or @EPOCH_MS")
        if value is not None and value.lower() in ("latest", "newest"):
            raise ValueError(f"{value!r} is not a stop: use end")
        if value is not None and parse_start(value).value > time.time() * 1000:
            raise ValueError(f"{value!r} is in the future: a bounded run stops at records already written")
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _check_registry_url(cls, value: Optional[str]) -> Optional[str]:
        if value is None or not value.strip():
            return None
        from urllib.parse import urlsplit

        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("put credentials in SCHEMA_REGISTRY_USERNAME and SCHEMA_REGISTRY_PASSWORD_FILE, not the URL")
        return value

    @model_validator(mode="after")
    def _check_topic_names(self) -> "Settings":
        if len({self.input_topic, self.output_topic, self.dead_letter_topic_name}) < 3:
            raise ValueError("input, output and dead-letter topics must all differ")
        return self

    @model_validator(mode="after")
    def _check_secret_files(self) -> "Settings":
        for name in ("sasl_password_file", "schema_registry_password_file", "oauth_client_secret_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name.upper()} {path} is not a readable file")
        return self

    @model_validator(mode="after")
    def _check_sasl(self) -> "Settings":
        if not self.security_protocol.value.startswith("SASL"):
            return self
        protocol = f"SECURITY_PROTOCOL={self.security_protocol.value}"
        if self.sasl_mechanism is SaslMechanism.OAUTHBEARER:
            has_secret = self.oauth_client_secret is not None or self.oauth_client_secret_file is not None
            if not (self.oauth_token_endpoint_url and self.oauth_client_id and has_secret):
                raise ValueError(
                    f"{protocol} with SASL_MECHANISM=OAUTHBEARER needs OAUTH_TOKEN_ENDPOINT_URL, OAUTH_CLIENT_ID "
                    "and OAUTH_CLIENT_SECRET_FILE (or OAUTH_CLIENT_SECRET)"
                )
        elif not self.sasl_username:
            raise ValueError(f"{protocol} needs SASL_USERNAME")
        return self

    @model_validator(mode="after")
    def _check_transaction_timeout(self) -> "Settings":
        if (
            self.processing_guarantee is Guarantee.exactly_once
            and self.kafka_request_timeout_s * 1000 >= self.transaction_timeout_ms
        ):
            raise ValueError(
                f"TRANSACTION_TIMEOUT_MS ({self.transaction_timeout_ms}) must exceed KAFKA_REQUEST_TIMEOUT_S "
                f"({self.kafka_request_timeout_s:g} s): a transaction is given up before the broker aborts it"
            )
        return self

    @model_validator(mode="after")
    def _check_registry(self) -> "Settings":
        framed = [
            f"{name}={fmt.value}"
            for name, fmt in (("INPUT_FORMAT", self.input_format), ("OUTPUT_FORMAT", self.output_format))
            if fmt.value in ("json_schema", "avro")
        ]
        if framed and self.schema_registry_url is None:
            raise ValueError(f"{' and '.join(framed)} needs SCHEMA_REGISTRY_URL")
        has_password = self.schema_registry_password is not None or self.schema_registry_password_file is not None
        if self.schema_registry_username and not has_password:
            raise ValueError("SCHEMA_REGISTRY_USERNAME needs SCHEMA_REGISTRY_PASSWORD_FILE (or SCHEMA_REGISTRY_PASSWORD)")
        if has_password and not self.schema_registry_username:
            raise ValueError("a Schema Registry password needs SCHEMA_REGISTRY_USERNAME")
        return self

    def schema_registry_password_value(self) -> Optional[str]:
        """The password from SCHEMA_REGISTRY_PASSWORD_FILE or SCHEMA_REGISTRY_PASSWORD; never logged."""
        return secret(self.schema_registry_password, self.schema_registry_password_file)

    @property
    def bootstrap_list(self) -> list[str]:
        return self.kafka_bootstrap_servers.split(",")

    @property
    def dead_letter_topic_name(self) -> str:
        return self.dead_letter_topic or f"{self.input_topic}-dlt"

    def sasl_password_value(self) -> Optional[str]:
        """The password from SASL_PASSWORD_FILE or SASL_PASSWORD; never logged."""
        return secret(self.sasl_password, self.sasl_password_file)

    def oauth_client_secret_value(self) -> Optional[str]:
        """The client secret from OAUTH_CLIENT_SECRET_FILE or OAUTH_CLIENT_SECRET; never logged."""
        return secret(self.oauth_client_secret, self.oauth_client_secret_file)

    def as_env(self) -> dict[str, str]:
        """These settings as environment variables (for child processes; holds secrets: never log it)."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, Enum):
                value = value.value
            env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    def summary(self) -> dict[str, Any]:
        """What is safe to log at start: secrets are masked by SecretStr."""
        return self.model_dump(mode="json")


def _position(value: Optional[str], what: str, kinds: tuple[str, ...], wanted: str) -> Optional[str]:
    """START_FROM / RUN_UNTIL: a position of one of ``kinds``; a time must say its zone."""
    if value is None or not value.strip():
        return None
    from datetime import datetime

    from worker.kafka.positions import parse_start

    value = value.strip()
    try:
        position = parse_start(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a {what}: use {wanted}") from None
    if position.kind not in kinds:
        raise ValueError(f"{value!r} is not a {what}: use {wanted}")
    if position.kind == "time" and not value.lower().startswith(("@", "s@")) and datetime.fromisoformat(value).tzinfo is None:
        raise ValueError(f"{value!r} has no time zone: add Z or an offset such as +01:00")
    return value


# Variables of other software that look like ours (OpenSSL's CA bundle looks like SSL_CERTFILE).
KNOWN_FOREIGN_ENV = frozenset({"SSL_CERT_FILE", "SSL_CERT_DIR"})
MIN_FUZZY_LENGTH = 6  # shorter names (MODE, PORT) are too close to everything to judge


def _edits(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of a and b, or limit + 1 once it is certain to exceed limit."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def resembled_setting(name: str) -> Optional[str]:
    """The setting an environment variable's name looks like a misspelling of, if any.

    Close means a few edits away (1 for names under 10 characters, 2 otherwise) or the
    same words in another order (MAX_BATCH_SIZE for BATCH_MAX_SIZE). An exact name, in
    any case, is the setting itself.
    """
    upper = name.upper()
    settings = [field.upper() for field in Settings.model_fields]
    if upper in settings or upper in KNOWN_FOREIGN_ENV or len(upper) < MIN_FUZZY_LENGTH:
        return None
    words = sorted(upper.split("_"))
    for setting in settings:
        if len(words) > 1 and sorted(setting.split("_")) == words:
            return setting
    for setting in settings:
        limit = 1 if len(setting) < 10 else 2
        if _edits(upper, setting, limit) <= limit:
            return setting
    return None


def misspelt_settings(environ: dict[str, str], allowed: str = "") -> list[tuple[str, str]]:
    """(variable, the setting it resembles) for each variable that looks like a misspelt setting.

    A misspelt setting is otherwise ignored without a word (BATCH_MAX_SZE=8 leaves the batch
    size at its default). ``allowed``: ALLOW_ENV, the names that are meant for something else.
    """
    allow = {a.strip().upper() for a in allowed.split(",") if a.strip()}
    found = []
    for name in sorted(environ):
        if name.upper() in allow or not name.replace("_", "").isalnum():
            continue
        setting = resembled_setting(name)
        if setting is not None:
            found.append((name, setting))
    return found
