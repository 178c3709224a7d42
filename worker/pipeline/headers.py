"""Which input headers travel with a record's output, and the headers the worker adds itself.

Producers put trace contexts, tenant ids and content types in headers;
downstream readers expect them on the scored event. By default every input
header is copied (COPY_HEADERS=*) except those DROP_HEADERS names; glob
patterns (``fnmatch``) work in both. Headers in the worker's own namespaces
are never copied from the input: ``sentiment.*`` (set on outputs by the
worker) and ``__sentiment.*`` / ``__connect.*`` (dead-letter headers), so a
producer can't forge them. The worker's own output headers:

- ``sentiment.schema_version``: the output event's schema version;
- ``traceparent`` / ``tracestate`` with TRACING on (``worker.ops.tracing``),
  replacing the producer's: the output continues the trace in a span of the worker.

Dead letters keep the original headers unfiltered, in front of the error headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

Header = tuple[str, bytes]
OWN_PREFIXES = ("sentiment.", "__sentiment.", "__connect.")
SCHEMA_VERSION_HEADER = "sentiment.schema_version"
TRACE_HEADERS = ("traceparent", "tracestate")


def patterns(spec: str) -> tuple[str, ...]:
    """``a,b*, c`` -> ("a", "b*", "c"); empty -> ()."""
    return tuple(p.strip() for p in spec.split(",") if p.strip())


class HeaderPolicy:
    """Filters input headers for an output; remembers its verdict per header name."""

    def __init__(self, copy: str = "*", drop: str = "", *, schema_version: str = "2", replace_trace: bool = False) -> None:
        self._copy = patterns(copy)
        self._drop = patterns(drop) + (TRACE_HEADERS if replace_trace else ())
        self._own: tuple[Header, ...] = ((SCHEMA_VERSION_HEADER, schema_version.encode()),)
        self._verdicts: dict[str, bool] = {}

    def allowed(self, name: str) -> bool:
        verdict = self._verdicts.get(name)
        if verdict is None:
            if len(self._verdicts) > 10_000:
                self._verdicts.clear()
            verdict = self._verdicts[name] = (
                not name.startswith(OWN_PREFIXES)
                and any(fnmatchcase(name, p) for p in self._copy)
                and not any(fnmatchcase(name, p) for p in self._drop)
            )
        return verdict

    def __call__(self, headers: Sequence[Header]) -> tuple[Header, ...]:
        """The output's headers: the input's that may travel, then the worker's own."""
        if not headers:
            return self._own
        return tuple(h for h in headers if self.allowed(h[0])) + self._own
