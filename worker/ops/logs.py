"""structlog set-up: JSON lines for machines, pretty lines for people.

Faust, aiokafka and transformers log through the standard library, so the same
processors format their records too; one stream, one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
import structlog.tracebacks

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class QuietAbandonedKafkaFutures(logging.Filter):
    """Demote asyncio's "Future exception was never retrieved" about Kafka errors to debug.

    aiokafka's sender leaves such a future behind when a producer that was fenced, or
    whose broker went away, is closed: the worker has already handled the error (it
    replaced the producer), so an ERROR line with a traceback would only alarm.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "asyncio" or not record.getMessage().startswith(
            ("Future exception was never retrieved", "Task exception was never retrieved")
        ):
            return True
        from aiokafka.errors import KafkaError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, KafkaError):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info = None
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def logging_config(level: str = "info", fmt: str = "auto") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict; Faust's Worker applies it itself."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    # Tracebacks without local variables: locals can hold message bodies.
    renderer: Any = (
        [
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(),
        ]
        if as_json
        else [
            structlog.dev.ConsoleRenderer(
                colors=sys.stdout.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        ]
    )
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
                "foreign_pre_chain": _SHARED,
            }
        },
        "filters": {"quiet_kafka_futures": {"()": QuietAbandonedKafkaFutures}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "structlog",
                "stream": "ext://sys.stdout",
                "filters": ["quiet_kafka_futures"],
            }
        },
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": {
            # Chatty at info; their warnings still come through.
            "aiokafka": {"level": "WARNING"},
            "aiohttp.access": {"level": "WARNING"},  # a line per probe of /health and /ready
            "faust": {"level": "WARNING" if level != "debug" else "INFO"},
            "mode": {"level": "WARNING" if level != "debug" else "INFO"},
        },
    }


def configure(level: str = "info", fmt: str = "auto") -> None:
    """For commands that run without Faust's Worker (produce, tail, bench)."""
    import logging.config

    logging.config.dictConfig(logging_config(level, fmt))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


__all__ = ["configure", "get_logger", "logging_config"]
