"""The replica's middlewares as ASGI units (no Serve, no model): RequestGate's key, media
type and per-client cap before any body is read; BodyLimit's size and time limits; every
refusal shaped as the 422s are."""

from __future__ import annotations

import asyncio
import json

from emogen.serving.middleware import BodyLimit, RequestGate


class Downstream:
    """The app behind a middleware: records what it was called with and answers 200 with the body it read."""

    def __init__(self, hold: asyncio.Event | None = None):
        self.calls: list[str] = []
        self.hold = hold

    async def __call__(self, scope, receive, send):
        self.calls.append(scope["path"])
        body = b""
        if scope["type"] == "http" and scope.get("method") == "POST":
            message = await receive()
            body = message.get("body", b"")
        if self.hold is not None:
            await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def _scope(path="/v1/synthesize", method="POST", headers=(), client="10.0.0.1", root_path=""):
    return {"type": "http", "path": root_path + path, "root_path": root_path, "method": method,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers], "client": (client, 5000)}


def _chunks(*chunks: bytes, stall: bool = False):
    """An ASGI receive that yields these body chunks (then waits forever when `stall`)."""
    queue = list(chunks)

    async def receive():
        if queue:
            chunk = queue.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue) or stall}
        await asyncio.Event().wait()  # a client that sent part of its body and then nothing

    return receive


async def _call(app, scope, receive=None):
    """(status, headers, body) of one request through `app`."""
    sent = []

    async def send(message):
        sent.append(message)

    await app(scope, receive or _chunks(b'{"emotion": "fear"}'), send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


JSON = ("Content-Type", "application/json")


def test_the_gate_checks_the_key_before_the_media_type_and_reads_no_body():
    inner = Downstream()
    gate = RequestGate(inner, api_key="sesame")

    async def unread():
        raise AssertionError("the body was read")

    for headers in ((JSON,), (JSON, ("X-API-Key", "wrong")), (("Content-Type", "text/plain"), ("X-API-Key", "sesam"))):
        status, _, body = asyncio.run(_call(gate, _scope(headers=headers), unread))
        detail = json.loads(body)
        assert status == 401 and detail["message"] == "X-API-Key: missing or wrong API key"
        assert detail["detail"] == [{"loc": ["header", "X-API-Key"], "msg": "missing or wrong API key"}]
    assert asyncio.run(_call(gate, _scope(headers=(JSON, ("X-API-Key", "sesame")))))[0] == 200
    # outside /v1/ (health, page, docs) no key is asked for; under a route prefix /v1/ still is
    assert asyncio.run(_call(gate, _scope("/healthz", method="GET")))[0] == 200
    assert asyncio.run(_call(gate, _scope(headers=(JSON,), root_path="/locked")))[0] == 401
    assert inner.calls == ["/v1/synthesize", "/healthz"]


def test_the_gate_wants_json_bodies():
    gate = RequestGate(Downstream())
    status, _, body = asyncio.run(_call(gate, _scope(headers=(("Content-Type", "text/plain"),))))
    assert status == 415 and json.loads(body)["message"] == (
        "Content-Type: send the body as application/json (got text/plain)")
    status, _, body = asyncio.run(_call(gate, _scope()))
    assert status == 415 and "(got none)" in json.loads(body)["message"]
    assert asyncio.run(_call(gate, _scope(headers=(("Content-Type", "Application/JSON; charset=utf-8"),))))[0] == 200
    assert asyncio.run(_call(gate, _scope("/v1/info", method="GET")))[0] == 200  # a GET has no body to type


def test_the_gate_caps_one_clients_requests_at_once():
    async def scenario():
        hold = asyncio.Event()
        gate = RequestGate(Downstream(hold), max_requests_per_client=2)
        held = [asyncio.ensure_future(_call(gate, _scope(headers=(JSON,)))) for _ in range(2)]
        await asyncio.sleep(0.01)
        over = await _call(gate, _scope(headers=(JSON,)))
        other = asyncio.ensure_future(_call(gate, _scope(headers=(JSON,), client="10.0.0.2")))
        await asyncio.sleep(0.01)
        hold.set()
        done = [await h for h in held] + [await other]
        after = await _call(gate, _scope(headers=(JSON,)))  # the slots are given back
        return over, done, after, gate.in_flight

    (status, headers, body), done, after, in_flight = asyncio.run(scenario())
    assert status == 429 and headers[b"retry-after"] == b"1"
    assert json.loads(body)["message"] == "client: more than 2 requests at once from 10.0.0.1; retry later"
    assert [d[0] for d in done] == [200, 200, 200] and after[0] == 200 and in_flight == {}


def test_the_body_limit_refuses_large_bodies_declared_or_streamed():
    limit = BodyLimit(Downstream(), limit=100, timeout_s=5)
    status, _, body = asyncio.run(_call(limit, _scope(headers=(JSON, ("Content-Length", "101")))))
    assert status == 413 and json.loads(body)["message"] == "body: request body larger than 100 bytes"
    assert asyncio.run(_call(limit, _scope(headers=(JSON, ("Content-Length", "many")))))[0] == 413
    streamed = _chunks(*[b" " * 40] * 3)  # no Content-Length: counted while it arrives
    assert asyncio.run(_call(limit, _scope(headers=(JSON,)), streamed))[0] == 413
    # a body within the limit reaches the app whole, in one message
    status, _, body = asyncio.run(_call(limit, _scope(headers=(JSON,)), _chunks(b'{"emotion":', b' "fear"}')))
    assert status == 200 and body == b'{"emotion": "fear"}'


def test_the_body_limit_times_out_a_stalled_upload():
    limit = BodyLimit(Downstream(), limit=100, timeout_s=0.2)
    status, _, body = asyncio.run(_call(limit, _scope(headers=(JSON,)), _chunks(b'{"emo', stall=True)))
    assert status == 408 and json.loads(body)["message"] == "body: not received within 0.2 s"
    assert asyncio.run(_call(limit, _scope("/healthz", method="GET")))[0] == 200  # no body to wait for
