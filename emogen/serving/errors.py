"""How the service refuses: every 4xx/5xx body names the field at fault in `detail` (a
list of {loc, msg}) and says it in one readable `message`, whether a middleware, FastAPI's
validation or a route refused; and what a response may say about the checkpoint."""

from __future__ import annotations

import json
from collections.abc import Sequence

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import Send

from emogen import storage
from emogen.inference.schema import RequestError
from emogen.tracking.registry import is_model_uri


def checkpoint_name(path: str | None) -> str | None:
    """What responses call a checkpoint: its run folder and checkpoint folder names, never
    the absolute path (which tells a client about the server's disk) nor, on object
    storage, the bucket; an MLflow model URI as it is (with the version it resolved to)."""
    if not path or is_model_uri(str(path)):
        return path
    text = str(path)
    if storage.is_uri(text):
        text = text.split("://", 1)[1].partition("/")[2]
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:])


def bucket_of(location: str | None) -> str | None:
    """The bucket of a storage URI (s3://BUCKET/...), None for anything else: a storage
    error's text may name it apart from the URI."""
    if not location or not storage.is_uri(location):
        return None
    return location.split("://", 1)[1].partition("/")[0] or None


async def refuse(send: Send, status: int, field: str, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """An ASGI refusal shaped as the 422s are: the field ("body", "header.X-API-Key") in
    `detail` and a readable `message`."""
    loc = field.split(".")
    payload = json.dumps({"detail": [{"loc": loc, "msg": message}], "message": f"{loc[-1]}: {message}"}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


def request_error_response(error: RequestError) -> JSONResponse:
    """A route's refusal of a request that parsed but does not fit this replica."""
    return JSONResponse(status_code=error.status, content=error.detail())


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with every offending field named, plus one readable line."""
    errors = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p != "body" and not isinstance(p, int)]
        msg = str(e.get("msg", ""))
        if not loc and msg.startswith("Value error, ") and ":" in msg:  # model-level checks name their field
            loc = [msg[len("Value error, "):].split(":", 1)[0]]
        errors.append({"loc": ["body", *loc], "msg": msg, "type": e.get("type")})
    message = "; ".join(f"{'.'.join(e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": errors, "message": message})
