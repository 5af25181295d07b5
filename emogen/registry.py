"""Models in MLflow: each training's checkpoint logged as an MLflow model, registered
under a name, promoted with an alias, and loaded back by URI wherever a checkpoint is taken.

    emogen train diffusion ... --register-as emogen-diffusion     # log + register a version
    emogen models promote emogen-diffusion 3 --alias champion      # move the alias
    emogen serve --checkpoint models:/emogen-diffusion@champion    # or generate, --vae-checkpoint, ...

A logged model is a pyfunc (`emogen.pyfunc_model.EmoGenModel`) whose one artifact is the
checkpoint's `state.pt`, which is self-contained (a latent-diffusion checkpoint carries its
VAE). `mlflow.pyfunc.load_model(uri).predict(...)` generates the same mels as the Ray Serve
endpoint for the same request and seed; `resolve_model_uri` downloads the state file for
everything else. Accepted URIs: `models:/NAME/VERSION`, `models:/NAME@ALIAS` and
`runs:/RUN_ID/PATH`, resolved against the tracking URI (default: `emogen.tracking`'s).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from emogen.errors import UserError

MODEL_ARTIFACT = "model"  # the name a run's model is logged under: runs:/RUN_ID/model
URI_SCHEMES = ("models:/", "runs:/")
MODEL_URIS = "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model (MLflow)"  # for --help texts
TRACKING_URI_HELP = ("MLflow tracking URI where a models:/ or runs:/ checkpoint resolves "
                     "(default: $MLFLOW_TRACKING_URI, else the local store in runs/mlflow)")
# what a logged model needs installed to load (the environment MLflow records; listed, not
# inferred: inference loads the model in a subprocess and takes longer than the logging)
PIP_REQUIREMENTS = ("torch==2.14.1", "torchaudio==2.11.0", "numpy", "pandas", "pydantic", "soundfile", "emogen")


class ModelURIError(UserError):
    """A models:/ or runs:/ URI that does not resolve to an EmoGen checkpoint."""


def quiet_downloads() -> None:
    """No per-file progress bars from MLflow's artifact transfers in job logs."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def is_model_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(URI_SCHEMES)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model URI led: the local state file, and which registered version it was."""

    uri: str
    state_path: Path
    name: str | None = None
    version: str | None = None
    run_id: str | None = None

    def describe(self) -> str:
        """What responses and logs call it: the URI and the version it resolved to."""
        return f"{self.uri} (version {self.version})" if self.version and not self.uri.endswith(f"/{self.version}") else self.uri


def _registered(uri: str, client: Any) -> tuple[str | None, str | None, str | None]:
    """(name, version, run id) of a models:/NAME/VERSION or models:/NAME@ALIAS URI; Nones otherwise."""
    if not uri.startswith("models:/"):
        return None, None, uri.split("/")[1] if uri.startswith("runs:/") and uri.count("/") >= 2 else None
    ref = uri[len("models:/"):].rstrip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:
        name, version = ref.split("/", 1)
        mv = client.get_model_version(name, version)
    else:
        raise ModelURIError(f"{uri}: name a version or an alias (models:/NAME/VERSION or models:/NAME@ALIAS)")
    return mv.name, str(mv.version), mv.run_id


@contextmanager
def _mlflow_at(tracking: str) -> Iterator[None]:
    """MLflow's global tracking and registry URIs set to `tracking` for the duration:
    resolving models:/ and runs:/ URIs reads the globals whatever the arguments say."""
    import mlflow

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def resolve_model_uri(uri: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> ResolvedModel:
    """Download the checkpoint a model URI names (once per resolved version: cached) and
    say which version it was. Raises ModelURIError naming the URI when it does not resolve."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from emogen.checkpoint import STATE_FILE
    from emogen.tracking import resolve_tracking_uri

    quiet_downloads()
    tracking = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    try:
        name, version, run_id = _registered(uri, client)
        # an alias moves: the cache is keyed by what it resolved to, not by the URI
        key = f"{tracking}|{name}|{version}" if version else f"{tracking}|{uri}"
        target = Path(cache_dir or Path(tempfile.gettempdir()) / "emogen-models") / hashlib.sha256(key.encode()).hexdigest()[:20]
        if not any(target.rglob(STATE_FILE)) if target.exists() else True:
            source = f"models:/{name}/{version}" if version else uri
            staging = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
            try:
                with _mlflow_at(tracking):
                    mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(staging, target)  # whole or not at all: a replica never reads half a download
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except MlflowException as exc:
        raise ModelURIError(f"{uri} does not resolve at {tracking}: {exc.message}") from None
    states = sorted(target.rglob(STATE_FILE))
    if not states:
        raise ModelURIError(f"{uri} resolves at {tracking}, but to no EmoGen checkpoint (no {STATE_FILE} in it)")
    return ResolvedModel(uri, states[0], name, version, run_id)


# -------------------------------------------------------------------- logging


def model_signature(state: dict[str, Any]) -> Any:
    """The pyfunc's input/output schema: a generator takes request rows and returns mels
    [clips, n_mels, frames]; a SER takes mels and returns probabilities [clips, 6]."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import AnyType

    from emogen.config import EMOTIONS, AudioConfig, replace

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
    the run's tracking URI (emogen.tracking.configure)."""
    import mlflow

    from emogen import pyfunc_model
    from emogen.checkpoint import load_state, resolve_checkpoint

    quiet_downloads()
    state_path = resolve_checkpoint(checkpoint)
    state = load_state(state_path)
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # about type hints and input examples: the signature says what the model takes
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT, python_model=pyfunc_model.__file__, artifacts={"checkpoint": str(state_path)},
            signature=model_signature(state), pip_requirements=list(PIP_REQUIREMENTS),
            metadata={"emogen_model": state["model_name"], "epoch": int(state.get("epoch", 0))},
        )
    out: dict[str, Any] = {"model_uri": f"runs:/{run_id}/{MODEL_ARTIFACT}", "registered_model": None, "version": None}
    if register_as:
        version = mlflow.register_model(info.model_uri, register_as, tags={"emogen.model": state["model_name"], **(tags or {})})
        mlflow.MlflowClient().set_model_version_tag(register_as, version.version, "emogen.run_id", run_id)
        out.update(registered_model=register_as, version=str(version.version))
    return out


def promote(name: str, version: str, alias: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Point `alias` at version `version` of registered model `name` (moving it if it pointed elsewhere)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from emogen.tracking import resolve_tracking_uri

    tracking = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    try:
        try:
            before = str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            before = None
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        raise ModelURIError(f"models:/{name}/{version} cannot take the alias {alias!r} at {tracking}: {exc.message}") from None
    return {"model": name, "alias": alias, "version": str(version), "was": before, "uri": f"models:/{name}@{alias}"}


def list_versions(name: str, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every version of a registered model: number, aliases, run, tags."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from emogen.tracking import resolve_tracking_uri

    tracking = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    try:
        aliases = client.get_registered_model(name).aliases  # alias -> version
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise ModelURIError(f"no registered model {name!r} at {tracking}: {exc.message}") from None
    return sorted(({"version": str(v.version), "aliases": sorted(a for a, n in aliases.items() if str(n) == str(v.version)),
                    "run_id": v.run_id, "tags": dict(v.tags)} for v in versions), key=lambda v: int(v["version"]))
