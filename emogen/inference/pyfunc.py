"""The MLflow pyfunc flavour of an EmoGen checkpoint, and how a training logs it
(`log_checkpoint_model`; URIs, aliases and downloads are emogen.tracking.registry's).

    model = mlflow.pyfunc.load_model("models:/emogen-diffusion@champion")
    mels = model.predict(pd.DataFrame([{"emotion": "fear", "seed": 0, "steps": 10}]))

A generator takes request rows (the fields of `POST /v1/synthesize` that shape the clips:
emotion, num_samples, seed, steps, sampler, guidance_scale, eta) and returns their mels
[clips, n_mels, frames], rows in order: the same numbers the Ray Serve endpoint returns as
`npy` for the same request (same validation, same `synthesize_mels`, same fixed stacks).
A SER takes mels [clips, n_mels, frames] and returns class probabilities [clips, 6] in
`emogen.config.EMOTIONS` order.

MLflow logs this file as code and, to load the model, runs it as a script in a fresh
process: its imports are absolute and at the top, and that process needs emogen and
`PIP_REQUIREMENTS` installed, nothing else.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType

from emogen.checkpoint import load_state
from emogen.config import EMOTIONS, AudioConfig, replace
from emogen.inference.classifier import SERClassifier
from emogen.inference.generator import EmotionGenerator
from emogen.inference.schema import SynthesisRequest, resolve
from emogen.inference.synthesis import synthesize_mels
from emogen.models.device import choose_device
from emogen.tracking.registry import MODEL_ARTIFACT, PIP_REQUIREMENTS, quiet_downloads, register, resolve_checkpoint_ref

REQUEST_FIELDS = ("emotion", "num_samples", "seed", "steps", "sampler", "guidance_scale", "eta")


def request_rows(model_input: Any) -> list[dict[str, Any]]:
    """A DataFrame, a dict or a list of dicts -> request dicts without missing values."""
    if isinstance(model_input, dict):
        model_input = [model_input]
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(list(model_input))
    unknown = sorted(set(frame.columns) - set(REQUEST_FIELDS))
    if unknown:
        raise ValueError(f"unknown request field(s) {', '.join(unknown)}; expected {', '.join(REQUEST_FIELDS)}")
    rows = []
    for record in frame.to_dict(orient="records"):
        rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in record.items() if v is not None and v == v})
    return rows


class EmoGenModel(mlflow.pyfunc.PythonModel):
    """A checkpoint's generator or SER behind pyfunc's `predict`."""

    def load_context(self, context: Any) -> None:
        resolved = resolve_checkpoint_ref(context.artifacts["checkpoint"])
        state = load_state(resolved.state_path)
        self.kind = state["model_name"]
        device = choose_device("auto")  # in a Ray worker: the GPU it was granted, if any
        if self.kind == "ser":
            self.classifier = SERClassifier(state, device)
        else:
            self.generator = EmotionGenerator(state, device=device, checkpoint=resolved.describe())

    def predict(self, context, model_input, params=None):  # no hints: MLflow would validate against them
        if self.kind == "ser":
            probabilities, _ = self.classifier.predict(np.asarray(model_input, dtype=np.float32))
            return probabilities.astype(np.float32)
        jobs = [resolve(SynthesisRequest(**row, format="npy"), self.generator) for row in request_rows(model_input)]
        return np.concatenate(synthesize_mels(self.generator, jobs))


def model_signature(state: dict[str, Any]) -> Any:
    """The pyfunc's input/output schema: a generator takes request rows and returns mels
    [clips, n_mels, frames]; a SER takes mels and returns probabilities [clips, 6]."""
    audio = replace(AudioConfig(), state.get("audio") or {})
    mels = TensorSpec(np.dtype(np.float32), (-1, audio.n_mels, audio.num_frames))
    if state["model_name"] == "ser":
        return ModelSignature(inputs=Schema([mels]), outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(EMOTIONS)))]))
    # The optional numbers are typed Any: a column some rows leave out holds NaN, which
    # MLflow's check refuses for integers, and it refuses integers in a double column; the
    # request model (the service's) validates every field and names the one that is wrong.
    inputs = Schema([
        ColSpec("string", "emotion"),
        *(ColSpec(AnyType(), field, required=False) for field in ("num_samples", "seed", "steps")),
        ColSpec("string", "sampler", required=False),
        *(ColSpec(AnyType(), field, required=False) for field in ("guidance_scale", "eta")),
    ])
    return ModelSignature(inputs=inputs, outputs=Schema([mels]))


def log_checkpoint_model(run_id: str, checkpoint: str | Path, register_as: str | None = None,
                         tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Log a checkpoint to its MLflow run as a pyfunc model (runs:/RUN_ID/model) and, with
    `register_as`, register it as a new version of that name (tagged with `tags`).
    Returns {"model_uri", "registered_model", "version"}. MLflow must already point at
    the run's tracking URI (emogen.tracking.runs.configure)."""
    quiet_downloads()
    state_path = resolve_checkpoint_ref(checkpoint).state_path
    state = load_state(state_path)
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # about type hints and input examples: the signature says what the model takes
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT, python_model=__file__, artifacts={"checkpoint": str(state_path)},
            signature=model_signature(state), pip_requirements=list(PIP_REQUIREMENTS),
            metadata={"emogen_model": state["model_name"], "epoch": int(state.get("epoch", 0))},
        )
    out: dict[str, Any] = {"model_uri": f"runs:/{run_id}/{MODEL_ARTIFACT}", "registered_model": None, "version": None}
    if register_as:
        version = register(info.model_uri, register_as, run_id, {"emogen.model": state["model_name"], **(tags or {})})
        out.update(registered_model=register_as, version=version)
    return out


# logged as code (MLflow's "models from code"), not as a pickled object
mlflow.models.set_model(EmoGenModel())
