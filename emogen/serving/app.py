"""Ray Serve synthesis application: a FastAPI ingress over one generator checkpoint.

    serve run emogen.serving.app:app checkpoint=runs/train/diffusion-demo   # 127.0.0.1:8000
    serve run serve/config.yaml                                              # autoscaling, GPUs
    emogen serve --checkpoint PATH                                           # same, from the CLI

Endpoints: POST /v1/synthesize, POST /v1/attention (PNG of the U-Net's self-attention),
GET /v1/emotions, GET /v1/info, GET /healthz, GET / (web page), GET /docs (OpenAPI).
Concurrent synthesis requests are batched on the replica (emogen.serving.batching: a
batch forms when the model is free) and synthesized together, mels and WAVs
(emogen.inference.synthesis). Each replica builds its own FastAPI app, so its limits
(settings.ServeArgs) live on the replica, in its middlewares (emogen.serving.middleware).
Each replica runs its model on the device decided in the replica from what Ray granted it
(emogen.models.device: the GPU it reserved with num_gpus, else the CPU); /v1/info names it.
"""

# No `from __future__ import annotations`: Ray Serve converts the builder's arguments to
# the pydantic model only when the parameter's annotation is the class itself, not a string.

import asyncio
import copy
import dataclasses
import logging
import re
import threading
import time
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.serve import Application

from emogen.config import EMOTIONS
from emogen.inference.attention import attention_png, capture_attention
from emogen.inference.generator import EmotionGenerator
from emogen.inference.schema import (
    DEFAULT_MAX_BODY_BYTES,
    AttentionRequest,
    Job,
    RequestError,
    SynthesisRequest,
    resolve,
    resolve_attention,
)
from emogen.inference.synthesis import AudioRenderer, synthesize_mels
from emogen.models.device import choose_device
from emogen.serving.batching import IdleBatcher
from emogen.serving.binding import serving_refusal
from emogen.serving.encoders import clip_names, json_payload, npy_bytes, wav_bytes, zip_bytes
from emogen.serving.errors import bucket_of, checkpoint_name, request_error_response, validation_error
from emogen.serving.middleware import BodyLimit, RequestGate
from emogen.serving.page import page_html
from emogen.serving.settings import MAX_ONGOING_REQUESTS, ServeArgs

__all__ = ["EmoGenService", "MAX_ONGOING_REQUESTS", "ServeArgs", "app"]  # ServeArgs too: callers build the app from here

logger = logging.getLogger("ray.serve")

SYNTHESIZE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"audio/wav": {}, "application/zip": {}, "application/octet-stream": {}}},
    422: {"description": "a field is invalid (named in message)"},
    503: {"description": "model not loaded"},
}
ATTENTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}},
    401: {"description": "missing or wrong API key"},
    422: {"description": "a field is invalid, or the checkpoint is a VAE (named in message)"},
    503: {"description": "model not loaded"},
}


class BatchAbandoned(Exception):
    """Raised between denoising steps when every client of the running batch has gone."""


@dataclasses.dataclass
class AbandonedBatches:
    """Batches stopped because every client had disconnected, and the last one's steps (for /v1/info)."""

    batches: int = 0
    last_step: int | None = None
    last_of: int | None = None


@serve.deployment(
    name="EmoGen",
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    health_check_period_s=10,
)
@serve.ingress()  # the app is built on the replica, around its own limits: __serve_build_asgi_app__
class EmoGenService:
    """One replica: its settings, the generator (or the reason it failed to load), the
    batch queue, and the HTTP app over them."""

    def __init__(self, args: ServeArgs):
        # `serve run serve/config.yaml` and `serve deploy` bind as their http_options say:
        # the replica refuses to start where `emogen serve` would refuse to bind
        refusal = serving_refusal(args.api_key)
        if refusal:
            raise RuntimeError(refusal)
        self.args = args
        self.generator: EmotionGenerator | None = None
        self.renderer: AudioRenderer | None = None
        self.error: str | None = None
        self.batches: list[int] = []  # clips in each recent batch, for /v1/info
        self.batch_count = 0  # batches run since start (tells a reader which recent ones are new)
        self.abandoned = AbandonedBatches()
        # /v1/attention hooks the U-Net it runs on, so it gets a private copy (made on first
        # use: most replicas never need the memory) that batched synthesis never touches;
        # the lock keeps two attention requests from hooking that copy at once.
        self.attention_generator: EmotionGenerator | None = None
        self.attention_lock = threading.Lock()
        self.batcher = IdleBatcher(self._run, args.max_batch_size, args.batch_wait_timeout_s,
                                   cost=lambda job: job.cost, long_cost=args.long_request_cost)
        self._load()

    def __serve_build_asgi_app__(self) -> FastAPI:
        """This replica's app (Ray Serve calls it after the constructor): the routes behind
        the request gate and body limit, with this replica's limits."""
        api = FastAPIOffline(  # /docs and /redoc from the app's own files: no CDN on an air-gapped cluster
            title="EmoGen synthesis",
            version="1",
            description="Emotional speech from a trained diffusion or VAE checkpoint. Same seed and parameters, same bytes.",
        )
        api.add_exception_handler(RequestValidationError, validation_error)
        api.add_middleware(BodyLimit, limit=DEFAULT_MAX_BODY_BYTES, timeout_s=self.args.body_timeout_s)
        # added last = outermost: runs before BodyLimit reads the body
        api.add_middleware(RequestGate, api_key=self.args.api_key, max_requests_per_client=self.args.max_requests_per_client)
        api.add_api_route("/", self.page, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
        api.add_api_route("/healthz", self.healthz, methods=["GET"])
        api.add_api_route("/v1/emotions", self.emotions, methods=["GET"])
        api.add_api_route("/v1/info", self.info, methods=["GET"])
        api.add_api_route("/v1/synthesize", self.synthesize, methods=["POST"], responses=SYNTHESIZE_RESPONSES)
        api.add_api_route("/v1/attention", self.attention, methods=["POST"], response_class=Response,
                          responses=ATTENTION_RESPONSES)
        return api

    def _load(self) -> None:
        """The generator and its renderer; on failure the replica stays alive and answers
        503 with the reason (never the server's paths or tracking URI)."""
        checkpoint, tracking_uri = self.args.checkpoint, self.args.tracking_uri
        try:
            if not checkpoint:
                raise ValueError("no checkpoint configured (args: checkpoint=PATH)")
            device = choose_device("auto")  # here, in the replica: the GPU Ray granted it, else the CPU
            self.generator = EmotionGenerator.from_checkpoint(checkpoint, device=device, tracking_uri=tracking_uri)
            self.renderer = AudioRenderer(self.generator.audio, n_iter=self.args.griffin_lim_iters)
            logger.info("emogen: loaded %s checkpoint %s on %s", self.generator.kind, checkpoint, device)
        except Exception as exc:
            reason = str(exc).replace(str(checkpoint), str(checkpoint_name(checkpoint)))
            bucket = bucket_of(checkpoint)
            if bucket:  # an object store's message names the bucket on its own too
                reason = re.sub(rf"\b{re.escape(bucket)}\b", "the bucket", reason)
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
            return None, request_error_response(exc)

    def _unavailable(self) -> JSONResponse:
        return JSONResponse(status_code=503, content={"status": "unavailable", "reason": self.error})

    def _info(self) -> dict[str, Any]:
        args = self.args
        info = self._public_info() if self.generator else {"model": None, "checkpoint": checkpoint_name(args.checkpoint)}
        info.update(
            device=str(self.generator.device) if self.generator else None,  # what this replica's model runs on
            config={
                "max_batch_size": self.batcher.max_batch_size,
                "batch_wait_timeout_s": self.batcher.batch_wait_timeout_s,
                "step_budget": args.step_budget, "stack_rows": args.stack_rows,
                "max_body_bytes": DEFAULT_MAX_BODY_BYTES, "body_timeout_s": args.body_timeout_s,
                "request_timeout_s": args.request_timeout_s,
                "long_request_cost": self.batcher.long_cost,
                "max_requests_per_client": args.max_requests_per_client,
                "api_key_required": bool(args.api_key),
                "sample_rate": self.generator.audio.sample_rate if self.generator else None,
            },
            recent_batch_sizes=self.batches[-20:],
            batch_count=self.batch_count,
            preemptions=self.batcher.preemptions,
            abandoned_batches=dataclasses.asdict(self.abandoned),
            error=self.error,
        )
        return info

    def _public_info(self) -> dict[str, Any]:
        return {**self.generator.info, "checkpoint": checkpoint_name(self.generator.info.get("checkpoint"))}

    # ------------------------------------------------------------------ endpoints

    async def page(self) -> HTMLResponse:
        return HTMLResponse(page_html(self.generator.info if self.generator else {}))

    async def healthz(self):
        if self.error:
            return self._unavailable()
        return {"status": "ok", "model": self.generator.kind}

    async def emotions(self):
        return {"emotions": list(EMOTIONS)}

    async def info(self):
        return self._info()

    async def synthesize(self, body: SynthesisRequest):
        job, refused = self._admit(lambda: resolve(body, self.generator, self.args.step_budget))
        if refused:
            return refused
        started = time.perf_counter()
        timeout = body.timeout_s or self.args.request_timeout_s
        try:  # past the deadline the request is cancelled, and with it its batch if it was alone
            mels, waves = await asyncio.wait_for(self.batcher.submit(job), timeout)
        except TimeoutError:
            return request_error_response(
                RequestError("timeout_s", f"not done within {timeout:g} s; the work was cancelled", status=504))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._encode, body, job, mels, waves, time.perf_counter() - started)

    async def attention(self, body: AttentionRequest):
        """PNG of the diffusion U-Net's self-attention while it generates clip 0 of the
        synthesis request with these fields (`emogen.inference.attention`; how to read it is there).

        The clip is regenerated alone with the request's seed. That is the served clip 0,
        up to rounding (synthesis runs rows in fixed stacks, this one row), for one-clip
        requests and for deterministic samplers (DDIM with eta 0, DPM). With DDPM or DDIM
        eta > 0 the clips of a several-clip request draw their per-step noise in turn from
        one generator, so that request's clip 0 is a different sample from this one.
        """
        job, refused = self._admit(lambda: resolve_attention(body, self.generator, self.args.step_budget))
        if refused:
            return refused
        loop = asyncio.get_running_loop()  # minutes of sampling: off the event loop, as synthesis
        png = await loop.run_in_executor(None, self._attention_png, job)
        return Response(png, media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{job.emotion}_seed{job.seed}_attention.png"'})

    def _attention_png(self, job: Job) -> bytes:
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
        self.batches = (self.batches + [sum(j.num_samples for j in jobs)])[-100:]
        self.batch_count += 1

        def between_steps(step: int, total: int) -> None:
            # a disconnected client cancels its request; when no client of the batch is
            # left, the replica is freed within one denoising step. A long batch lets
            # waiting short ones run here (and may have lost its clients meanwhile).
            self._stop_if_abandoned(step, total)
            self.batcher.between_steps()
            self._stop_if_abandoned(step, total)

        mel_list = synthesize_mels(self.generator, jobs, stack_rows=self.args.stack_rows, progress=between_steps)
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
            self.abandoned.batches += 1
            self.abandoned.last_step, self.abandoned.last_of = step, total
            raise BatchAbandoned(f"every client left at step {step} of {total}")


def app(args: ServeArgs) -> Application:
    """The application builder (`serve run emogen.serving.app:app checkpoint=PATH`): the
    deployment with the replica options args set, bound to args whole."""
    options = args.deployment_options()
    deployment = EmoGenService.options(**options) if options else EmoGenService
    return deployment.bind(args=args.for_replicas())
