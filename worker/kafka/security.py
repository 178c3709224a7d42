"""Kafka connection security (SSL, SASL PLAIN / SCRAM) for every client the worker opens.

Secrets come from env vars or files (SASL_PASSWORD_FILE) and are never logged:
settings hold them as SecretStr, and these helpers hand them only to clients.
"""

from __future__ import annotations

import ssl
from typing import Any, Optional

from worker.settings import SecurityProtocol, Settings


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
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password_value(),
        mechanism=settings.sasl_mechanism.value,
        ssl_context=ssl_context(settings),
    )
