"""structlog set-up: JSON lines for machines, pretty lines for people.

Faust, aiokafka and transformers log through the standard library, so the same
processors format their records too; one stream, one format.
"""

from __future__ import annotations

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
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "structlog", "stream": "ext://sys.stdout"}
        },
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": {
            # Chatty at info; their warnings still come through.
            "aiokafka": {"level": "WARNING"},
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
