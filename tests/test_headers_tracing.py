"""Headers travel with a record (minus the worker's own namespaces), and with TRACING on the worker is a
span in the producer's trace: spans per batch stage linked to the inputs, traceparent on the outputs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.kafka_helpers import consume_all, create_topic, free_port, until
from worker.pipeline.headers import HeaderPolicy

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


def test_header_policy() -> None:
    policy = HeaderPolicy("*", "secret*,x-drop")
    headers = [("tenant", b"t1"), ("secret-token", b"s"), ("x-drop", b"d"), ("sentiment.schema_version", b"9"),
               ("__sentiment.errors.reason", b"forged"), ("traceparent", b"tp")]
    assert policy(headers) == (("tenant", b"t1"), ("traceparent", b"tp"), ("sentiment.schema_version", b"2"))
    assert HeaderPolicy("", "")(headers) == (("sentiment.schema_version", b"2"),)
    assert HeaderPolicy("tenant,content-*", "", replace_trace=True)(headers + [("content-type", b"j")]) == (
        ("tenant", b"t1"), ("content-type", b"j"), ("sentiment.schema_version", b"2"))


async def produce_with_headers(bootstrap: str, topic: str, records: list[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value, headers=headers, partition=0) for value, headers in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@pytest.mark.kafka
async def test_input_headers_reach_the_output_and_the_dead_letter(worker_factory, bootstrap, topics) -> None:
    await create_topic(bootstrap, topics["input_topic"], 1)
    worker_factory(**topics, drop_headers="internal-*").wait_ready()
    headers = [("tenant", b"acme"), ("content-type", b"application/json"), ("internal-route", b"x"),
               ("traceparent", TRACEPARENT.encode()), ("sentiment.schema_version", b"forged")]
    await produce_with_headers(bootstrap, topics["input_topic"], [
        (orjson.dumps({"text": "good", "id": "g"}), headers), (b"not json", headers)])
    (out,) = await consume_all(bootstrap, topics["output_topic"], expected=1)
    assert list(out.headers) == [("tenant", b"acme"), ("content-type", b"application/json"),
                                 ("traceparent", TRACEPARENT.encode()), ("sentiment.schema_version", b"2")]
    (dead,) = await consume_all(bootstrap, f"{topics['input_topic']}-dlt", expected=1)
    assert list(dead.headers)[: len(headers)] == headers  # the originals, unfiltered, in front of the error headers


def test_spans_link_the_inputs_and_continue_their_traces() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from worker.ops.tracing import Tracing

    class Rec:
        def __init__(self, offset: int, headers: list) -> None:
            self.topic, self.partition, self.offset, self.headers = "in", 0, offset, headers

    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter, batch_processor=False)
    records = [Rec(0, [("traceparent", TRACEPARENT.encode())]), Rec(1, [])]
    trace = tracing.batch(records, started_ns=1_000)
    traced, untraced = dict(trace.headers(0)), dict(trace.headers(1))
    assert traced["traceparent"].decode().split("-")[1] == TRACE_ID  # the producer's trace goes on
    trace.stage("infer", 2_000, 3_000, model_calls=1)
    trace.end(stored=True, end_ns=4_000)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    batch, score, infer = spans["sentiment.batch"], spans["sentiment.score"], spans["infer"]
    assert [format(link.context.trace_id, "032x") for link in batch.links] == [TRACE_ID]
    assert format(score.context.trace_id, "032x") == TRACE_ID and format(score.parent.span_id, "016x") == PARENT_SPAN
    assert infer.parent.span_id == batch.context.span_id and infer.attributes["sentiment.model_calls"] == 1
    assert untraced["traceparent"].decode().split("-")[2] == format(batch.context.span_id, "016x")
    tracing.shutdown()


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint: decodes each export request's protobuf and keeps the spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[Any] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.mark.kafka
async def test_a_producers_trace_goes_through_the_worker(worker_factory, bootstrap, topics, otlp) -> None:
    await create_topic(bootstrap, topics["input_topic"], 1)
    worker = worker_factory(
        **topics, tracing="true", otel_exporter_otlp_endpoint=otlp.url, otel_bsp_schedule_delay="200",
        otel_service_name="sentiment-worker-test",
    ).wait_ready()
    await produce_with_headers(bootstrap, topics["input_topic"], [
        (orjson.dumps({"text": "traced", "id": "t"}), [("traceparent", TRACEPARENT.encode())]),
        (orjson.dumps({"text": "not traced", "id": "u"}), [])])
    outputs = {r.doc["id"]: dict(r.headers) for r in await consume_all(bootstrap, topics["output_topic"], expected=2)}
    assert outputs["t"]["traceparent"].decode().split("-")[1] == TRACE_ID
    assert outputs["u"]["traceparent"].decode().split("-")[1] != TRACE_ID

    wanted = {"sentiment.batch", "sentiment.score", "publish"}
    await until(lambda: wanted <= {s.name for s in otlp.spans}, 30, f"the spans {sorted(wanted)}")
    spans = {s.name: s for s in otlp.spans}
    assert {"decode", "tokenize", "infer", "outputs", "publish"} <= set(spans)
    score = spans["sentiment.score"]
    assert score.trace_id.hex() == TRACE_ID and score.parent_span_id.hex() == PARENT_SPAN
    assert outputs["t"]["traceparent"].decode().split("-")[2] == score.span_id.hex()
    batch = spans["sentiment.batch"]
    assert [link.trace_id.hex() for link in batch.links] == [TRACE_ID]
    assert all(spans[n].parent_span_id == batch.span_id for n in ("decode", "tokenize", "infer", "outputs", "publish"))
    assert worker.proc.poll() is None
