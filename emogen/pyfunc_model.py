"""The MLflow pyfunc flavour of an EmoGen checkpoint (logged by emogen.registry).

    model = mlflow.pyfunc.load_model("models:/emogen-diffusion@champion")
    mels = model.predict(pd.DataFrame([{"emotion": "fear", "seed": 0, "steps": 10}]))

A generator takes request rows (the fields of `POST /v1/synthesize` that shape the clips:
emotion, num_samples, seed, steps, sampler, guidance_scale, eta) and returns their mels
[clips, n_mels, frames], rows in order: the same numbers the Ray Serve endpoint returns as
`npy` for the same request (same validation, same `synthesize_mels`, same fixed stacks).
A SER takes mels [clips, n_mels, frames] and returns class probabilities [clips, 6] in
`emogen.config.EMOTIONS` order.
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np

REQUEST_FIELDS = ("emotion", "num_samples", "seed", "steps", "sampler", "guidance_scale", "eta")


def request_rows(model_input: Any) -> list[dict[str, Any]]:
    """A DataFrame, a dict or a list of dicts -> request dicts without missing values."""
    import pandas as pd

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
        import torch

        from emogen.checkpoint import load_state

        state = load_state(context.artifacts["checkpoint"])
        self.kind = state["model_name"]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.kind == "ser":
            from emogen.evaluate import SERClassifier

            self.classifier = SERClassifier(state, device)
        else:
            from emogen.generate import EmotionGenerator

            self.generator = EmotionGenerator(state, device=device, checkpoint=context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # no hints: MLflow would validate against them
        if self.kind == "ser":
            probabilities, _ = self.classifier.predict(np.asarray(model_input, dtype=np.float32))
            return probabilities.astype(np.float32)
        from emogen.serving.schema import SynthesisRequest, resolve
        from emogen.serving.synthesis import synthesize_mels

        jobs = [resolve(SynthesisRequest(**row, format="npy"), self.generator) for row in request_rows(model_input)]
        return np.concatenate(synthesize_mels(self.generator, jobs))


# logged as code (MLflow's "models from code"), not as a pickled object
mlflow.models.set_model(EmoGenModel())
