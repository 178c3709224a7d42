"""SASL against a real broker with a SASL listener: right credentials work, wrong ones fail fast."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from tests.kafka_helpers import consume_all, create_topic, free_port, produce, start_broker, stop_broker

pytestmark = pytest.mark.kafka
PASSWORD = "s3cret-Pa55word"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A second broker: PLAINTEXT for the test's own clients, SASL_PLAINTEXT (PLAIN) for the worker."""
    port, sasl_port, controller = free_port(), free_port(), free_port()
    extra = "\n".join(
        [
            f"listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            f'org.apache.kafka.common.security.plain.PlainLoginModule required user_worker="{PASSWORD}";',
        ]
    )
    env = start_broker(tmp_path_factory.mktemp("kafka-sasl"), extra, port=port, controller_port=controller)
    try:
        yield {"plain": f"127.0.0.1:{port}", "sasl": f"127.0.0.1:{sasl_port}"}
    finally:
        stop_broker(env)


async def test_sasl_plain_credentials_work_and_stay_secret(worker_factory, sasl_broker, topics, tmp_path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(PASSWORD + "\n")
    await create_topic(sasl_broker["plain"], topics["input_topic"], 2)
    worker = worker_factory(
        **topics,
        kafka_bootstrap_servers=sasl_broker["sasl"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="worker",
        sasl_password_file=secret,
    ).wait_ready()
    await produce(sasl_broker["plain"], topics["input_topic"], [(None, orjson.dumps({"text": "secure hello", "id": "s1"}))])
    received = await consume_all(sasl_broker["plain"], topics["output_topic"], expected=1)
    assert [r.doc["id"] for r in received] == ["s1"]
    assert PASSWORD not in worker.log_text()


async def test_wrong_password_exits_with_an_authentication_error(worker_factory, sasl_broker, topics) -> None:
    worker = worker_factory(
        **topics,
        kafka_bootstrap_servers=sasl_broker["sasl"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="worker",
        sasl_password="not-the-password",
        kafka_timeout_s=10,
    )
    code = worker.wait_exit(90)
    log = worker.log_text()
    assert code == 2, log[-2000:]
    assert "credentials" in log or "authentication" in log.lower(), log[-2000:]
    assert "not-the-password" not in log
