"""The service's settings, listed once: `ServeArgs` is what `serve run emogen.serving.app:app
KEY=VALUE ...` and serve/config.yaml's `args` are validated into, what `emogen serve` builds
its options from (one per field, named after it), and what each replica is constructed with.

Light to import (no Ray, no torch): the CLI builds its parser from it.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from emogen import storage
from emogen.inference.schema import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_LONG_REQUEST_COST,
    DEFAULT_MAX_REQUESTS_PER_CLIENT,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_STACK_ROWS,
    DEFAULT_STEP_BUDGET,
)
from emogen.tracking.registry import MODEL_URIS, TRACKING_URI_HELP, is_model_uri
from emogen.tracking.runs import resolve_tracking_uri

API_KEY_VARIABLE = "EMOGEN_API_KEY"

# Requests a replica admits at once. Sampling is serialized by the batcher whatever this
# is; an admitted request that waits (for its body, bounded by the body timeout, or in the
# batcher's queue) costs only a coroutine, so the limit is high: a low one lets stalled
# uploads fill every slot, and /healthz then queues behind them in the proxy.
MAX_ONGOING_REQUESTS = 1024


class ServeArgs(BaseModel):
    """The application's arguments. Ray Serve validates `serve run` and config-file args
    into this model (strings converted); the deployment is bound to it whole. A field's
    description is its `emogen serve --field-name` help."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(
        None, description=f"diffusion or VAE run folder, checkpoint folder or state.pt (local or s3://...), or {MODEL_URIS}")
    tracking_uri: str | None = Field(None, description=TRACKING_URI_HELP)
    max_batch_size: int = Field(8, description="requests per batch (a batch forms when the model is free)")
    batch_wait_timeout_s: float = Field(
        0.05, description="seconds a batch may wait for the clients the last batch answered")
    step_budget: int = Field(DEFAULT_STEP_BUDGET, description="max steps x num_samples per request (422 above)")
    api_key: str | None = Field(
        None, validate_default=True, description=f"require X-API-Key on /v1/* (default: ${API_KEY_VARIABLE})")
    griffin_lim_iters: int | None = Field(None, description="Griffin-Lim iterations per clip (default: the audio config's)")
    stack_rows: int = Field(
        DEFAULT_STACK_ROWS, description="rows per model call (fixed, so a clip's numbers do not depend on its batch)")
    body_timeout_s: float = Field(
        DEFAULT_BODY_TIMEOUT_S, description="seconds a request's whole body may take to arrive (408 after)")
    request_timeout_s: float = Field(
        DEFAULT_REQUEST_TIMEOUT_S,
        description="seconds a synthesis may take unless it asks for less (timeout_s); 504 and cancelled after")
    long_request_cost: int = Field(
        DEFAULT_LONG_REQUEST_COST,
        description="requests above this many steps x samples let shorter ones run between their steps")
    max_requests_per_client: int = Field(
        DEFAULT_MAX_REQUESTS_PER_CLIENT, description="a client's /v1/* requests at once per replica (429 above; 0: no cap)")
    num_replicas: int | None = Field(None, description="replicas (default: one)")
    max_ongoing_requests: int | None = Field(
        None, description=f"requests a replica admits at once (default: {MAX_ONGOING_REQUESTS})")
    num_cpus: float | None = Field(None, description="CPUs per replica (default: Ray Serve's)")
    # A number, not "auto": the application is built once, before any replica exists, by
    # `emogen serve`'s process or the Serve controller (on the shipped cluster, the CPU head,
    # while its GPU workers may not be up yet), so nothing there tells whether the nodes
    # that will run the replicas have GPUs. The replica then runs on what Ray granted it
    # (emogen.models.device).
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs Ray reserves per replica (0: none, the replica runs on the CPU; "
                               "1 on GPU nodes: the replica runs on the GPU it is granted)")

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: Any) -> Any:
        # `serve run ... key=` passes an empty string: take the default, as for a missing key
        return {k: v for k, v in data.items() if v != ""} if isinstance(data, dict) else data

    @field_validator("num_gpus", mode="before")
    @classmethod
    def _a_number_of_gpus(cls, gpus: Any) -> Any:
        if gpus == "auto":
            raise ValueError("num_gpus takes a number of GPUs per replica (0: the CPU, 1 on GPU nodes); 'auto' "
                             "cannot be decided where the application is built, which need not be where replicas run")
        return gpus

    @field_validator("api_key")
    @classmethod
    def _key_from_environment(cls, key: str | None) -> str | None:
        # the one place the key is read: as given, else from the environment where the
        # application is built (replicas get the validated model, not the environment)
        return key or os.environ.get(API_KEY_VARIABLE) or None

    def for_replicas(self) -> ServeArgs:
        """These args as a replica must see them: replicas need not share this process's
        working directory, so a checkpoint path and the default (local) tracking store
        are made absolute; a storage or model URI stays as it is (each replica fetches it
        into its own node's cache)."""
        checkpoint = self.checkpoint
        if checkpoint and not is_model_uri(checkpoint):
            checkpoint = storage.absolute(checkpoint)
        return self.model_copy(update={"checkpoint": checkpoint, "tracking_uri": resolve_tracking_uri(self.tracking_uri)})

    def deployment_options(self) -> dict[str, Any]:
        """The keywords of `EmoGenService.options(...)` these args set (none: the deployment's own)."""
        options: dict[str, Any] = {}
        if self.num_replicas is not None:
            options["num_replicas"] = self.num_replicas
        if self.max_ongoing_requests is not None:
            options["max_ongoing_requests"] = self.max_ongoing_requests
        actor: dict[str, Any] = {}
        if self.num_cpus is not None:
            actor["num_cpus"] = self.num_cpus
        if self.num_gpus > 0:
            actor["num_gpus"] = float(self.num_gpus)
        if actor:
            options["ray_actor_options"] = actor
        return options
