"""The worker's HTTP pages: /health (the process answers), /ready (it is doing its job), /metrics.

Faust's own pages (/router, /table, ...) are off unless WEB_BUILTIN_PAGES is
set: they show host names, assignments and tables (``worker.kafka.faust_adapter``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.ops import metrics

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def install_pages(app: Any, readiness: Readiness) -> None:
    """Register the three pages on a Faust app."""

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok, body = readiness()
        return web.json({"ready": ok, **body}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, content_type = metrics.render()
        # aiohttp takes the charset separately; the exposition format is UTF-8 anyway.
        return web.bytes(body, content_type=content_type.split(";")[0] + "; version=0.0.4")
