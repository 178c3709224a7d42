"""Kafka connection security (SSL, SASL PLAIN / SCRAM / OAUTHBEARER) for every client the worker opens.

Secrets come from env vars or files (SASL_PASSWORD_FILE, OAUTH_CLIENT_SECRET_FILE) and
are never logged: settings hold them as SecretStr, and these helpers hand them only to
clients. OAUTHBEARER tokens come from one provider per client id, shared by every client
(``worker.kafka.oauth``).
"""

from __future__ import annotations

import ssl
import threading
from typing import Any, Optional

from worker.kafka.oauth import ClientCredentialsTokens
from worker.settings import SaslMechanism, SecurityProtocol, Settings

_providers: dict[tuple[Any, ...], ClientCredentialsTokens] = {}
_providers_lock = threading.Lock()


def token_provider(settings: Settings) -> ClientCredentialsTokens:
    """The OAUTHBEARER token provider of these settings (one per endpoint, client and scope)."""
    key = (settings.oauth_token_endpoint_url, settings.oauth_client_id, settings.oauth_scope,
           settings.oauth_client_secret_file)
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            assert settings.oauth_token_endpoint_url and settings.oauth_client_id, "checked by Settings"
            provider = _providers[key] = ClientCredentialsTokens(
                settings.oauth_token_endpoint_url,
                settings.oauth_client_id,
                settings.oauth_client_secret_value,
                scope=settings.oauth_scope,
                timeout_s=settings.kafka_timeout_s,
            )
        return provider


def ssl_context(settings: Settings) -> Optional[ssl.SSLContext]:
    if not settings.security_protocol.value.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    if settings.ssl_certfile is not None:
        context.load_cert_chain(
            str(settings.ssl_certfile), str(settings.ssl_keyfile) if settings.ssl_keyfile else None
        )
    return context


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol.value}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL):
        if settings.sasl_mechanism is SaslMechanism.OAUTHBEARER:
            options.update(sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=token_provider(settings))
        else:
            options.update(
                sasl_mechanism=settings.sasl_mechanism.value,
                sasl_plain_username=settings.sasl_username,
                sasl_plain_password=settings.sasl_password_value(),
            )
    return options


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for the same settings (None for PLAINTEXT)."""
    import faust

    protocol = settings.security_protocol
    if protocol is SecurityProtocol.PLAINTEXT:
        return None
    if protocol is SecurityProtocol.SSL:
        return faust.SSLCredentials(ssl_context(settings))
    if settings.sasl_mechanism is SaslMechanism.OAUTHBEARER:
        return faust.OAuthCredentials(oauth_cb=token_provider(settings), ssl_context=ssl_context(settings))
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password_value(),
        mechanism=settings.sasl_mechanism.value,
        ssl_context=ssl_context(settings),
    )
