"""Schema Registry serde: framed inputs into :class:`InputRecord`, outputs into framed Avro or JSON.

Input (INPUT_FORMAT=json_schema or avro): decoding runs synchronously on the
event loop, batch by batch, so the writers' schemas are fetched first:
:meth:`RegistryDecoder.prepare` collects the batch's schema ids that aren't
known yet and fetches them (retrying while the registry is away: records are
never dead-lettered because the registry was down), then
:meth:`RegistryDecoder.decode` decodes one value without any I/O. A value that
isn't framed, names a schema the registry doesn't have, or doesn't decode
raises :class:`DecodeError` with a stable reason, like any other bad record.

Output (OUTPUT_FORMAT=json_schema or avro): the output schema (schemas/, the
source of truth) is registered once at start (or only looked up, with
SCHEMA_REGISTRY_AUTO_REGISTER=false); :class:`OutputSerializer` then frames
every output with its id, without calling the registry again.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import orjson

from worker.ops import logs
from worker.pipeline.codec import DecodeError, InputRecord, decode, encode_input, from_document
from worker.registry.client import (
    AVRO,
    JSON,
    IncompatibleSchema,
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
    SchemaNotFound,
)
from worker.registry.wire import HEADER_SIZE, header, record_name, schema_id_of, subject_name
from worker.settings import InputFormat, OutputFormat, Settings, SubjectNameStrategy

log = logs.get_logger(__name__)

# The contract (schemas/ of the repository); an installed package is told where its copy
# lies (the images set SENTIMENT_SCHEMAS_DIR), since schemas/ is no part of the wheel.
SCHEMAS = Path(os.environ.get("SENTIMENT_SCHEMAS_DIR") or Path(__file__).resolve().parents[2] / "schemas")
INPUT_SCHEMAS = {InputFormat.json_schema: "sentiment-input.v1.json", InputFormat.avro: "sentiment-input.v1.avsc"}
OUTPUT_SCHEMAS = {OutputFormat.json_schema: "sentiment-output.v2.json", OutputFormat.avro: "sentiment-output.v2.avsc"}
SCHEMA_TYPES = {"json_schema": JSON, "avro": AVRO}
UNKNOWN_RETRY_S = 300.0  # a schema id the registry didn't have is asked for again after this long
BACKOFF_MAX_S = 30.0


class RegistrySetupError(RuntimeError):
    """The registry can't be used as configured; one line an operator can act on."""


def fastavro_module() -> Any:
    try:
        import fastavro
    except ImportError:
        raise RegistrySetupError(
            "the avro format needs fastavro: install the registry extra (pip install 'sentiment-worker[registry]')"
        ) from None
    return fastavro


def schema_text(name: str) -> str:
    path = SCHEMAS / name
    try:
        return path.read_text()
    except OSError as exc:
        raise RegistrySetupError(f"schema file {path} can't be read: {exc.strerror}") from None


def client_from_settings(settings: Settings) -> RegistryClient:
    assert settings.schema_registry_url is not None
    return RegistryClient(
        settings.schema_registry_url,
        username=settings.schema_registry_username,
        password=settings.schema_registry_password_value(),
        timeout_s=settings.schema_registry_timeout_s,
    )


# ----------------------------------------------------------------------------- Avro documents


def avro_document(doc: dict[str, Any]) -> dict[str, Any]:
    """An output or input document in its Avro shape: metadata (any JSON object) travels as JSON text."""
    metadata = doc.get("metadata")
    if metadata is None:
        return doc
    return {**doc, "metadata": orjson.dumps(metadata).decode()}


def _input_from_avro(datum: Any) -> InputRecord:
    if not isinstance(datum, dict):
        raise DecodeError("not_object", f"the Avro value is {type(datum).__name__}, not a record")
    metadata = datum.get("metadata")
    if isinstance(metadata, str):  # our .avsc: the JSON object as text
        try:
            metadata = orjson.loads(metadata)
        except orjson.JSONDecodeError:
            raise DecodeError("invalid_metadata", '"metadata" is not JSON text') from None
        if not isinstance(metadata, dict):
            raise DecodeError("invalid_metadata", f'"metadata" is JSON {type(metadata).__name__}, not an object')
        datum = {**datum, "metadata": metadata}
    # an Avro map (a writer schema of its own) arrives as a dict and passes as it is
    return from_document(datum)


# ----------------------------------------------------------------------------- input


@dataclass(frozen=True, slots=True)
class _Writer:
    schema_id: int
    parsed: Any  # the fastavro schema (avro) or None (json_schema)


@dataclass(frozen=True, slots=True)
class _Refused:
    error: DecodeError
    until: float  # monotonic time after which the id is asked for again


class RegistryDecoder:
    """Decodes framed input values; ``prepare`` a batch's values before ``decode`` touches them."""

    def __init__(
        self,
        client: RegistryClient,
        fmt: InputFormat,
        *,
        retry_unknown_s: float = UNKNOWN_RETRY_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        if fmt.value not in SCHEMA_TYPES:
            raise ValueError(f"INPUT_FORMAT={fmt.value} is not a registry format")
        self._client = client
        self._format = fmt
        self._type = SCHEMA_TYPES[fmt.value]
        self._fastavro = fastavro_module() if fmt is InputFormat.avro else None
        self._writers: dict[int, Union[_Writer, _Refused]] = {}
        self._retry_unknown_s = retry_unknown_s
        self._backoff_max_s = backoff_max_s

    async def prepare(self, values: Iterable[Optional[bytes]]) -> None:
        """Fetch the schemas of these values that aren't known yet; waits (retrying) while the registry is away."""
        now = time.monotonic()
        wanted = set()
        for value in values:
            schema_id = schema_id_of(value)
            if schema_id is None:
                continue
            known = self._writers.get(schema_id)
            if known is None or (isinstance(known, _Refused) and known.until <= now):
                wanted.add(schema_id)
        if wanted:
            await asyncio.gather(*(self._fetch(schema_id) for schema_id in sorted(wanted)))

    async def _fetch(self, schema_id: int) -> None:
        delay = 0.5
        while True:
            try:
                schema = await self._client.schema_by_id(schema_id)
                break
            except SchemaNotFound:
                log.warning("registry.unknown_schema", schema_id=schema_id)
                self._refuse(schema_id, "unknown_schema", f"the registry has no schema with id {schema_id}")
                return
            except RegistryError as exc:  # unreachable, 5xx, 401/403...: the records wait, none is lost
                log.warning("registry.unavailable", error=str(exc), schema_id=schema_id, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)
        if schema.schema_type != self._type:
            self._refuse(
                schema_id,
                "schema_unsupported",
                f"schema {schema_id} is a {schema.schema_type} schema, not {self._type} (INPUT_FORMAT={self._format.value})",
            )
            return
        if schema.references:
            self._refuse(schema_id, "schema_unsupported", f"schema {schema_id} has references, which are not supported")
            return
        parsed = None
        if self._fastavro is not None:
            try:
                parsed = self._fastavro.parse_schema(orjson.loads(schema.text))
            except Exception as exc:  # noqa: BLE001 - whatever the registry holds, a bad schema is a bad record
                self._refuse(schema_id, "schema_unsupported", f"schema {schema_id} can't be parsed: {exc}")
                return
        self._writers[schema_id] = _Writer(schema_id, parsed)
        log.info("registry.schema_fetched", schema_id=schema_id, type=schema.schema_type)

    def _refuse(self, schema_id: int, reason: str, message: str) -> None:
        self._writers[schema_id] = _Refused(DecodeError(reason, message), time.monotonic() + self._retry_unknown_s)

    def decode(self, value: Optional[bytes]) -> InputRecord:
        """One framed value into an InputRecord; raises DecodeError only. No I/O: ``prepare`` came first."""
        if value is None:
            raise DecodeError("empty_value", "record has no value (tombstone)")
        schema_id = schema_id_of(value)
        if schema_id is None:
            raise DecodeError(
                "not_registry_framed",
                f"value is not in the Schema Registry wire format (magic byte 0 and a 4-byte schema id; "
                f"{len(value)} bytes)",
            )
        writer = self._writers.get(schema_id)
        if writer is None:
            raise DecodeError("unknown_schema", f"schema {schema_id} was not fetched")
        if isinstance(writer, _Refused):
            raise writer.error
        if writer.parsed is None:  # json_schema: the payload is checked against the input contract, as with json
            return decode(value[HEADER_SIZE:], InputFormat.json)
        buffer = io.BytesIO(value)
        buffer.seek(HEADER_SIZE)
        try:
            datum = self._fastavro.schemaless_reader(buffer, writer.parsed, None)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on bad bytes
            raise DecodeError("avro_invalid", f"value does not decode with schema {schema_id}: {type(exc).__name__}") from None
        if buffer.tell() != len(value):
            raise DecodeError("avro_invalid", f"{len(value) - buffer.tell()} bytes left after the record of schema {schema_id}")
        return _input_from_avro(datum)


# ----------------------------------------------------------------------------- output


class OutputSerializer:
    """Output documents into framed values, with the id the output schema got at start."""

    def __init__(self, fmt: OutputFormat, schema_id: int, subject: str, text: str) -> None:
        self.format = fmt
        self.schema_id = schema_id
        self.subject = subject
        self._header = header(schema_id)
        self._fastavro = None
        self._parsed = None
        if fmt is OutputFormat.avro:
            self._fastavro = fastavro_module()
            self._parsed = self._fastavro.parse_schema(orjson.loads(text))

    def __call__(self, doc: dict[str, Any]) -> bytes:
        if self._fastavro is None:
            return self._header + orjson.dumps(doc)
        buffer = io.BytesIO()
        buffer.write(self._header)
        try:
            self._fastavro.schemaless_writer(buffer, self._parsed, avro_document(doc), strict_allow_default=True)
        except (TypeError, ValueError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. OverflowError: an int beyond Avro's long
            raise ValueError(f"{type(exc).__name__}: {exc}") from None
        return buffer.getvalue()


async def register_output_schema(client: RegistryClient, settings: Settings) -> OutputSerializer:
    """The output schema under its subject (registered, or looked up): the serializer that frames outputs with its id."""
    fmt = settings.output_format
    schema_type = SCHEMA_TYPES[fmt.value]
    text = schema_text(OUTPUT_SCHEMAS[fmt])
    strategy = settings.subject_name_strategy
    name = None if strategy is SubjectNameStrategy.topic else record_name(schema_type, text)
    subject = subject_name(strategy, settings.output_topic, name)
    try:
        if settings.schema_registry_auto_register:
            schema_id = await client.register(subject, text, schema_type)
        else:
            schema_id = await client.lookup(subject, text, schema_type)
    except IncompatibleSchema as exc:
        raise RegistrySetupError(
            f"the Schema Registry refuses the output schema under subject {subject!r} as incompatible: {exc}"
        ) from None
    except SchemaNotFound as exc:
        raise RegistrySetupError(
            f"the output schema is not registered under subject {subject!r} "
            f"(SCHEMA_REGISTRY_AUTO_REGISTER=false): {exc}"
        ) from None
    except RegistryUnavailable as exc:
        raise RegistrySetupError(f"the Schema Registry can't be reached: {exc}") from None
    except RegistryError as exc:
        raise RegistrySetupError(f"the Schema Registry refused the output schema under subject {subject!r}: {exc}") from None
    serializer = OutputSerializer(fmt, schema_id, subject, text)
    log.info("registry.output_schema", subject=subject, schema_id=schema_id, format=fmt.value,
             registered=settings.schema_registry_auto_register)
    return serializer


async def check_reachable(client: RegistryClient) -> None:
    """Input only: the registry answers (GET /subjects), so a wrong URL fails at start, not at the first record."""
    try:
        await client.subjects()
    except RegistryUnavailable as exc:
        raise RegistrySetupError(f"the Schema Registry can't be reached: {exc}") from None
    except RegistryError as exc:
        raise RegistrySetupError(f"the Schema Registry refused a request: {exc}") from None


# ----------------------------------------------------------------------------- wiring


@dataclass
class RegistrySerde:
    """What the worker gets when a registry format is configured."""

    client: RegistryClient
    decoder: Optional[RegistryDecoder]
    serializer: Optional[OutputSerializer]

    async def close(self) -> None:
        await self.client.close()


async def open_serde(settings: Settings) -> Optional[RegistrySerde]:
    """Connect to the registry for the configured formats (None when no format needs it); fails fast."""
    uses_input = settings.input_format.value in SCHEMA_TYPES
    uses_output = settings.output_format.value in SCHEMA_TYPES
    if not (uses_input or uses_output):
        return None
    if InputFormat.avro is settings.input_format or OutputFormat.avro is settings.output_format:
        fastavro_module()
    client = client_from_settings(settings)
    try:
        serializer = await register_output_schema(client, settings) if uses_output else None
        if uses_input and serializer is None:
            await check_reachable(client)
        decoder = RegistryDecoder(client, settings.input_format) if uses_input else None
    except BaseException:
        await client.close()
        raise
    return RegistrySerde(client, decoder, serializer)


# ----------------------------------------------------------------------------- producing framed inputs


class InputSerializer:
    """Input records into framed values (json_schema or avro), the input schema registered first.

    For producers of test or sample data (``sentiment-worker produce`` can use it);
    the subject follows the strategy for the input topic.
    """

    def __init__(self, client: RegistryClient, fmt: InputFormat, topic: str,
                 strategy: SubjectNameStrategy = SubjectNameStrategy.topic) -> None:
        if fmt.value not in SCHEMA_TYPES:
            raise ValueError(f"{fmt.value} is not a registry format")
        self._client = client
        self._format = fmt
        self._topic = topic
        self._strategy = strategy
        self._type = SCHEMA_TYPES[fmt.value]
        self._text = schema_text(INPUT_SCHEMAS[fmt])
        self._header: Optional[bytes] = None
        self._parsed: Any = None
        self.schema_id: Optional[int] = None
        self.subject: Optional[str] = None

    async def start(self) -> int:
        name = None if self._strategy is SubjectNameStrategy.topic else record_name(self._type, self._text)
        self.subject = subject_name(self._strategy, self._topic, name)
        self.schema_id = await self._client.register(self.subject, self._text, self._type)
        self._header = header(self.schema_id)
        if self._format is InputFormat.avro:
            self._parsed = fastavro_module().parse_schema(orjson.loads(self._text))
        return self.schema_id

    def encode(self, record: InputRecord) -> bytes:
        if self._header is None:
            raise RuntimeError("InputSerializer.start() first")
        if self._parsed is None:
            return self._header + encode_input(record)
        doc = avro_document({"text": record.text, "id": record.id, "metadata": record.metadata, "ts": record.ts})
        buffer = io.BytesIO()
        buffer.write(self._header)
        fastavro_module().schemaless_writer(buffer, self._parsed, doc, strict=True)
        return buffer.getvalue()
