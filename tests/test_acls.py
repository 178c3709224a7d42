"""Least privilege against a broker that enforces ACLs: the README's ACLs are enough, in both
guarantees, and a right taken away is reported at once (/ready 503, one line naming it), retried,
and resumed from when it is granted again, nothing lost."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import REPO
from tests.kafka_helpers import (
    broker_port,
    consume_all,
    create_topic,
    end_offsets,
    produce,
    broker,
    until,
    wait_committed,
)

pytestmark = pytest.mark.kafka
PASSWORD = "acl-Pa55word"
PRINCIPAL = "User:worker"


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """PLAINTEXT for the test's own clients (a super user), SASL_PLAINTEXT (SCRAM) for the worker,
    and Kafka's StandardAuthorizer: nothing is allowed that no ACL grants."""
    port, sasl_port, controller = broker_port(), broker_port(), broker_port()
    extra = "\n".join(
        [
            f"listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=SCRAM-SHA-256",
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            "super.users=User:ANONYMOUS",  # the PLAINTEXT listeners: the broker itself, and the test
        ]
    )
    scram = [f"SCRAM-SHA-256=[name=worker,password={PASSWORD}]"]
    with broker(tmp_path_factory.mktemp("kafka-acls"), extra, port=port, controller_port=controller, scram_users=scram) as env:
        yield {"env": env, "plain": f"127.0.0.1:{port}", "sasl": f"127.0.0.1:{sasl_port}"}


def readme_acl_commands() -> list[str]:
    """The kafka-acls.sh lines of the README's ACL block, as they are written there."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- acl-commands:.*?-->\s*```bash\n(.*?)```", readme, re.S)
    assert block, "README.md has no acl-commands block"
    return [line for line in block.group(1).splitlines() if line.startswith("kafka-acls.sh ")]


def kafka_acls(broker: dict[str, Any], args: list[str]) -> None:
    """Kafka's own AclCommand, from the broker's jars."""
    argv = [str(REPO / "deploy" / "local" / "kafka"), "acls", *args]
    subprocess.run(argv, env=broker["env"], check=True, capture_output=True, text=True, timeout=120)


def grant_as_the_readme_says(broker: dict[str, Any], topics: dict[str, str], guarantee: str) -> None:
    values = {
        "B": broker["plain"], "P": PRINCIPAL, "INPUT_TOPIC": topics["input_topic"],
        "OUTPUT_TOPIC": topics["output_topic"], "DEAD_LETTER_TOPIC": f"{topics['input_topic']}-dlt",
        "GROUP_ID": topics["group_id"],
    }
    commands = readme_acl_commands()
    assert len(commands) == 3
    for line in commands:
        if "--transactional-id" in line and guarantee != "exactly_once":
            continue
        words = shlex.split(re.sub(r"\$(\w+)", lambda m: values[m.group(1)], line))
        kafka_acls(broker, words[1:])


def ready(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
    except OSError:
        return 0, {}


def unready(port: int) -> Any:
    status, body = ready(port)
    return body if status == 503 else None


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_the_readme_acls_suffice_and_a_revoked_write_is_said_at_once(
    worker_factory, acl_broker, topics, tmp_path: Path, guarantee: str
) -> None:
    plain = acl_broker["plain"]
    for topic in (topics["input_topic"], topics["output_topic"], f"{topics['input_topic']}-dlt"):
        await create_topic(plain, topic, 2)
    await asyncio.to_thread(grant_as_the_readme_says, acl_broker, topics, guarantee)
    secret = tmp_path / "password"
    secret.write_text(PASSWORD)
    worker = worker_factory(
        **topics, kafka_bootstrap_servers=acl_broker["sasl"], security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256", sasl_username="worker", sasl_password_file=secret, create_topics=False,
        processing_guarantee=guarantee, publish_backoff_max_s=1, kafka_request_timeout_s=5,
    ).wait_ready()
    await produce(plain, topics["input_topic"], [(None, orjson.dumps({"text": f"t{i}", "id": f"a{i}"})) for i in range(10)])
    first = await consume_all(plain, topics["output_topic"], expected=10)
    assert sorted(r.doc["id"] for r in first) == sorted(f"a{i}" for i in range(10))

    # Write on the output topic is taken away.
    revoke = ["--remove", "--force", "--allow-principal", PRINCIPAL, "--operation", "Write", "--topic", topics["output_topic"]]
    await asyncio.to_thread(kafka_acls, acl_broker, revoke)
    await produce(plain, topics["input_topic"], [(None, orjson.dumps({"text": f"t{i}", "id": f"b{i}"})) for i in range(5)])
    missing = f"Write on topic {topics['output_topic']}"
    body = await until(lambda: unready(worker.web_port), 60, "/ready to say 503")
    assert body["error"] == "access_denied" and body["missing"] == missing, body
    lines = worker.events("kafka.access_denied")
    assert lines and {e["missing"] for e in lines} == {missing}, lines
    assert len([e for e in lines if e["during"] == "publish"]) == 1, "one line when it starts, not one per retry"
    assert worker.alive(), "retried, not a crash"

    # Granted again: it resumes, nothing lost, and says so.
    grant = ["--add", "--allow-principal", PRINCIPAL, "--operation", "Write", "--topic", topics["output_topic"]]
    await asyncio.to_thread(kafka_acls, acl_broker, grant)
    received = await consume_all(plain, topics["output_topic"], expected=15, timeout_s=90)
    ids = sorted(r.doc["id"] for r in received)
    assert set(ids) == {f"a{i}" for i in range(10)} | {f"b{i}" for i in range(5)}
    if guarantee == "exactly_once":
        assert len(ids) == 15
    await until(lambda: ready(worker.web_port)[0] == 200, 30, "/ready to say 200 again")
    assert worker.events("kafka.access_restored")
    ends = await end_offsets(plain, topics["input_topic"])
    assert await wait_committed(plain, topics["group_id"], topics["input_topic"], ends) == ends
