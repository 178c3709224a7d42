"""SASL and TLS against real brokers: right credentials work, wrong ones fail fast and say why."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.kafka_helpers import broker, broker_port, consume_all, create_topic, produce

pytestmark = pytest.mark.kafka
PASSWORD = "s3cret-Pa55word"
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A second broker: PLAINTEXT for the test's own clients, SASL_PLAINTEXT (PLAIN and SCRAM) for the worker."""
    port, sasl_port, controller = broker_port(), broker_port(), broker_port()
    extra = "\n".join(
        [
            f"listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            f"sasl.enabled.mechanisms={','.join(MECHANISMS)}",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            f'org.apache.kafka.common.security.plain.PlainLoginModule required user_worker="{PASSWORD}";',
            *(
                f"listener.name.sasl_plaintext.{m.lower()}.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                for m in MECHANISMS
                if m.startswith("SCRAM")
            ),
        ]
    )
    # SCRAM credentials live in the cluster metadata: created when the storage is formatted.
    scram = [f"{m}=[name=worker,password={PASSWORD}]" for m in MECHANISMS if m.startswith("SCRAM")]
    with broker(tmp_path_factory.mktemp("kafka-sasl"), extra, port=port, controller_port=controller, scram_users=scram):
        yield {"plain": f"127.0.0.1:{port}", "sasl": f"127.0.0.1:{sasl_port}"}


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_sasl_credentials_work_and_stay_secret(worker_factory, sasl_broker, topics, tmp_path, mechanism) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(PASSWORD + "\n")
    await create_topic(sasl_broker["plain"], topics["input_topic"], 2)
    worker = worker_factory(
        **topics,
        kafka_bootstrap_servers=sasl_broker["sasl"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
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


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> dict[str, Path]:
    """A throw-away CA, a broker certificate for 127.0.0.1 and a client certificate (PEM, PKCS#8 keys)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=sentiment-test-ca", cwd=directory)
    for name, extensions in (("broker", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=directory)
        (directory / f"{name}.ext").write_text(extensions + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    # Kafka's PEM key store: the private key and the certificate chain in one file.
    (directory / "broker.pem").write_text(
        (directory / "broker.key").read_text() + (directory / "broker.crt").read_text() + (directory / "ca.pem").read_text()
    )
    return {name: directory / name for name in ("ca.pem", "broker.pem", "client.crt", "client.key")}


@pytest.fixture(scope="module")
def ssl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A broker with an SSL listener that requires client certificates (mutual TLS)."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    port, ssl_port, controller = broker_port(), broker_port(), broker_port()
    extra = "\n".join(
        [
            f"listeners=PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{ssl_port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{ssl_port}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={pki['broker.pem']}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={pki['ca.pem']}",
            "ssl.client.auth=required",
        ]
    )
    with broker(tmp_path_factory.mktemp("kafka-ssl"), extra, port=port, controller_port=controller):
        yield {"plain": f"127.0.0.1:{port}", "ssl": f"127.0.0.1:{ssl_port}", "pki": pki}


async def test_mutual_tls_works(worker_factory, ssl_broker, topics) -> None:
    pki = ssl_broker["pki"]
    await create_topic(ssl_broker["plain"], topics["input_topic"], 2)
    worker_factory(
        **topics,
        kafka_bootstrap_servers=ssl_broker["ssl"],
        security_protocol="SSL",
        ssl_cafile=pki["ca.pem"],
        ssl_certfile=pki["client.crt"],
        ssl_keyfile=pki["client.key"],
    ).wait_ready()
    await produce(ssl_broker["plain"], topics["input_topic"], [(None, orjson.dumps({"text": "tls hello", "id": "t1"}))])
    received = await consume_all(ssl_broker["plain"], topics["output_topic"], expected=1)
    assert [r.doc["id"] for r in received] == ["t1"]


async def test_untrusted_broker_certificate_exits_with_a_clear_error(worker_factory, ssl_broker, topics) -> None:
    """Without our CA the broker's certificate can't be verified: exit 2 at start, not a retry loop."""
    pki = ssl_broker["pki"]
    worker = worker_factory(
        **topics,
        kafka_bootstrap_servers=ssl_broker["ssl"],
        security_protocol="SSL",
        ssl_certfile=pki["client.crt"],
        ssl_keyfile=pki["client.key"],
        kafka_timeout_s=10,
    )
    code = worker.wait_exit(90)
    log = worker.log_text()
    assert code == 2, log[-2000:]
    last = log.strip().splitlines()[-1]  # the one line an operator reads
    assert "TLS handshake" in last and "CERTIFICATE_VERIFY_FAILED" in last and "SSL_CAFILE" in last, last
