"""SASL/OAUTHBEARER against a real broker: tokens from an OAuth 2 token endpoint (client credentials).

The broker validates unsecured JWS tokens (Kafka's OAuthBearerUnsecuredValidatorCallbackHandler,
its default: for tests, not production); the token endpoint is the test's own, and issues
such a token to the right client id and secret only. What a managed service or a Strimzi
OAuth listener adds on top (signed tokens checked against a JWKS) is the broker's side,
not the worker's: the worker fetches and presents tokens the same way.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.kafka_helpers import broker, broker_port, consume_all, create_topic, produce
from worker.kafka.oauth import ClientCredentialsTokens, OAuthTokenError

pytestmark = pytest.mark.kafka
CLIENT_ID, CLIENT_SECRET = "sentiment-worker", "oauth-s3cret"


def unsecured_jws(subject: str, lifetime_s: int) -> str:
    """A JWS with alg none: a header, the claims, and an empty signature."""
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    now = int(time.time())
    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + lifetime_s})}."


class TokenEndpoint:
    """An OAuth 2 token endpoint of the test's own: client credentials in HTTP Basic, one grant type."""

    def __init__(self, lifetime_s: int = 3600) -> None:
        self.requests = 0
        self.lifetime_s = lifetime_s
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                endpoint.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}" or "grant_type=client_credentials" not in body:
                    self.send_response(401)
                    self.end_headers()
                    return
                doc = {"access_token": unsecured_jws(CLIENT_ID, endpoint.lifetime_s), "token_type": "bearer",
                       "expires_in": endpoint.lifetime_s}
                payload = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def token_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def oauth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """PLAINTEXT for the test's own clients, SASL_PLAINTEXT with OAUTHBEARER for the worker."""
    port, sasl_port, controller = broker_port(), broker_port(), broker_port()
    extra = "\n".join(
        [
            f"listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=OAUTHBEARER",
            "listener.name.sasl_plaintext.oauthbearer.sasl.jaas.config="
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;",
        ]
    )
    with broker(tmp_path_factory.mktemp("kafka-oauth"), extra, port=port, controller_port=controller):
        yield {"plain": f"127.0.0.1:{port}", "sasl": f"127.0.0.1:{sasl_port}"}


def oauth_settings(endpoint: TokenEndpoint, secret_file: Path, bootstrap: str) -> dict[str, Any]:
    return dict(
        kafka_bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER",
        oauth_token_endpoint_url=endpoint.url, oauth_client_id=CLIENT_ID, oauth_client_secret_file=secret_file,
    )


async def test_tokens_from_the_endpoint_let_the_worker_score(
    worker_factory, oauth_broker, token_endpoint, topics, tmp_path: Path
) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    await create_topic(oauth_broker["plain"], topics["input_topic"], 2)
    before = token_endpoint.requests
    worker = worker_factory(**topics, **oauth_settings(token_endpoint, secret, oauth_broker["sasl"])).wait_ready()
    await produce(oauth_broker["plain"], topics["input_topic"], [(None, orjson.dumps({"text": "token ok", "id": "o1"}))])
    received = await consume_all(oauth_broker["plain"], topics["output_topic"], expected=1)
    assert [r.doc["id"] for r in received] == ["o1"]
    assert token_endpoint.requests > before
    assert CLIENT_SECRET not in worker.log_text()


async def test_a_refused_client_secret_ends_the_start_with_a_clear_line(
    worker_factory, oauth_broker, token_endpoint, topics, tmp_path: Path
) -> None:
    secret = tmp_path / "wrong-secret"
    secret.write_text("not-the-secret")
    worker = worker_factory(**topics, **oauth_settings(token_endpoint, secret, oauth_broker["sasl"]), kafka_timeout_s=10)
    assert worker.wait_exit(90) == 2, worker.log_text()[-3000:]
    (line,) = worker.events("kafka.setup_failed")
    assert token_endpoint.url in line["error"] and "HTTP 401" in line["error"] and "OAUTH_CLIENT_SECRET_FILE" in line["error"]
    assert "not-the-secret" not in worker.log_text()


def test_a_token_is_reused_until_most_of_its_lifetime_has_passed() -> None:
    endpoint = TokenEndpoint(lifetime_s=1)
    try:
        tokens = ClientCredentialsTokens(endpoint.url, CLIENT_ID, lambda: CLIENT_SECRET)
        first = tokens.current()
        assert tokens.current() == first and endpoint.requests == 1
        time.sleep(0.9)  # past 80 % of its 1 s lifetime: the lifetime is what is under test
        tokens.current()
        assert endpoint.requests == 2
        wrong = ClientCredentialsTokens(endpoint.url, CLIENT_ID, lambda: "wrong")
        with pytest.raises(OAuthTokenError, match="HTTP 401"):
            wrong.current()
    finally:
        endpoint.close()
