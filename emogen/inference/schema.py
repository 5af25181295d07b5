"""What a request may ask for (SynthesisRequest, AttentionRequest), how a refusal names its
field (RequestError) and the request with every default resolved from the checkpoint (Job)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    # deferred: type hints only; the request models stay light (the CLI's serve options read this module)
    from emogen.inference.generator import EmotionGenerator

DEFAULT_STEP_BUDGET = 4000  # steps x num_samples per request
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_BODY_TIMEOUT_S = 10.0  # the whole body must arrive within this (408 after)
DEFAULT_REQUEST_TIMEOUT_S = 300.0  # a synthesis not done by then gets 504 and is cancelled
DEFAULT_STACK_ROWS = 4  # rows per model call on a replica
# requests costing more (steps x num_samples) run preemptibly: short batches run between their steps
DEFAULT_LONG_REQUEST_COST = 100
DEFAULT_MAX_REQUESTS_PER_CLIENT = 32  # a client's requests on /v1/* in a replica at once (429 above)
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5  # an idle keep-alive connection is closed by the proxy after this


class SamplingRequest(BaseModel):
    """What one generated clip depends on: the fields /v1/synthesize and /v1/attention share.
    Unknown fields are rejected (422 naming them), and so are NaN and infinities (JSON
    parsers accept them; "Input should be a finite number")."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    emotion: Literal["anger", "sadness", "happiness", "neutral", "fear", "disgust"]
    sampler: Literal["ddim", "ddpm", "dpm"] | None = Field(None, description="diffusion only; default: the checkpoint's")
    steps: int | None = Field(None, ge=1, le=1000, description="diffusion sampling steps; default: the checkpoint's")
    guidance_scale: float | None = Field(None, ge=0.0, le=20.0, description="classifier-free guidance scale")
    eta: float | None = Field(None, ge=0.0, le=1.0, description="DDIM only: 0 deterministic, 1 DDPM-like")
    seed: int = Field(0, ge=0, le=2**63 - 1)


class SynthesisRequest(SamplingRequest):
    """POST /v1/synthesize body. Unknown fields are rejected (422 naming them)."""

    model_config = ConfigDict(json_schema_extra={"example": {"emotion": "fear", "num_samples": 2, "steps": 20, "seed": 0, "format": "zip"}})

    num_samples: int = Field(1, ge=1, le=16, description="clips to generate (1-16); format 'wav' needs 1")
    model: Literal["diffusion", "vae"] | None = Field(None, description="must match the loaded checkpoint's kind when given")
    format: Literal["wav", "zip", "npy", "json"] = Field("json", description="wav: one clip; zip: WAVs; npy: mels; json: metadata + base64 WAVs + mel PNG")
    image: bool = Field(True, description="json only: include a PNG of the mel-spectrograms")
    timeout_s: float | None = Field(None, gt=0, le=3600,
                                    description="give up after this many seconds: 504, and the work is cancelled; default: the service's")

    @model_validator(mode="after")
    def _wav_is_one_clip(self) -> "SynthesisRequest":
        if self.format == "wav" and self.num_samples != 1:
            raise ValueError("num_samples: format 'wav' returns one clip, so num_samples must be 1 (use 'zip' or 'json' for several)")
        return self


class AttentionRequest(SamplingRequest):
    """POST /v1/attention body: the sampling fields of a synthesis request; the maps are
    those of its clip 0 (`as_synthesis`)."""

    model_config = ConfigDict(json_schema_extra={"example": {"emotion": "fear", "steps": 20, "seed": 0}})

    def as_synthesis(self) -> SynthesisRequest:
        """The one-clip synthesis request whose clip the maps are of: same limits, same defaults."""
        return SynthesisRequest(**self.model_dump(), num_samples=1, format="npy")


class RequestError(ValueError):
    """A request that is valid JSON but not acceptable for this replica: (field, message)."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status

    def detail(self) -> dict:
        return {"detail": [{"loc": ["body", self.field], "msg": self.message, "type": "value_error"}], "message": f"{self.field}: {self.message}"}


@dataclass(frozen=True)
class Job:
    """A validated request with every default resolved: what the batched sampler consumes."""

    emotion: str
    num_samples: int
    sampler: str
    steps: int
    guidance_scale: float
    eta: float
    seed: int
    audio: bool = True  # False for format 'npy': no Griffin-Lim needed

    @property
    def cost(self) -> int:
        """Denoising steps times rows: what the replica's scheduler calls long or short."""
        return self.steps * self.num_samples

    @property
    def group(self) -> tuple:
        """Jobs with the same group can share one sampling loop."""
        return (self.sampler, self.steps, self.guidance_scale, self.eta)


def resolve(req: SynthesisRequest, generator: EmotionGenerator, step_budget: int = DEFAULT_STEP_BUDGET) -> Job:
    """Fill defaults from the checkpoint and apply the replica's limits (RequestError)."""
    if req.model is not None and req.model != generator.kind:
        raise RequestError("model", f"this service has a {generator.kind!r} checkpoint loaded, not {req.model!r}")
    if generator.kind == "vae":  # one decoder pass: sampler/steps/guidance do not apply
        return Job(req.emotion, req.num_samples, "none", 0, 0.0, 0.0, req.seed, req.format != "npy")
    cfg = generator.diffusion
    steps = req.steps or cfg.num_inference_steps
    sampler = req.sampler or cfg.sampler
    if sampler == "ddpm" and req.steps is None:
        steps = min(cfg.num_train_timesteps, max(steps, 1))
    if steps * req.num_samples > step_budget:
        if req.num_samples == 1:  # also every /v1/attention request, which has no num_samples to lower
            raise RequestError("steps", f"steps = {steps} exceeds this service's budget of {step_budget}; lower steps")
        raise RequestError(
            "steps", f"steps x num_samples = {steps} x {req.num_samples} = {steps * req.num_samples} exceeds this service's "
            f"budget of {step_budget}; lower steps or num_samples")
    guidance = cfg.guidance_scale if req.guidance_scale is None else req.guidance_scale
    eta = cfg.eta if req.eta is None else req.eta
    return Job(req.emotion, req.num_samples, sampler, int(steps), float(guidance), float(eta), req.seed, req.format != "npy")


def resolve_attention(req: AttentionRequest, generator: EmotionGenerator, step_budget: int = DEFAULT_STEP_BUDGET) -> Job:
    """The Job of clip 0 of the same synthesis request, for `capture_attention`: a VAE has
    no U-Net to look into (RequestError), everything else as `resolve`."""
    if generator.kind != "diffusion":
        raise RequestError("model", f"attention maps need a diffusion checkpoint; this replica serves a {generator.kind}")
    return resolve(req.as_synthesis(), generator, step_budget)
