"""Schema Registry serde against a real registry (Apicurio Registry via deploy/local/schema-registry) and broker.

The registry is started by this module's fixture. What the worker writes and reads is checked
with independent code: framing with ``struct``, Avro with fastavro, schemas fetched from the
registry's REST API with urllib; never with worker.registry itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from urllib.parse import quote
from pathlib import Path
from typing import Any, Optional

import fastavro
import jsonschema
import orjson
import pytest

from tests.conftest import REPO
from tests.kafka_helpers import consume_all, create_topic, free_port, produce
from worker.pipeline.codec import DecodeError, InputRecord, Source, encode_output, output_document
from worker.registry.client import IncompatibleSchema, RegistryClient, RegistryUnavailable, SchemaNotFound
from worker.registry.serde import (
    InputSerializer,
    OutputSerializer,
    RegistryDecoder,
    RegistrySetupError,
    open_serde,
)
from worker.registry.wire import frame, record_name, schema_id_of, subject_name
from worker.settings import InputFormat, OutputFormat, Settings, SubjectNameStrategy

SCRIPT = REPO / "deploy" / "local" / "schema-registry"
SCHEMAS = REPO / "schemas"
INPUT_JSON = json.loads((SCHEMAS / "sentiment-input.v1.json").read_text())
OUTPUT_JSON = json.loads((SCHEMAS / "sentiment-output.v2.json").read_text())
INPUT_AVSC = json.loads((SCHEMAS / "sentiment-input.v1.avsc").read_text())
OUTPUT_AVSC = json.loads((SCHEMAS / "sentiment-output.v2.avsc").read_text())
VALIDATOR = jsonschema.Draft202012Validator(OUTPUT_JSON, format_checker=jsonschema.FormatChecker())
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


# ----------------------------------------------------------------------------- an independent registry client


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real registry of this module's own (own data dir, free port); its Confluent-compatible base URL."""
    env = {**os.environ, "SCHEMA_REGISTRY_DATA_DIR": str(tmp_path_factory.mktemp("registry")), "SCHEMA_REGISTRY_PORT": "0"}
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        raise RuntimeError(f"the local Schema Registry did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def http(method: str, url: str, body: Optional[dict[str, Any]] = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": CONTENT_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def register(base: str, subject: str, schema: Any, schema_type: str = "AVRO") -> int:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    status, doc = http("POST", f"{base}/subjects/{quote(subject, safe='')}/versions", {"schema": text, "schemaType": schema_type})
    assert status == 200, doc
    return doc["id"]


def fetch_schema(base: str, schema_id: int) -> dict[str, Any]:
    status, doc = http("GET", f"{base}/schemas/ids/{schema_id}")
    assert status == 200, doc
    return doc


def subjects(base: str) -> list[str]:
    status, doc = http("GET", f"{base}/subjects")
    assert status == 200, doc
    return doc


def avro_frame(schema_id: int, schema: Any, datum: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    return out.getvalue()


def unframe(value: bytes) -> tuple[int, bytes]:
    magic, schema_id = struct.unpack(">bI", value[:5])
    assert magic == 0
    return schema_id, value[5:]


class IndependentReader:
    """Decodes framed outputs the way a downstream consumer would: id -> schema from the registry."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.schemas: dict[int, dict[str, Any]] = {}

    def read(self, value: bytes) -> tuple[int, dict[str, Any]]:
        schema_id, payload = unframe(value)
        if schema_id not in self.schemas:
            self.schemas[schema_id] = fetch_schema(self.base, schema_id)
        schema = self.schemas[schema_id]
        if schema.get("schemaType", "AVRO") == "JSON":
            return schema_id, json.loads(payload)
        reader = fastavro.parse_schema(json.loads(schema["schema"]))
        buffer = io.BytesIO(payload)
        doc = fastavro.schemaless_reader(buffer, reader, None)
        assert buffer.tell() == len(payload)
        return schema_id, doc


def avro_as_json(doc: dict[str, Any]) -> dict[str, Any]:
    """An Avro output as the JSON output it stands for: nulls of absent fields dropped, metadata parsed."""
    out = {k: v for k, v in doc.items() if v is not None or k in ("metadata",)}
    if out.get("metadata") is not None:
        out["metadata"] = json.loads(out["metadata"])
    return out


# ----------------------------------------------------------------------------- the contract


def _nullable(avro_type: Any) -> bool:
    return isinstance(avro_type, list) and "null" in avro_type


def _non_null(avro_type: Any) -> list[Any]:
    return [t for t in avro_type if t != "null"] if isinstance(avro_type, list) else [avro_type]


def _json_types(prop: dict[str, Any]) -> set[str]:
    if "enum" in prop:
        return {"string"} if all(isinstance(v, str) for v in prop["enum"]) else {"?"}
    types = prop.get("type")
    return set(types) if isinstance(types, list) else {types}


def _assert_field_matches(path: str, prop: dict[str, Any], required: bool, field: dict[str, Any]) -> None:
    json_types = _json_types(prop)
    avro_types = _non_null(field["type"])
    may_be_missing_or_null = not required or "null" in json_types
    assert _nullable(field["type"]) == may_be_missing_or_null, f"{path}: nullable in one schema only"
    if not required:
        assert "default" in field and field["default"] is None, f"{path}: optional in JSON, needs default null in Avro"
    json_types.discard("null")
    if path.endswith(".metadata"):  # any JSON object: JSON text in Avro (README, "Schema Registry")
        assert json_types == {"object"} and avro_types == ["string"], path
        return
    expected: list[Any] = []
    for t in sorted(json_types):
        if t == "string":
            expected.append("string")
        elif t == "number":
            expected.append("double")
        elif t == "integer":
            expected.append("long")
        elif t == "boolean":
            expected.append("boolean")
    simple = [t for t in avro_types if isinstance(t, str)]
    if json_types <= {"string", "number", "integer", "boolean"}:
        if json_types == {"integer"} and simple == ["int"]:  # a partition number fits an int
            return
        if json_types == {"string", "number"}:  # ts: a string or any JSON number
            assert avro_types == ["string", "long", "double"], path
            return
        assert sorted(simple) == sorted(expected) and len(simple) == len(avro_types), f"{path}: {avro_types} != {expected}"
        return
    assert json_types in ({"object"}, {"array"}), f"{path}: {json_types}"
    (avro,) = avro_types
    if json_types == {"array"}:
        assert avro["type"] == "array" and prop["items"]["type"] == "string" and avro["items"] == "string", path
    elif "properties" in prop:
        assert avro["type"] == "record", path
        _assert_record_matches(path, prop, avro)
    else:  # a map: scores
        assert avro["type"] == "map" and prop["additionalProperties"]["type"] == "number" and avro["values"] == "double", path


def _assert_record_matches(path: str, json_schema: dict[str, Any], avro: dict[str, Any]) -> None:
    props = json_schema["properties"]
    fields = {f["name"]: f for f in avro["fields"]}
    assert list(props) == list(fields), f"{path}: fields differ: {list(props)} vs {list(fields)}"
    required = set(json_schema.get("required", ()))
    for name, prop in props.items():
        _assert_field_matches(f"{path}.{name}", prop, name in required, fields[name])


@pytest.mark.parametrize("json_schema, avsc", [(INPUT_JSON, INPUT_AVSC), (OUTPUT_JSON, OUTPUT_AVSC)], ids=["input", "output"])
def test_avro_schemas_agree_with_the_json_schemas_field_by_field(json_schema: dict, avsc: dict) -> None:
    fastavro.parse_schema(avsc)
    _assert_record_matches(avsc["name"], json_schema, avsc)


def test_wire_format_and_subject_strategies() -> None:
    assert frame(7, b"xy") == b"\x00\x00\x00\x00\x07xy" == struct.pack(">bI", 0, 7) + b"xy"
    assert schema_id_of(struct.pack(">bI", 0, 2**32 - 1) + b"") == 2**32 - 1
    assert schema_id_of(b"\x00\x00\x00\x01") is None  # too short
    assert schema_id_of(b'{"text": "x"}') is None  # plain JSON: no magic byte
    assert schema_id_of(None) is None
    avro_name = record_name("AVRO", json.dumps(OUTPUT_AVSC))
    assert avro_name == "sentiment_worker.SentimentOutput"
    assert record_name("JSON", json.dumps(OUTPUT_JSON)) == OUTPUT_JSON["title"]  # as Confluent's JSON Schema serde
    assert subject_name(SubjectNameStrategy.topic, "out") == "out-value"
    assert subject_name(SubjectNameStrategy.topic, "out", is_key=True) == "out-key"
    assert subject_name(SubjectNameStrategy.record, "out", avro_name) == "sentiment_worker.SentimentOutput"
    assert subject_name(SubjectNameStrategy.topic_record, "out", avro_name) == "out-sentiment_worker.SentimentOutput"


def test_settings_need_a_registry_for_framed_formats(tmp_path: Path) -> None:
    for kwargs in ({"input_format": "avro"}, {"output_format": "json_schema"}):
        with pytest.raises(ValueError, match="needs SCHEMA_REGISTRY_URL"):
            Settings(**kwargs)
    with pytest.raises(ValueError, match="not the URL"):
        Settings(schema_registry_url="http://user:secret@registry:8081")
    with pytest.raises(ValueError, match="needs SCHEMA_REGISTRY_PASSWORD_FILE"):
        Settings(schema_registry_url="http://registry:8081", schema_registry_username="u")
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    settings = Settings(output_format="avro", schema_registry_url="http://registry:8081/", schema_registry_username="u",
                        schema_registry_password_file=str(secret))
    assert settings.schema_registry_url == "http://registry:8081"
    assert settings.schema_registry_password_value() == "s3cret"
    assert "s3cret" not in json.dumps(settings.summary()) and "s3cret" not in repr(RegistryClient("http://r", username="u", password="s3cret"))
    inline = Settings(output_format="avro", schema_registry_url="http://registry:8081", schema_registry_username="u",
                      schema_registry_password="s3cret")  # the one way the secret is a settings value
    assert inline.schema_registry_password_value() == "s3cret" and "s3cret" not in json.dumps(inline.summary())


HEADS = {
    "single_label": {"label": "POSITIVE", "score": 0.75, "scores": {"NEGATIVE": 0.25, "POSITIVE": 0.75}},
    "multi_label": {"label": "joy", "score": 0.9, "scores": {"joy": 0.9, "anger": 0.1}, "labels": ["joy"]},
    "regression": {"value": 3.25},
}


@pytest.mark.parametrize("head, version, include_text, record", [
    ("single_label", "2", False, InputRecord("a text", id="x", metadata={"a": [1, {"b": None}], "c": "ü"}, ts=17)),
    ("single_label", "1", True, InputRecord("a text", ts="2026-01-01T00:00:00Z")),
    ("multi_label", "2", True, InputRecord("a text", metadata={}, ts=1.5)),
    ("regression", "2", False, InputRecord("a text", id="r")),
])
def test_avro_and_json_schema_outputs_carry_the_fields_of_the_json_output(head, version, include_text, record) -> None:
    source = Source("in", 3, 41, 1_700_000_000_000)
    kwargs = dict(truncated=False, model={"name": "m", "revision": None}, processed_at="2026-01-01T00:00:00.000+00:00",
                  head=head, version=version, include_text=include_text, **HEADS[head])
    plain = orjson.loads(encode_output(record, source, **kwargs))
    VALIDATOR.validate(plain)
    doc = output_document(record, source, **kwargs)
    avro = OutputSerializer(OutputFormat.avro, 12, "out-value", json.dumps(OUTPUT_AVSC))(doc)
    schema_id, payload = unframe(avro)
    decoded = fastavro.schemaless_reader(io.BytesIO(payload), fastavro.parse_schema(OUTPUT_AVSC), None)
    assert schema_id == 12 and avro_as_json(decoded) == plain
    framed_json = OutputSerializer(OutputFormat.json_schema, 13, "out-value", json.dumps(OUTPUT_JSON))(doc)
    assert unframe(framed_json) == (13, orjson.dumps(plain))


def test_avro_output_of_a_value_avro_cannot_hold_is_a_value_error() -> None:
    serializer = OutputSerializer(OutputFormat.avro, 1, "s", json.dumps(OUTPUT_AVSC))
    doc = output_document(InputRecord("t"), Source("in", 0, 0, None), truncated=False,
                          model={"name": "m", "revision": 5}, processed_at="x", **HEADS["single_label"])
    with pytest.raises(ValueError):  # OutputBuilder turns it into an encode_failed dead letter
        serializer(doc)
    with pytest.raises(ValueError):  # a field the .avsc doesn't have is an error, never dropped silently
        serializer({**doc, "model": {"name": "m", "revision": None}, "extra": 1})


# ----------------------------------------------------------------------------- against the registry


async def test_client_registers_looks_up_and_fetches_by_id(registry: str) -> None:
    client = RegistryClient(registry)
    try:
        subject = f"in-{uuid.uuid4().hex[:8]}-value"
        text = json.dumps(INPUT_AVSC)
        schema_id = await client.register(subject, text, "AVRO")
        assert await RegistryClient(registry).register(subject, text, "AVRO") == schema_id  # idempotent, new client
        assert await RegistryClient(registry).lookup(subject, text, "AVRO") == schema_id
        fetched = await RegistryClient(registry).schema_by_id(schema_id)
        assert (fetched.schema_type, json.loads(fetched.text)) == ("AVRO", INPUT_AVSC)
        assert subject in subjects(registry)
        with pytest.raises(SchemaNotFound):
            await client.schema_by_id(987654)
        with pytest.raises(SchemaNotFound):
            await client.lookup(f"absent-{uuid.uuid4().hex[:8]}", text, "AVRO")
        json_id = await client.register(f"j-{uuid.uuid4().hex[:8]}-value", json.dumps(OUTPUT_JSON), "JSON")
        assert fetch_schema(registry, json_id)["schemaType"] == "JSON"
        # a compatibility rule that refuses the next version
        assert http("PUT", f"{registry}/config/{subject}", {"compatibility": "BACKWARD"})[0] == 200
        stricter = {**INPUT_AVSC, "fields": [*INPUT_AVSC["fields"], {"name": "lang", "type": "string"}]}
        with pytest.raises(IncompatibleSchema):
            await client.register(subject, json.dumps(stricter), "AVRO")
    finally:
        await client.close()
    dead = RegistryClient(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(RegistryUnavailable):
        await dead.schema_by_id(1)
    await dead.close()


async def test_input_serializer_registers_under_each_strategy(registry: str) -> None:
    client = RegistryClient(registry)
    topic = f"in-{uuid.uuid4().hex[:8]}"
    try:
        for strategy, subject in [
            (SubjectNameStrategy.topic, f"{topic}-value"),
            (SubjectNameStrategy.record, "sentiment_worker.SentimentInput"),
            (SubjectNameStrategy.topic_record, f"{topic}-sentiment_worker.SentimentInput"),
        ]:
            serializer = InputSerializer(client, InputFormat.avro, topic, strategy)
            schema_id = await serializer.start()
            assert serializer.subject == subject and subject in subjects(registry)
            status, doc = http("GET", f"{registry}/subjects/{quote(subject, safe='')}/versions/latest")
            assert status == 200 and doc["id"] == schema_id
            value = serializer.encode(InputRecord("hello", id="1", metadata={"k": [1]}, ts=5))
            assert unframe(value)[0] == schema_id
            datum = fastavro.schemaless_reader(io.BytesIO(value[5:]), fastavro.parse_schema(INPUT_AVSC), None)
            assert datum == {"text": "hello", "id": "1", "metadata": '{"k":[1]}', "ts": 5}
    finally:
        await client.close()


async def test_decoder_reads_independently_framed_records_and_names_what_it_cannot(registry: str) -> None:
    run_id = uuid.uuid4().hex[:8]
    avro_id = register(registry, f"a-{run_id}-value", INPUT_AVSC)
    # a producer's own schema: another record name, metadata as an Avro map, no id or ts
    own = {"type": "record", "name": "Review", "namespace": "shop", "fields": [
        {"name": "text", "type": "string"}, {"name": "stars", "type": "int"},
        {"name": "metadata", "type": {"type": "map", "values": "string"}}]}
    own_id = register(registry, f"shop.Review-{run_id}", own)
    json_id = register(registry, f"j-{run_id}-value", json.dumps(INPUT_JSON), "JSON")
    good = avro_frame(avro_id, INPUT_AVSC, {"text": "fine", "id": "a1", "metadata": '{"n": {"m": [1, 2]}}', "ts": 1.5})
    values = {
        "good": good,
        "own": avro_frame(own_id, own, {"text": "mine", "stars": 4, "metadata": {"shop": "x"}}),
        "plain_json": b'{"text": "not framed"}',
        "short": b"\x00\x00\x01",
        "unknown": struct.pack(">bI", 0, 999_999) + good[5:],
        "json_id": struct.pack(">bI", 0, json_id) + good[5:],
        "truncated": good[:-3],
        "trailing": good + b"\x00",
        "empty_text": avro_frame(avro_id, INPUT_AVSC, {"text": "  ", "id": None, "metadata": None, "ts": None}),
        "bad_metadata": avro_frame(avro_id, INPUT_AVSC, {"text": "t", "id": None, "metadata": "[1]", "ts": None}),
        "tombstone": None,
    }
    client = RegistryClient(registry)
    decoder = RegistryDecoder(client, InputFormat.avro)
    try:
        await decoder.prepare(list(values.values()))
        assert decoder.decode(values["good"]) == InputRecord("fine", id="a1", metadata={"n": {"m": [1, 2]}}, ts=1.5)
        assert decoder.decode(values["own"]) == InputRecord("mine", metadata={"shop": "x"})
        reasons = {}
        for name, value in values.items():
            if name in ("good", "own"):
                continue
            with pytest.raises(DecodeError) as err:
                decoder.decode(value)
            reasons[name] = err.value.reason
        assert reasons == {
            "plain_json": "not_registry_framed", "short": "not_registry_framed", "unknown": "unknown_schema",
            "json_id": "schema_unsupported", "truncated": "avro_invalid", "trailing": "avro_invalid",
            "empty_text": "text_empty", "bad_metadata": "invalid_metadata", "tombstone": "empty_value",
        }
        json_decoder = RegistryDecoder(client, InputFormat.json_schema)
        framed = struct.pack(">bI", 0, json_id) + orjson.dumps({"text": "j", "metadata": {"a": 1}})
        await json_decoder.prepare([framed, values["good"]])
        assert json_decoder.decode(framed) == InputRecord("j", metadata={"a": 1})
        with pytest.raises(DecodeError) as err:
            json_decoder.decode(values["good"])  # an Avro schema's id
        assert err.value.reason == "schema_unsupported"
    finally:
        await client.close()


async def test_decoder_waits_while_the_registry_is_away_instead_of_dead_lettering() -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}", timeout_s=1)
    decoder = RegistryDecoder(client, InputFormat.avro, backoff_max_s=0.2)
    value = struct.pack(">bI", 0, 1) + b"\x02x"
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(decoder.prepare([value]), 1.5)
        with pytest.raises(DecodeError) as err:
            decoder.decode(value)
        assert err.value.reason == "unknown_schema" and "not fetched" in str(err.value)  # never decoded as refused
    finally:
        await client.close()


async def test_open_serde_fails_fast_with_a_clear_message(registry: str) -> None:
    out = f"out-{uuid.uuid4().hex[:8]}"
    base = dict(output_topic=out, input_topic=f"in-{out}")
    with pytest.raises(RegistrySetupError, match="can't be reached"):
        await open_serde(Settings(**base, output_format="avro", schema_registry_url=f"http://127.0.0.1:{free_port()}",
                                  schema_registry_timeout_s=2))
    with pytest.raises(RegistrySetupError, match="not registered under subject"):
        await open_serde(Settings(**base, output_format="avro", schema_registry_url=registry,
                                  schema_registry_auto_register="false"))
    serde = await open_serde(Settings(**base, output_format="avro", schema_registry_url=registry,
                                      subject_name_strategy="record"))
    assert serde is not None and serde.decoder is None and serde.serializer.subject == "sentiment_worker.SentimentOutput"
    await serde.close()
    register(registry, f"{out}-value", incompatible_output_schema())
    assert http("PUT", f"{registry}/config/{out}-value", {"compatibility": "BACKWARD"})[0] == 200
    with pytest.raises(RegistrySetupError, match="incompatible"):
        await open_serde(Settings(**base, output_format="avro", schema_registry_url=registry))


async def test_basic_auth_credentials_are_sent_and_never_shown(registry: str, tmp_path: Path) -> None:
    """Apicurio's own auth needs an OIDC server: a test proxy in front of it checks HTTP basic auth instead."""
    import base64

    from aiohttp import ClientSession, web

    expected = "Basic " + base64.b64encode(b"worker:pa55-w0rd").decode()
    seen: list[Optional[str]] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error_code": 40101, "message": "Unauthorized"}, status=401)
        async with ClientSession() as session:
            async with session.request(request.method, registry + request.path_qs.split("/apis/ccompat/v7", 1)[1],
                                       data=await request.read(), headers={"Content-Type": CONTENT_TYPE}) as answer:
                return web.Response(body=await answer.read(), status=answer.status, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        secret = tmp_path / "password"
        secret.write_text("pa55-w0rd\n")
        url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
        out = f"out-{uuid.uuid4().hex[:8]}"
        serde = await open_serde(Settings(output_topic=out, output_format="avro", schema_registry_url=url,
                                          schema_registry_username="worker", schema_registry_password_file=str(secret)))
        assert serde is not None and f"{out}-value" in subjects(registry)
        await serde.close()
        assert seen and set(seen) == {expected}
        secret.write_text("wrong-pass\n")
        with pytest.raises(RegistrySetupError) as err:
            await open_serde(Settings(output_topic=out, output_format="avro", schema_registry_url=url,
                                      schema_registry_username="worker", schema_registry_password_file=str(secret)))
        assert "401" in str(err.value) and "wrong-pass" not in str(err.value) and "pa55" not in str(err.value)
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------------------- the worker, end to end


def incompatible_output_schema() -> dict[str, Any]:
    """An earlier version of the output subject that ours can't read (truncated was a string): BACKWARD refuses ours."""
    fields = [{**f, "type": "string"} if f["name"] == "truncated" else f for f in OUTPUT_AVSC["fields"]]
    return {**OUTPUT_AVSC, "fields": fields}


def _dlt_reasons(records: list[Any]) -> dict[int, str]:
    out = {}
    for r in records:
        headers = dict(r.headers)
        out[int(headers["__connect.errors.offset"])] = headers["__sentiment.errors.reason"].decode()
    return out


@pytest.mark.kafka
async def test_worker_avro_in_avro_out(worker_factory, bootstrap, topics, registry) -> None:
    await create_topic(bootstrap, topics["input_topic"], 1)
    input_id = register(registry, f"{topics['input_topic']}-value", INPUT_AVSC)
    texts = [f"text number {i} was great" for i in range(12)]
    values = [
        avro_frame(input_id, INPUT_AVSC, {"text": t, "id": f"e{i}", "metadata": json.dumps({"i": i}), "ts": i})
        for i, t in enumerate(texts)
    ]
    bad = [b'{"text": "plain json"}', struct.pack(">bI", 0, 888_888) + values[0][5:], values[1][:-4]]
    worker = worker_factory(**topics, input_format="avro", output_format="avro", schema_registry_url=registry,
                            include_text="true").wait_ready()
    subject = f"{topics['output_topic']}-value"
    assert subject in subjects(registry)  # registered at start
    status, latest = http("GET", f"{registry}/subjects/{subject}/versions/latest")
    assert status == 200 and json.loads(latest["schema"]) == OUTPUT_AVSC
    sent = await produce(bootstrap, topics["input_topic"], [(f"k{i}".encode(), v) for i, v in enumerate([*values, *bad])],
                         partition=0)
    received = await consume_all(bootstrap, topics["output_topic"], expected=len(texts))
    reader = IndependentReader(registry)
    docs = {}
    for r in received:
        schema_id, doc = reader.read(r.value)
        assert schema_id == latest["id"]
        plain = avro_as_json(doc)
        VALIDATOR.validate(plain)
        docs[plain["id"]] = plain
    assert sorted(docs) == sorted(f"e{i}" for i in range(len(texts)))
    for i, text in enumerate(texts):
        doc = docs[f"e{i}"]
        assert (doc["text"], doc["metadata"], doc["ts"], doc["source"]["offset"]) == (text, {"i": i}, i, sent[i].offset)
        assert doc["head"] == "single_label" and doc["label"] in doc["scores"]
    dead = await consume_all(bootstrap, f"{topics['input_topic']}-dlt", expected=len(bad))
    assert _dlt_reasons(dead) == {
        sent[len(texts)].offset: "not_registry_framed",
        sent[len(texts) + 1].offset: "unknown_schema",
        sent[len(texts) + 2].offset: "avro_invalid",
    }
    assert sorted(r.value for r in dead) == sorted(bad)  # original bytes, unchanged
    assert [e["schema_id"] for e in worker.events("registry.output_schema")] == [latest["id"]]


@pytest.mark.kafka
async def test_worker_json_schema_in_and_out_with_topic_record_subjects(worker_factory, bootstrap, topics, registry) -> None:
    await create_topic(bootstrap, topics["input_topic"], 1)
    input_id = register(registry, f"{topics['input_topic']}-{INPUT_JSON['title']}", json.dumps(INPUT_JSON), "JSON")
    docs = [{"text": f"json text {i}", "id": f"j{i}", "metadata": {"n": i}} for i in range(5)]
    values = [struct.pack(">bI", 0, input_id) + orjson.dumps(d) for d in docs]
    values.append(struct.pack(">bI", 0, input_id) + b"{not json")
    worker_factory(**topics, input_format="json_schema", output_format="json_schema", schema_registry_url=registry,
                   subject_name_strategy="topic_record").wait_ready()
    subject = f"{topics['output_topic']}-{OUTPUT_JSON['title']}"
    assert subject in subjects(registry)
    sent = await produce(bootstrap, topics["input_topic"], [(None, v) for v in values], partition=0)
    received = await consume_all(bootstrap, topics["output_topic"], expected=len(docs))
    reader = IndependentReader(registry)
    out = {}
    for r in received:
        schema_id, doc = reader.read(r.value)
        assert json.loads(reader.schemas[schema_id]["schema"]) == OUTPUT_JSON
        VALIDATOR.validate(doc)
        out[doc["id"]] = doc
    assert sorted(out) == [f"j{i}" for i in range(5)]
    assert all(out[f"j{i}"]["metadata"] == {"n": i} for i in range(5))
    dead = await consume_all(bootstrap, f"{topics['input_topic']}-dlt", expected=1)
    assert _dlt_reasons(dead) == {sent[-1].offset: "not_json"}


@pytest.mark.kafka
def test_worker_refuses_to_start_when_the_registry_is_unreachable_or_refuses(worker_factory, topics, registry) -> None:
    away = worker_factory(**topics, output_format="avro", schema_registry_url=f"http://127.0.0.1:{free_port()}",
                          schema_registry_timeout_s=2)
    assert away.wait_exit(120) == 2
    assert "Schema Registry can't be reached" in away.log_text()
    register(registry, f"{topics['output_topic']}-value", incompatible_output_schema())
    assert http("PUT", f"{registry}/config/{topics['output_topic']}-value", {"compatibility": "BACKWARD"})[0] == 200
    refused = worker_factory(**topics, output_format="avro", schema_registry_url=registry)
    assert refused.wait_exit(120) == 2
    assert "incompatible" in refused.log_text()


def test_cli_refuses_a_registry_format_without_a_registry(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "NO_COLOR": "1", "COLUMNS": "200", "INPUT_FORMAT": "avro", "SCHEMA_REGISTRY_PASSWORD": "hunter2-secret"}
    proc = subprocess.run([sys.executable, "-m", "worker", "run"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "INPUT_FORMAT=avro needs SCHEMA_REGISTRY_URL" in proc.stderr
    assert "hunter2-secret" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
