"""Ray Serve synthesis service: a FastAPI ingress over one generator checkpoint.

    serve run serve.app:app checkpoint=runs/train/diffusion-demo/checkpoint_...   # 127.0.0.1:8000
    serve deploy serve/config.yaml                                               # a running Ray
    emogen serve --checkpoint PATH                                               # same, from the CLI

Endpoints: POST /v1/synthesize, GET /v1/emotions, GET /v1/info, GET /healthz, GET / (web
page), GET /docs (OpenAPI). Concurrent requests are batched on the replica with
`@serve.batch`; the batched, seed-deterministic sampling lives in emogen/service.py.
"""

# No `from __future__ import annotations`: the class is shipped to replicas by value and
# FastAPI must see real annotation objects (Request), not strings.

import asyncio
import logging
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from emogen import service as svc
from emogen.config import EMOTIONS

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="EmoGen synthesis",
    version="1",
    description="Emotional speech from a trained diffusion or VAE checkpoint. Same seed and parameters, same bytes.",
)


class BodyLimit:
    """Pure-ASGI middleware: request bodies over `limit` bytes -> 413 (checked on
    Content-Length and while streaming, so chunked uploads are bounded too)."""

    def __init__(self, app, limit: int = svc.DEFAULT_MAX_BODY_BYTES):
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
        body, more = b"", True
        while more:
            message = await receive()
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
        msg = f"body: request body larger than {self.limit} bytes".encode()
        payload = b'{"detail":[{"loc":["body"],"msg":"too large","type":"too_large"}],"message":"' + msg + b'"}'
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


api.add_middleware(BodyLimit)


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


@serve.deployment(
    name="EmoGen",
    max_ongoing_requests=64,
    health_check_period_s=10,
)
@serve.ingress(api)
class EmoGenService:
    """One replica: the generator (or the reason it failed to load) and the batch queue."""

    def __init__(self, checkpoint: str | None = None, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.05,
                 step_budget: int = svc.DEFAULT_STEP_BUDGET, api_key: str | None = None,
                 griffin_lim_iters: int | None = None, stack_rows: int = svc.DEFAULT_STACK_ROWS):
        self.checkpoint = checkpoint
        self.step_budget = int(step_budget)
        self.api_key = api_key or None
        self.stack_rows = int(stack_rows)
        self.generator = None
        self.renderer = None
        self.error: str | None = None
        self.batches: list[int] = []  # sizes of recent batches, for /v1/info
        self.handle_batch.set_max_batch_size(int(max_batch_size))
        self.handle_batch.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        try:
            if not checkpoint:
                raise ValueError("no checkpoint configured (args: checkpoint=PATH)")
            import torch

            from emogen.generate import EmotionGenerator

            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.generator = EmotionGenerator.from_checkpoint(checkpoint, device=device)
            self.renderer = svc.AudioRenderer(self.generator.audio, n_iter=griffin_lim_iters, stack_rows=self.stack_rows)
            logger.info("emogen: loaded %s checkpoint %s on %s", self.generator.kind, checkpoint, device)
        except Exception as exc:  # keep the replica alive and answer 503 with the reason
            self.error = f"model failed to load from {checkpoint!r}: {type(exc).__name__}: {exc}"
            logger.error("emogen: %s; serving 503 on /healthz and /v1/synthesize", self.error)

    # -------------------------------------------------------------------- helpers

    def _auth(self, request: Request) -> JSONResponse | None:
        if self.api_key and request.headers.get("x-api-key") != self.api_key:
            return JSONResponse(status_code=401, content={"message": "X-API-Key: missing or wrong API key", "detail": [{"loc": ["header", "X-API-Key"], "msg": "missing or wrong API key"}]})
        return None

    def _unavailable(self) -> JSONResponse:
        return JSONResponse(status_code=503, content={"status": "unavailable", "reason": self.error})

    def _info(self) -> dict[str, Any]:
        info = dict(self.generator.info) if self.generator else {"model": None, "checkpoint": self.checkpoint}
        info.update(
            config={
                "max_batch_size": self.handle_batch._get_max_batch_size() if hasattr(self.handle_batch, "_get_max_batch_size") else None,
                "step_budget": self.step_budget, "stack_rows": self.stack_rows,
                "max_body_bytes": svc.DEFAULT_MAX_BODY_BYTES, "api_key_required": bool(self.api_key),
                "sample_rate": self.generator.audio.sample_rate if self.generator else None,
            },
            recent_batch_sizes=self.batches[-20:],
            error=self.error,
        )
        return info

    # ------------------------------------------------------------------ endpoints

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(svc.page_html(self.generator.info if self.generator else {}))

    @api.get("/healthz")
    async def healthz(self):
        if self.error:
            return self._unavailable()
        return {"status": "ok", "model": self.generator.kind}

    @api.get("/v1/emotions")
    async def emotions(self, request: Request):
        return self._auth(request) or {"emotions": list(EMOTIONS)}

    @api.get("/v1/info")
    async def info(self, request: Request):
        return self._auth(request) or self._info()

    @api.post("/v1/synthesize", responses={200: {"content": {"audio/wav": {}, "application/zip": {}, "application/octet-stream": {}}}, 422: {"description": "a field is invalid (named in message)"}, 503: {"description": "model not loaded"}})
    async def synthesize(self, body: svc.SynthesisRequest, request: Request):
        denied = self._auth(request)
        if denied:
            return denied
        if self.error:
            return self._unavailable()
        try:
            job = svc.resolve(body, self.generator, self.step_budget)
        except svc.RequestError as exc:
            return JSONResponse(status_code=exc.status, content=exc.detail())
        started = time.perf_counter()
        mels, waves = await self.handle_batch(job)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._encode, body, job, mels, waves, time.perf_counter() - started)

    def _encode(self, body: svc.SynthesisRequest, job: svc.Job, mels, waves, seconds: float) -> Response:
        sr = self.renderer.sample_rate
        if body.format == "wav":
            return Response(svc.wav_bytes(waves[0], sr), media_type="audio/wav",
                            headers={"Content-Disposition": f'attachment; filename="{svc.clip_names(job)[0]}"'})
        if body.format == "zip":
            return Response(svc.zip_bytes(waves, sr, svc.clip_names(job)), media_type="application/zip",
                            headers={"Content-Disposition": f'attachment; filename="{job.emotion}_seed{job.seed}.zip"'})
        if body.format == "npy":
            return Response(svc.npy_bytes(mels), media_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{job.emotion}_seed{job.seed}.npy"'})
        return JSONResponse(svc.json_payload(job, mels, waves, sr, self.generator.info, body.image, seconds))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def handle_batch(self, jobs: list[svc.Job]) -> list[tuple]:
        # One stacked sampling run for the whole batch, off the event loop so /healthz and
        # validation keep answering while it runs.
        self.batches = (self.batches + [sum(j.num_samples for j in jobs)])[-100:]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._run, jobs)

    def _run(self, jobs: list[svc.Job]) -> list[tuple]:
        import numpy as np

        mel_list = svc.synthesize_mels(self.generator, jobs, stack_rows=self.stack_rows)
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


def build_app(args: dict[str, Any]):
    """Application builder: `serve run serve.app:app checkpoint=PATH [max_batch_size=8 ...]`.

    args (strings from the command line or serve/config.yaml): checkpoint, max_batch_size,
    batch_wait_timeout_s, step_budget, api_key (default $EMOGEN_API_KEY), griffin_lim_iters,
    stack_rows, num_replicas, num_cpus, num_gpus ("auto": 1 when this host has CUDA).
    """
    args = dict(args or {})

    def num(key, cast, default):
        value = args.get(key)
        return default if value in (None, "") else cast(value)

    options: dict[str, Any] = {}
    if args.get("num_replicas") not in (None, ""):
        options["num_replicas"] = int(args["num_replicas"])
    actor: dict[str, Any] = {}
    if args.get("num_cpus") not in (None, ""):
        actor["num_cpus"] = float(args["num_cpus"])
    gpus = str(args.get("num_gpus", "auto"))
    if gpus == "auto":
        import torch

        gpus = "1" if torch.cuda.is_available() else "0"
    if float(gpus) > 0:
        actor["num_gpus"] = float(gpus)
    if actor:
        options["ray_actor_options"] = actor
    deployment = EmoGenService.options(**options) if options else EmoGenService
    checkpoint = args.get("checkpoint")
    if checkpoint:  # replicas need not share this process's working directory
        checkpoint = os.path.abspath(checkpoint)
    return deployment.bind(
        checkpoint=checkpoint,
        max_batch_size=num("max_batch_size", int, 8),
        batch_wait_timeout_s=num("batch_wait_timeout_s", float, 0.05),
        step_budget=num("step_budget", int, svc.DEFAULT_STEP_BUDGET),
        api_key=args.get("api_key") or os.environ.get("EMOGEN_API_KEY"),
        griffin_lim_iters=num("griffin_lim_iters", int, None),
        stack_rows=num("stack_rows", int, svc.DEFAULT_STACK_ROWS),
    )


app = build_app
