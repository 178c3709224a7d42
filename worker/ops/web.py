"""The worker's HTTP pages: /health (the process answers), /ready (it is doing its job),
/started (the model is loaded), /metrics.

From the first second of a start, :class:`StartupPages` serves them on WEB_PORT
while Kafka is checked and the model loads (minutes on a GPU): /health and
/metrics answer, so neither a liveness probe nor the "worker down" alert takes a
slow start for a dead worker; /ready and /started answer 503 until then. The
Faust app's pages (:func:`install_pages`) take the port over once the model is
loaded. Faust's own pages (/router, /table, ...) are off unless WEB_BUILTIN_PAGES
is set: they show host names, assignments and tables (``worker.kafka.faust_adapter``).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from worker.ops import metrics

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class StartupPages:
    """The pages of a worker that is still starting, in a thread of their own (the start blocks its loop)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.stage = "starting"
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Bind WEB_PORT (OSError if it is taken) and answer from now on."""
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/health":
                    self._answer(200, {"status": "starting", "stage": pages.stage})
                elif self.path in ("/ready", "/started"):
                    self._answer(503, {"ready": False, "starting": pages.stage})
                elif self.path == "/metrics":
                    body, content_type = metrics.render()
                    self._send(200, body, content_type)
                else:
                    self._answer(404, {"error": "not found"})

            def _answer(self, status: int, doc: dict[str, Any]) -> None:
                self._send(status, json.dumps(doc).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - probes every few seconds
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            allow_reuse_address = True  # as the web server that takes over binds it
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="startup-pages", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Free the port for the worker's own pages."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def install_pages(app: Any, readiness: Readiness) -> None:
    """Register the pages on a Faust app (the model is loaded by the time it serves them)."""

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/started")
    async def started(web: Any, request: Any) -> Any:
        return web.json({"started": True})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok, body = readiness()
        return web.json({"ready": ok, **body}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, content_type = metrics.render()
        # aiohttp takes the charset separately; the exposition format is UTF-8 anyway.
        return web.bytes(body, content_type=content_type.split(";")[0] + "; version=0.0.4")
