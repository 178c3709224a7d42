"""Start-up checks against the cluster: reachable brokers, existing topics.

Run before Faust starts, so that a wrong address or a missing topic ends the
process with one clear line instead of a loop of reconnect warnings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any, Optional

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from worker import logs

log = logs.get_logger(__name__)


class KafkaSetupError(RuntimeError):
    """The cluster is not usable as configured; the message says what to change."""


async def _tls_failure(bootstrap_servers: str, context: Optional[ssl.SSLContext]) -> Optional[str]:
    """Why a TLS handshake with the first broker fails, if it does (aiokafka only says "unable to bootstrap")."""
    if context is None:
        return None
    host, _, port = bootstrap_servers.split(",")[0].strip().rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port), ssl=context, server_hostname=host.strip("[]")), 10
        )
    except ssl.SSLError as exc:
        return f"{type(exc).__name__}: {exc}"
    except (OSError, ValueError, asyncio.TimeoutError):
        return None  # not a TLS problem: unreachable, or a malformed address
    writer.close()
    return None


async def ensure_topics(
    bootstrap_servers: str,
    topics: Sequence[str],
    *,
    create: bool,
    partitions: int,
    replication_factor: int,
    timeout_s: float,
    options: Optional[dict[str, Any]] = None,
) -> dict[str, int]:
    """Return each topic's partition count, creating missing ones when allowed."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        client_id="sentiment-preflight",
        **(options or {}),
    )
    try:
        await admin.start()
    except (KafkaConnectionError, KafkaError, OSError) as exc:
        with contextlib.suppress(Exception):
            await admin.close()
        tls = await _tls_failure(bootstrap_servers, (options or {}).get("ssl_context"))
        if tls is not None:
            raise KafkaSetupError(
                f"TLS handshake with Kafka at {bootstrap_servers} failed ({tls}). Check SSL_CAFILE (it must "
                "have signed the brokers' certificates) and, for mutual TLS, SSL_CERTFILE and SSL_KEYFILE."
            ) from None
        if "auth" in type(exc).__name__.lower() or "sasl" in str(exc).lower():
            raise KafkaSetupError(
                f"Kafka at {bootstrap_servers} refused the credentials ({exc.__class__.__name__}: {exc}). "
                "Check SASL_USERNAME / SASL_PASSWORD(_FILE) / SASL_MECHANISM."
            ) from None
        raise KafkaSetupError(
            f"Cannot reach Kafka at {bootstrap_servers} ({exc.__class__.__name__}: {exc}). "
            "Check KAFKA_BOOTSTRAP_SERVERS and that the brokers are up (deploy/local/kafka status)."
        ) from None
    try:
        existing = await _partition_counts(admin, topics)
        missing = [t for t in topics if t not in existing]
        if missing and not create:
            raise KafkaSetupError(
                f"Topic(s) {', '.join(missing)} do not exist on {bootstrap_servers}. "
                "Create them, or set CREATE_TOPICS=true to let the worker create them."
            )
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another replica won the race
            log.info("topics.created", topics=missing, partitions=partitions, replication_factor=replication_factor)
            existing = await _partition_counts(admin, topics)
        return existing
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> dict[str, int]:
    # describe_topics on a missing name would auto-create it on brokers that
    # allow that, with the broker's default partitions: only describe existing ones.
    present = set(await admin.list_topics())
    wanted = [t for t in topics if t in present]
    counts: dict[str, int] = {}
    if not wanted:
        return counts
    for meta in await admin.describe_topics(wanted):
        if meta.get("error_code", 0) == 0 and meta.get("partitions"):
            counts[meta["topic"]] = len(meta["partitions"])
    return counts
