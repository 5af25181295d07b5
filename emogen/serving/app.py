"""Ray Serve synthesis application: a FastAPI ingress over one generator checkpoint.

    serve run emogen.serving.app:app checkpoint=runs/train/diffusion-demo   # 127.0.0.1:8000
    serve run serve/config.yaml                                              # autoscaling, GPUs
    emogen serve --checkpoint PATH                                           # same, from the CLI

Endpoints: POST /v1/synthesize, POST /v1/attention (PNG of the U-Net's self-attention),
GET /v1/emotions, GET /v1/info, GET /healthz, GET / (web page), GET /docs (OpenAPI).
Concurrent synthesis requests are batched on the replica (emogen.serving.batching: a
batch forms when the model is free) and synthesized together, mels and WAVs
(emogen.inference.synthesis).
"""

# No `from __future__ import annotations`: Ray Serve converts the builder's arguments to
# the pydantic model only when the parameter's annotation is the class itself, not a string.

import asyncio
import copy
import hmac
import json
import logging
import os
import threading
import time
from functools import cache
from importlib.resources import files
from typing import Any, Callable, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, model_validator
from ray import serve
from ray.serve import Application

from emogen.config import EMOTIONS
from emogen.tracking.registry import is_model_uri
from emogen.serving.batching import IdleBatcher
from emogen.serving.encoders import clip_names, json_payload, npy_bytes, wav_bytes, zip_bytes
from emogen.serving.binding import serving_refusal
from emogen.inference.schema import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_LONG_REQUEST_COST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_REQUESTS_PER_CLIENT,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_STACK_ROWS,
    DEFAULT_STEP_BUDGET,
    AttentionRequest,
    Job,
    RequestError,
    SynthesisRequest,
    resolve,
    resolve_attention,
)
from emogen.inference.synthesis import AudioRenderer, synthesize_mels
from emogen.tracking.runs import resolve_tracking_uri

logger = logging.getLogger("ray.serve")

# /docs and /redoc with Swagger UI's and ReDoc's files served by the app itself (FastAPI's
# default loads them from a public CDN: a blank page on an air-gapped cluster).
api = FastAPIOffline(
    title="EmoGen synthesis",
    version="1",
    description="Emotional speech from a trained diffusion or VAE checkpoint. Same seed and parameters, same bytes.",
)


class BodyLimit:
    """Pure-ASGI middleware: request bodies over `limit` bytes -> 413 (checked on
    Content-Length and while streaming, so chunked uploads are bounded too), and bodies not
    complete within the replica's `body_timeout_s` -> 408. A client that sends headers and
    then stalls holds a request slot of the replica only that long (64 such clients used
    to stop the service: every slot waited forever for a body)."""

    def __init__(self, app, limit: int = DEFAULT_MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
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
        timeout = (getattr(scope["app"].state, "body_timeout_s", None) if "app" in scope else None) or DEFAULT_BODY_TIMEOUT_S
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        body, more = b"", True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return await refuse(send, 408, "body", f"not received within {timeout:g} s")
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

    async def _reject(self, send):
        await refuse(send, 413, "body", f"request body larger than {self.limit} bytes")


def checkpoint_name(path: str | None) -> str | None:
    """What responses call a checkpoint: its run folder and checkpoint folder names, never
    the absolute path (which tells a client about the server's disk); an MLflow model URI
    as it is (with the version it resolved to)."""
    if not path or is_model_uri(str(path)):
        return path
    parts = [p for p in str(path).replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:])


async def refuse(send, status: int, field: str, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """An ASGI refusal shaped as the 422s are: the field ("body", "header.X-API-Key") in
    `detail` and a readable `message`."""
    loc = field.split(".")
    payload = json.dumps({"detail": [{"loc": loc, "msg": message}], "message": f"{loc[-1]}: {message}"}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class BatchAbandoned(Exception):
    """Raised between denoising steps when every client of the running batch has gone."""


class RequestGate:
    """Pure-ASGI middleware, outermost: the checks that need no body, before a byte of it is
    read. The API key (401 for a missing or wrong key on /v1/*, whatever the body;
    compared in constant time), then the media type of POST bodies (415 unless
    application/json), then the client's share of the replica: at most
    `max_requests_per_client` of its /v1/* requests at once (429 above), so one client's
    stalled uploads or flood cannot take every slot. The limits are the replica's
    (`api.state`, set at start); a client is its address as the proxy saw it."""

    def __init__(self, app):
        self.app = app
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        root = scope.get("root_path", "")  # the route prefix under Serve ("/locked/v1/..." -> "/v1/...")
        if root and path.startswith(root):
            path = path[len(root):]
        if scope["type"] != "http" or not path.startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        key = getattr(scope["app"].state, "api_key", None) if "app" in scope else None
        if key and not hmac.compare_digest(headers.get(b"x-api-key", b""), key.encode()):
            return await refuse(send, 401, "header.X-API-Key", "missing or wrong API key")
        if scope.get("method") == "POST":
            media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media_type != b"application/json":
                shown = media_type.decode(errors="replace") or "none"
                return await refuse(send, 415, "header.Content-Type", f"send the body as application/json (got {shown})")
        cap = getattr(scope["app"].state, "max_requests_per_client", None) if "app" in scope else None
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


api.add_middleware(BodyLimit)
api.add_middleware(RequestGate)  # added last = outermost: runs before BodyLimit reads the body


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    # 422 with every offending field named, plus one readable line.
    errors = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p != "body" and not isinstance(p, int)]
        msg = str(e.get("msg", ""))
        if not loc and msg.startswith("Value error, ") and ":" in msg:  # model-level checks name their field
            loc = [msg[len("Value error, "):].split(":", 1)[0]]
        errors.append({"loc": ["body", *loc], "msg": msg, "type": e.get("type")})
    message = "; ".join(f"{'.'.join(e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": errors, "message": message})


@cache
def _page_template() -> str:
    return files("emogen.serving").joinpath("page.html").read_text(encoding="utf-8")


# Offered only for a diffusion model: a VAE has no U-Net, so /v1/attention would refuse it.
ATTENTION_CHECKBOX = '<label><input id="show_attention" type="checkbox"> Show attention</label>'


def page_html(info: dict) -> str:
    """The web page: an emotion picker, the checkpoint's default steps, the model kind, and
    for a diffusion model the "Show attention" checkbox."""
    options = "".join(f'<option value="{e}">{e}</option>' for e in EMOTIONS)
    steps = info.get("default_steps") or 1
    attention = ATTENTION_CHECKBOX if info.get("model") == "diffusion" else ""
    return (_page_template().replace("__OPTIONS__", options).replace("__STEPS__", str(steps))
            .replace("__ATTENTION__", attention).replace("__MODEL__", str(info.get("model", "not loaded"))))


# Requests a replica admits at once. Sampling is serialized by the batcher whatever this
# is; an admitted request that waits (for its body, bounded by the body timeout, or in the
# batcher's queue) costs a coroutine, so the limit is high: at 64, stalled uploads filled
# every slot and /healthz queued behind them in the proxy.
MAX_ONGOING_REQUESTS = 1024


@serve.deployment(
    name="EmoGen",
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    health_check_period_s=10,
)
@serve.ingress(api)
class EmoGenService:
    """One replica: the generator (or the reason it failed to load) and the batch queue."""

    def __init__(self, checkpoint: str | None = None, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.05,
                 step_budget: int = DEFAULT_STEP_BUDGET, api_key: str | None = None,
                 griffin_lim_iters: int | None = None, stack_rows: int = DEFAULT_STACK_ROWS,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 long_request_cost: int = DEFAULT_LONG_REQUEST_COST,
                 max_requests_per_client: int = DEFAULT_MAX_REQUESTS_PER_CLIENT, tracking_uri: str | None = None):
        # `serve run serve/config.yaml` and `serve deploy` bind as their http_options say:
        # the replica refuses to start where `emogen serve` would refuse to bind
        refusal = serving_refusal(api_key)
        if refusal:
            raise RuntimeError(refusal)
        self.checkpoint = checkpoint
        self.step_budget = int(step_budget)
        self.request_timeout_s = float(request_timeout_s)
        self.api_key = api_key or None
        # for the middlewares (one replica per process): RequestGate's key, BodyLimit's deadline
        api.state.api_key = self.api_key
        api.state.body_timeout_s = float(body_timeout_s)
        api.state.max_requests_per_client = int(max_requests_per_client)
        self.stack_rows = int(stack_rows)
        self.generator = None
        self.renderer = None
        self.error: str | None = None
        self.batches: list[int] = []  # clips in each recent batch, for /v1/info
        self.batch_count = 0  # batches run since start (tells a reader which recent ones are new)
        # batches stopped because every client had disconnected, and the last one's steps
        self.abandoned: dict[str, Any] = {"batches": 0, "last_step": None, "last_of": None}
        # /v1/attention hooks the U-Net it runs on, so it gets a private copy (made on first
        # use: most replicas never need the memory) that batched synthesis never touches;
        # the lock keeps two attention requests from hooking that copy at once.
        self.attention_generator = None
        self.attention_lock = threading.Lock()
        self.batcher = IdleBatcher(self._run, int(max_batch_size), float(batch_wait_timeout_s),
                                   cost=lambda job: job.cost, long_cost=int(long_request_cost))
        try:
            if not checkpoint:
                raise ValueError("no checkpoint configured (args: checkpoint=PATH)")
            import torch

            from emogen.inference.generator import EmotionGenerator

            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.generator = EmotionGenerator.from_checkpoint(checkpoint, device=device, tracking_uri=tracking_uri)
            self.renderer = AudioRenderer(self.generator.audio, n_iter=griffin_lim_iters)
            logger.info("emogen: loaded %s checkpoint %s on %s", self.generator.kind, checkpoint, device)
        except Exception as exc:  # keep the replica alive and answer 503 with the reason
            reason = str(exc).replace(str(checkpoint), str(checkpoint_name(checkpoint)))
            if tracking_uri:  # a server address or a database path: not the client's business
                reason = reason.replace(tracking_uri, "the tracking URI")
            self.error = f"model failed to load from {checkpoint_name(checkpoint)!r}: {type(exc).__name__}: {reason}"
            logger.error("emogen: %s; serving 503 on /healthz and /v1/synthesize", self.error)

    # -------------------------------------------------------------------- helpers

    def _admit(self, resolve_body: Callable[[], Job]) -> tuple[Job | None, JSONResponse | None]:
        """The checks every sampling endpoint makes after RequestGate's key and media type:
        the model (503), then the fields (422); returns (job, None) or (None, the refusal)."""
        if self.error:
            return None, self._unavailable()
        try:
            return resolve_body(), None
        except RequestError as exc:
            return None, JSONResponse(status_code=exc.status, content=exc.detail())

    def _unavailable(self) -> JSONResponse:
        return JSONResponse(status_code=503, content={"status": "unavailable", "reason": self.error})

    def _info(self) -> dict[str, Any]:
        info = self._public_info() if self.generator else {"model": None, "checkpoint": checkpoint_name(self.checkpoint)}
        info.update(
            config={
                "max_batch_size": self.batcher.max_batch_size,
                "batch_wait_timeout_s": self.batcher.batch_wait_timeout_s,
                "step_budget": self.step_budget, "stack_rows": self.stack_rows,
                "max_body_bytes": DEFAULT_MAX_BODY_BYTES, "body_timeout_s": api.state.body_timeout_s,
                "request_timeout_s": self.request_timeout_s,
                "long_request_cost": self.batcher.long_cost,
                "max_requests_per_client": api.state.max_requests_per_client,
                "api_key_required": bool(self.api_key),
                "sample_rate": self.generator.audio.sample_rate if self.generator else None,
            },
            recent_batch_sizes=self.batches[-20:],
            batch_count=self.batch_count,
            preemptions=self.batcher.preemptions,
            abandoned_batches=dict(self.abandoned),
            error=self.error,
        )
        return info

    def _public_info(self) -> dict[str, Any]:
        return {**self.generator.info, "checkpoint": checkpoint_name(self.generator.info.get("checkpoint"))}

    # ------------------------------------------------------------------ endpoints

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(page_html(self.generator.info if self.generator else {}))

    @api.get("/healthz")
    async def healthz(self):
        if self.error:
            return self._unavailable()
        return {"status": "ok", "model": self.generator.kind}

    @api.get("/v1/emotions")
    async def emotions(self):
        return {"emotions": list(EMOTIONS)}

    @api.get("/v1/info")
    async def info(self):
        return self._info()

    @api.post("/v1/synthesize", responses={200: {"content": {"audio/wav": {}, "application/zip": {}, "application/octet-stream": {}}}, 422: {"description": "a field is invalid (named in message)"}, 503: {"description": "model not loaded"}})
    async def synthesize(self, body: SynthesisRequest):
        job, refused = self._admit(lambda: resolve(body, self.generator, self.step_budget))
        if refused:
            return refused
        started = time.perf_counter()
        timeout = body.timeout_s or self.request_timeout_s
        try:  # past the deadline the request is cancelled, and with it its batch if it was alone
            mels, waves = await asyncio.wait_for(self.batcher.submit(job), timeout)
        except TimeoutError:
            late = RequestError("timeout_s", f"not done within {timeout:g} s; the work was cancelled", status=504)
            return JSONResponse(status_code=late.status, content=late.detail())
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._encode, body, job, mels, waves, time.perf_counter() - started)

    @api.post("/v1/attention", response_class=Response, responses={200: {"content": {"image/png": {}}}, 401: {"description": "missing or wrong API key"}, 422: {"description": "a field is invalid, or the checkpoint is a VAE (named in message)"}, 503: {"description": "model not loaded"}})
    async def attention(self, body: AttentionRequest):
        """PNG of the diffusion U-Net's self-attention while it generates clip 0 of the
        synthesis request with these fields (`emogen.inference.attention`; how to read it is there).

        The clip is regenerated alone with the request's seed. That is the served clip 0,
        up to rounding (synthesis runs rows in fixed stacks, this one row), for one-clip
        requests and for deterministic samplers (DDIM with eta 0, DPM). With DDPM or DDIM
        eta > 0 the clips of a several-clip request draw their per-step noise in turn from
        one generator, so that request's clip 0 is a different sample from this one.
        """
        job, refused = self._admit(lambda: resolve_attention(body, self.generator, self.step_budget))
        if refused:
            return refused
        loop = asyncio.get_running_loop()  # minutes of sampling: off the event loop, as synthesis
        png = await loop.run_in_executor(None, self._attention_png, job)
        return Response(png, media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{job.emotion}_seed{job.seed}_attention.png"'})

    def _attention_png(self, job: Job) -> bytes:
        from emogen.inference.attention import attention_png, capture_attention

        with self.attention_lock:
            if self.attention_generator is None:
                self.attention_generator = copy.deepcopy(self.generator)
            maps = capture_attention(self.attention_generator, job.emotion, seed=job.seed, sampler=job.sampler,
                                     steps=job.steps, guidance_scale=job.guidance_scale, eta=job.eta)
        return attention_png(maps)  # the maps are plain arrays: render outside the lock

    def _encode(self, body: SynthesisRequest, job: Job, mels, waves, seconds: float) -> Response:
        sr = self.renderer.sample_rate
        if body.format == "wav":
            return Response(wav_bytes(waves[0], sr), media_type="audio/wav",
                            headers={"Content-Disposition": f'attachment; filename="{clip_names(job)[0]}"'})
        if body.format == "zip":
            return Response(zip_bytes(waves, sr, clip_names(job)), media_type="application/zip",
                            headers={"Content-Disposition": f'attachment; filename="{job.emotion}_seed{job.seed}.zip"'})
        if body.format == "npy":
            return Response(npy_bytes(mels), media_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{job.emotion}_seed{job.seed}.npy"'})
        return JSONResponse(json_payload(job, mels, waves, sr, self._public_info(), body.image, seconds))

    def _run(self, jobs: list[Job]) -> list[tuple]:
        """One batch (in the batcher's thread): one stacked sampling run for all its mels,
        then one Griffin-Lim call for every clip that is returned as audio."""
        import numpy as np

        self.batches = (self.batches + [sum(j.num_samples for j in jobs)])[-100:]
        self.batch_count += 1

        def between_steps(step: int, total: int) -> None:
            # a disconnected client cancels its request; when no client of the batch is
            # left, the replica is freed within one denoising step. A long batch lets
            # waiting short ones run here (and may have lost its clients meanwhile).
            self._stop_if_abandoned(step, total)
            self.batcher.between_steps()
            self._stop_if_abandoned(step, total)

        mel_list = synthesize_mels(self.generator, jobs, stack_rows=self.stack_rows, progress=between_steps)
        need = [m for m, j in zip(mel_list, jobs) if j.audio]  # Griffin-Lim only where audio is returned
        waves = self.renderer(np.concatenate(need)) if need else None
        out, offset = [], 0
        for mels, job in zip(mel_list, jobs):
            if job.audio:
                out.append((mels, waves[offset:offset + len(mels)]))
                offset += len(mels)
            else:
                out.append((mels, None))
        return out

    def _stop_if_abandoned(self, step: int, total: int) -> None:
        if self.batcher.abandoned():
            self.abandoned.update(batches=self.abandoned["batches"] + 1, last_step=step, last_of=total)
            raise BatchAbandoned(f"every client left at step {step} of {total}")


class ServeArgs(BaseModel):
    """The application's arguments: `serve run emogen.serving.app:app checkpoint=PATH
    max_batch_size=8 ...`, the `args` of serve/config.yaml, or `emogen serve`'s options.
    Ray Serve validates them into this model (strings from the command line converted)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    step_budget: int = DEFAULT_STEP_BUDGET  # max steps x num_samples per request
    api_key: str | None = None  # default: $EMOGEN_API_KEY
    griffin_lim_iters: int | None = None
    stack_rows: int = DEFAULT_STACK_ROWS  # rows per model call (fixed: batch-independent numbers)
    num_replicas: int | None = None
    max_ongoing_requests: int | None = None  # default: MAX_ONGOING_REQUESTS
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # a request's whole body within this, else 408
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S  # a synthesis's default deadline (504 after)
    long_request_cost: int = DEFAULT_LONG_REQUEST_COST  # steps x samples above which short requests run in between
    max_requests_per_client: int = DEFAULT_MAX_REQUESTS_PER_CLIENT  # a client's /v1/* requests at once (0: no cap)
    tracking_uri: str | None = None  # where a models:/ or runs:/ checkpoint resolves (default: emogen.tracking's)
    num_cpus: float | None = None
    num_gpus: float | Literal["auto"] = "auto"  # auto: 1 when this host has CUDA

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: Any) -> Any:
        # `serve run ... key=` passes an empty string: take the default, as for a missing key
        return {k: v for k, v in data.items() if v != ""} if isinstance(data, dict) else data


def app(args: ServeArgs) -> Application:
    """The application builder (`serve run emogen.serving.app:app checkpoint=PATH`)."""
    options: dict[str, Any] = {}
    if args.num_replicas is not None:
        options["num_replicas"] = args.num_replicas
    if args.max_ongoing_requests is not None:
        options["max_ongoing_requests"] = args.max_ongoing_requests
    actor: dict[str, Any] = {}
    if args.num_cpus is not None:
        actor["num_cpus"] = args.num_cpus
    gpus = args.num_gpus
    if gpus == "auto":
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0
    if gpus > 0:
        actor["num_gpus"] = float(gpus)
    if actor:
        options["ray_actor_options"] = actor
    deployment = EmoGenService.options(**options) if options else EmoGenService
    # replicas need not share this process's working directory: paths and the default
    # (local) tracking store are made absolute here
    checkpoint = args.checkpoint if not args.checkpoint or is_model_uri(args.checkpoint) else os.path.abspath(args.checkpoint)
    return deployment.bind(
        checkpoint=checkpoint,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s,
        step_budget=args.step_budget,
        api_key=args.api_key or os.environ.get("EMOGEN_API_KEY"),
        griffin_lim_iters=args.griffin_lim_iters,
        stack_rows=args.stack_rows,
        body_timeout_s=args.body_timeout_s,
        request_timeout_s=args.request_timeout_s,
        long_request_cost=args.long_request_cost,
        max_requests_per_client=args.max_requests_per_client,
        tracking_uri=resolve_tracking_uri(args.tracking_uri),
    )
