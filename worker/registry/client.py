"""A small async client of the Confluent Schema Registry REST API (what Confluent's and Apicurio's serve).

Only what the worker needs: a schema by id (cached: an id names one schema
forever), registering a schema under a subject, and looking a schema up under
a subject. Credentials (HTTP basic auth) are never put into messages or logs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote

import aiohttp
import orjson

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPT = "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json"

AVRO = "AVRO"
JSON = "JSON"


class RegistryError(Exception):
    """The registry answered with an error, or could not be reached."""

    def __init__(self, message: str, status: Optional[int] = None, error_code: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class RegistryUnavailable(RegistryError):
    """No answer (connection refused, timeout) or a server error (5xx): worth retrying."""


class SchemaNotFound(RegistryError):
    """404: no such schema id, subject or version."""


class IncompatibleSchema(RegistryError):
    """409: the subject's compatibility rule refuses the schema."""


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    id: int
    schema_type: str  # AVRO, JSON or PROTOBUF
    text: str
    references: tuple[Any, ...] = ()


class RegistryClient:
    """One registry; one HTTP session (opened on first use, on the running loop)."""

    def __init__(
        self,
        url: str,
        *,
        username: Optional[str] = None,
        password: Optional[str] = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._auth = aiohttp.BasicAuth(username, password or "") if username else None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: Optional[aiohttp.ClientSession] = None
        self._by_id: dict[int, RegisteredSchema] = {}
        self._ids: dict[tuple[str, str, str], int] = {}  # (subject, type, text) -> id

    def __repr__(self) -> str:  # never the credentials
        return f"RegistryClient({self.url!r})"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                auth=self._auth, timeout=self._timeout, headers={"Accept": ACCEPT}, raise_for_status=False
            )
        return self._session

    async def _call(self, method: str, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        url = self.url + path
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": CONTENT_TYPE} if body is not None else None
        try:
            async with self._http().request(method, url, data=data, headers=headers) as response:
                raw = await response.read()
                status = response.status
        except asyncio.TimeoutError:
            raise RegistryUnavailable(f"{method} {url}: no answer within {self._timeout.total:g} s") from None
        except aiohttp.ClientError as exc:
            raise RegistryUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        try:
            doc = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            doc = None
        if status < 300:
            if doc is None:
                raise RegistryError(f"{method} {url}: HTTP {status} without a JSON body", status)
            return doc
        message = doc.get("message") if isinstance(doc, dict) else None
        error_code = doc.get("error_code") if isinstance(doc, dict) else None
        text = f"{method} {url}: HTTP {status}" + (f": {message}" if message else "")
        if status == 404:
            raise SchemaNotFound(text, status, error_code)
        if status == 409:
            raise IncompatibleSchema(text, status, error_code)
        if status >= 500 or status == 429:
            raise RegistryUnavailable(text, status, error_code)
        raise RegistryError(text, status, error_code)

    async def subjects(self) -> list[str]:
        """GET /subjects: the registered subjects (also: does the registry answer at all)."""
        return list(await self._call("GET", "/subjects"))

    async def schema_by_id(self, schema_id: int) -> RegisteredSchema:
        """GET /schemas/ids/{id}; cached for the life of the client."""
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        doc = await self._call("GET", f"/schemas/ids/{int(schema_id)}")
        if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str):
            raise RegistryError(f"GET /schemas/ids/{schema_id}: the answer has no schema")
        schema = RegisteredSchema(
            schema_id, str(doc.get("schemaType") or AVRO).upper(), doc["schema"], tuple(doc.get("references") or ())
        )
        self._by_id[schema_id] = schema
        return schema

    async def register(self, subject: str, schema_text: str, schema_type: str) -> int:
        """POST /subjects/{subject}/versions: the schema's id (the same id when it is already registered)."""
        key = (subject, schema_type, schema_text)
        if key in self._ids:
            return self._ids[key]
        doc = await self._call("POST", f"/subjects/{quote(subject, safe='')}/versions", _body(schema_text, schema_type))
        return self._remember(key, doc, schema_text, schema_type)

    async def lookup(self, subject: str, schema_text: str, schema_type: str) -> int:
        """POST /subjects/{subject}: the id of this schema under the subject; SchemaNotFound if it isn't there."""
        key = (subject, schema_type, schema_text)
        if key in self._ids:
            return self._ids[key]
        doc = await self._call("POST", f"/subjects/{quote(subject, safe='')}", _body(schema_text, schema_type))
        return self._remember(key, doc, schema_text, schema_type)

    def _remember(self, key: tuple[str, str, str], doc: Any, schema_text: str, schema_type: str) -> int:
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), int):
            raise RegistryError(f"subject {key[0]!r}: the answer has no schema id")
        schema_id = doc["id"]
        self._ids[key] = schema_id
        self._by_id.setdefault(schema_id, RegisteredSchema(schema_id, schema_type, schema_text))
        return schema_id


def _body(schema_text: str, schema_type: str) -> dict[str, Any]:
    body: dict[str, Any] = {"schema": schema_text}
    if schema_type != AVRO:  # Confluent's default; older registries know no schemaType
        body["schemaType"] = schema_type
    return body
