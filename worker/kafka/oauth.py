"""SASL/OAUTHBEARER: access tokens from an OAuth 2 token endpoint (client credentials grant).

Managed Kafka services and Strimzi clusters with OAuth listeners take a bearer
token instead of a password. The worker asks the token endpoint for one (RFC 6749,
section 4.4: the client id and secret as HTTP Basic credentials, an optional scope),
keeps it until 80 % of its lifetime has passed, and hands it to every Kafka client
it opens: aiokafka's producers, admin clients and Faust's consumer, whose own event
loop runs in another thread. So the provider is thread-safe and blocks no loop: the
request runs in a worker thread, and one lock makes concurrent connects share one
token. The client secret is read from its file (or variable) for each request and
never logged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Optional

from aiokafka.abc import AbstractTokenProvider

REFRESH_AT = 0.8  # of a token's lifetime
DEFAULT_LIFETIME_S = 300.0  # when the endpoint does not say (no expires_in)


class OAuthTokenError(RuntimeError):
    """The token endpoint gave no token; the message says which endpoint and why, never the secret."""


class ClientCredentialsTokens(AbstractTokenProvider):
    """Access tokens for one client, fetched before they expire, shared by every Kafka client."""

    def __init__(
        self,
        url: str,
        client_id: str,
        secret: Callable[[], Optional[str]],
        *,
        scope: Optional[str] = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self._secret = secret
        self.scope = scope
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._refresh_at = 0.0
        self.fetched = 0  # tokens fetched so far

    async def token(self) -> str:
        """A token that is not about to expire (aiokafka awaits this on every connection it opens)."""
        return await asyncio.to_thread(self.current)

    def current(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                self._token, lifetime = self._fetch()
                self._refresh_at = time.monotonic() + REFRESH_AT * lifetime
                self.fetched += 1
            return self._token

    def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        basic = base64.b64encode(
            f"{urllib.parse.quote(self.client_id, safe='')}:{urllib.parse.quote(self._secret() or '', safe='')}".encode()
        ).decode()
        request = urllib.request.Request(
            self.url,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded",
                     "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                doc = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise OAuthTokenError(
                f"the token endpoint {self.url} refused client {self.client_id!r}: HTTP {exc.code}"
                + (" (check OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET_FILE)" if exc.code in (400, 401, 403) else "")
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise OAuthTokenError(f"no token from the token endpoint {self.url}: {exc}") from None
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise OAuthTokenError(f"the token endpoint {self.url} answered without an access_token")
        expires_in = doc.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else DEFAULT_LIFETIME_S
        return token, lifetime
