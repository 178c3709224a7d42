"""Start-up checks against the cluster: reachable brokers, existing topics, their size limits.

Run before the model is loaded and before Faust starts, so that a wrong
address or a missing topic ends the process with one clear line within
seconds, instead of minutes of model loading followed by a loop of reconnect
warnings. The topics' ``max.message.bytes`` are read here too: every record
the worker writes is checked against them before it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from worker.kafka.errors import describe
from worker.kafka.oauth import OAuthTokenError
from worker.ops import logs

log = logs.get_logger(__name__)


class KafkaSetupError(RuntimeError):
    """The cluster is not usable as configured; the message says what to change."""


@dataclass(frozen=True)
class TopicInfo:
    partitions: dict[str, int]
    max_message_bytes: dict[str, int]  # the topics' effective max.message.bytes


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
    min_insync_replicas: Optional[int] = None,
    options: Optional[dict[str, Any]] = None,
) -> TopicInfo:
    """Each topic's partition count and size limit, creating missing ones when allowed.

    Created topics get ``min.insync.replicas`` = the smaller of ``min_insync_replicas``
    and the replication factor (a larger value would refuse every write).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        client_id="sentiment-preflight",
        **(options or {}),
    )
    try:
        await admin.start()
    except OAuthTokenError as exc:  # OAUTHBEARER: the token endpoint gave no token
        with contextlib.suppress(Exception):
            await admin.close()
        raise KafkaSetupError(f"Kafka at {bootstrap_servers}: {exc}") from None
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
                f"Kafka at {bootstrap_servers} refused the credentials ({describe(exc)}). "
                "Check SASL_USERNAME / SASL_PASSWORD(_FILE) / SASL_MECHANISM."
            ) from None
        raise KafkaSetupError(
            f"Cannot reach Kafka at {bootstrap_servers} ({describe(exc)}). "
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
            configs = {}
            if min_insync_replicas is not None:
                configs["min.insync.replicas"] = str(min(min_insync_replicas, replication_factor))
            try:
                await admin.create_topics(
                    [
                        NewTopic(t, num_partitions=partitions, replication_factor=replication_factor, topic_configs=configs)
                        for t in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass  # another replica won the race
            log.info(
                "topics.created",
                topics=missing,
                partitions=partitions,
                replication_factor=replication_factor,
                min_insync_replicas=configs.get("min.insync.replicas"),
            )
            existing = await _partition_counts(admin, topics)
        return TopicInfo(existing, await _max_message_bytes(admin, [t for t in topics if t in existing]))
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


async def _max_message_bytes(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> dict[str, int]:
    """Each topic's effective max.message.bytes (its own setting, else the broker's default)."""
    if not topics:
        return {}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None}) for topic in topics]
    )
    limits: dict[str, int] = {}
    for response in responses:
        for resource in response.resources:
            error_code, name, entries = resource[0], resource[3], resource[4]
            if error_code:
                # Without DescribeConfigs on the topic: the broker's refusal of an oversized
                # record still turns it into a dead letter, only later (worker.pipeline.delivery).
                log.warning("topics.limit_unknown", topic=name, error=describe(for_code(error_code)()),
                            consequence="record sizes are not checked before sending")
            for entry in entries:
                if entry[0] == "max.message.bytes" and entry[1] is not None:
                    limits[name] = int(entry[1])
    return limits
