"""The replica's pure-ASGI middlewares, outermost first: `RequestGate` (the checks that need
no body) and `BodyLimit` (how much body, how fast). Each takes its limits when it is built,
so every replica's app carries its own."""

from __future__ import annotations

import asyncio
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from emogen.inference.schema import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES
from emogen.serving.errors import refuse


class RequestGate:
    """Outermost: the checks that need no body, before a byte of it is read. The API key
    (401 for a missing or wrong key on /v1/*, whatever the body; compared in constant
    time), then the media type of POST bodies (415 unless application/json), then the
    client's share of the replica: at most `max_requests_per_client` of its /v1/* requests
    at once (429 above; 0 or None: no cap), so one client's stalled uploads or flood cannot
    take every slot. A client is its address as the proxy saw it."""

    def __init__(self, app: ASGIApp, api_key: str | None = None, max_requests_per_client: int | None = None):
        self.app = app
        self.api_key = api_key or None
        self.max_requests_per_client = max_requests_per_client
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")  # the route prefix under Serve ("/locked/v1/..." -> "/v1/...")
        if root and path.startswith(root):
            path = path[len(root):]
        if scope["type"] != "http" or not path.startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and not hmac.compare_digest(headers.get(b"x-api-key", b""), self.api_key.encode()):
            return await refuse(send, 401, "header.X-API-Key", "missing or wrong API key")
        if scope.get("method") == "POST":
            media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media_type != b"application/json":
                shown = media_type.decode(errors="replace") or "none"
                return await refuse(send, 415, "header.Content-Type", f"send the body as application/json (got {shown})")
        cap = self.max_requests_per_client
        client = (scope.get("client") or ("unknown", 0))[0]
        if cap and self.in_flight.get(client, 0) >= cap:
            return await refuse(send, 429, "client", f"more than {cap} requests at once from {client}; retry later",
                                headers=[(b"retry-after", b"1")])
        self.in_flight[client] = self.in_flight.get(client, 0) + 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]


class BodyLimit:
    """Request bodies over `limit` bytes -> 413 (checked on Content-Length and while
    streaming, so chunked uploads are bounded too), and bodies not complete within
    `timeout_s` -> 408. A client that sends headers and then stalls holds a request slot of
    the replica only that long, so stalled uploads cannot stop the service."""

    def __init__(self, app: ASGIApp, limit: int = DEFAULT_MAX_BODY_BYTES, timeout_s: float = DEFAULT_BODY_TIMEOUT_S):
        self.app, self.limit = app, limit
        self.timeout_s = float(timeout_s or DEFAULT_BODY_TIMEOUT_S)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        try:
            too_big = length is not None and int(length) > self.limit
        except ValueError:
            too_big = True
        if too_big:
            return await self._reject(send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body, more = b"", True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return await refuse(send, 408, "body", f"not received within {self.timeout_s:g} s")
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._reject(send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        await refuse(send, 413, "body", f"request body larger than {self.limit} bytes")
