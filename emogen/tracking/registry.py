"""Checkpoint references, and models in MLflow: each training's checkpoint logged as an
MLflow model, registered under a name, promoted with an alias, and loaded back by URI
wherever a checkpoint is taken (`resolve_checkpoint_ref`, for paths and URIs alike).

    emogen train diffusion ... --register-as emogen-diffusion     # log + register a version
    emogen models promote emogen-diffusion 3 --alias champion      # move the alias
    emogen serve --checkpoint models:/emogen-diffusion@champion    # or generate, --vae-checkpoint, ...

A logged model is a pyfunc (`emogen.inference.pyfunc`, which also logs it) whose one artifact is the
checkpoint's `state.pt`, which is self-contained (a latent-diffusion checkpoint carries its
VAE). `mlflow.pyfunc.load_model(uri).predict(...)` generates the same mels as the Ray Serve
endpoint for the same request and seed; `resolve_model_uri` downloads the state file for
everything else. Accepted URIs: `models:/NAME/VERSION`, `models:/NAME@ALIAS` and
`runs:/RUN_ID/PATH`, resolved against the tracking URI (default: `emogen.tracking.runs`'s).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emogen import storage
from emogen.errors import UserError
from emogen.tracking.runs import resolve_tracking_uri

MODEL_ARTIFACT = "model"  # the name a run's model is logged under: runs:/RUN_ID/model
URI_SCHEMES = ("models:/", "runs:/")
MODEL_URIS = "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model (MLflow)"  # for --help texts
TRACKING_URI_HELP = ("MLflow tracking URI where a models:/ or runs:/ checkpoint resolves "
                     "(default: $MLFLOW_TRACKING_URI, else the local store in runs/mlflow)")
# what a logged model needs installed to load (the environment MLflow records; listed, not
# inferred: inference loads the model in a subprocess and takes longer than the logging).
# emogen itself is installed from this project's source, not an index: load the model in
# an environment that has it (`mlflow models predict ... --env-manager local`).
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
    """Where a checkpoint reference led: the local state file, and for a model URI which
    registered version (or run) it was. `uri` is the URI as given, or a path made absolute."""

    uri: str
    state_path: Path
    name: str | None = None
    version: str | None = None
    run_id: str | None = None

    def describe(self) -> str:
        """What responses and logs call it: the URI and the version it resolved to."""
        return f"{self.uri} (version {self.version})" if self.version and not self.uri.endswith(f"/{self.version}") else self.uri

    def registered(self) -> dict[str, str | None] | None:
        """The MLflow model it came from, as /v1/info shows it; None for a local path."""
        if not is_model_uri(self.uri):
            return None
        return {"uri": self.uri, "name": self.name, "version": self.version, "run_id": self.run_id}


def _source(uri: str, client: Any) -> tuple[str, str | None, str | None, str | None]:
    """(artifact URI to download, registered name, version, run id) of a model URI.

    The artifact URI is asked of `client`, which carries the tracking URI: MLflow's own
    models:/ and runs:/ resolution reads its global tracking and registry URIs instead."""
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        run = client.get_run(run_id)
        logged = client.search_logged_models([run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run_id}' AND name = '{path or MODEL_ARTIFACT}'")
        if logged:  # an MLflow 3 model logged by the run
            return logged[0].artifact_location, None, None, run_id
        return f"{run.info.artifact_uri}/{path}", None, None, run_id  # a plain artifact of the run
    ref = uri[len("models:/"):].rstrip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:
        name, number = ref.split("/", 1)
        version = client.get_model_version(name, number)
    else:
        raise ModelURIError(f"{uri}: name a version or an alias (models:/NAME/VERSION or models:/NAME@ALIAS)")
    return (client.get_model_version_download_uri(version.name, version.version), version.name, str(version.version),
            version.run_id)


def _client(tracking_uri: str | None) -> tuple[str, Any]:
    """(the tracking URI resolved, an MlflowClient on it for tracking and registry alike)."""
    # deferred: mlflow is heavy and the CLI imports this module for its --help texts
    import mlflow

    tracking = resolve_tracking_uri(tracking_uri)
    return tracking, mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)


def resolve_model_uri(uri: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> ResolvedModel:
    """Download the checkpoint a model URI names (once per resolved version: cached) and
    say which version it was. Raises ModelURIError naming the URI when it does not resolve."""
    # deferred: mlflow and torch (emogen.checkpoint) are heavy; the CLI imports this module for its --help texts
    import mlflow
    from mlflow.exceptions import MlflowException
    from emogen.checkpoint import STATE_FILE

    quiet_downloads()
    tracking, client = _client(tracking_uri)
    cache = Path(cache_dir or Path(tempfile.gettempdir()) / "emogen-models")
    try:
        source, name, version, run_id = _source(uri, client)
        # an alias moves: the cache is keyed by what the URI resolved to
        target = cache / hashlib.sha256(f"{tracking}|{source}".encode()).hexdigest()[:20]
        if not (target.exists() and any(target.rglob(STATE_FILE))):
            shutil.rmtree(target, ignore_errors=True)  # a download that holds no checkpoint is not kept
            # whole or not at all: a replica never reads half a download
            storage.put_in_place(target, lambda staged: mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(staged), tracking_uri=tracking), staging_in=cache)
    except MlflowException as exc:
        raise ModelURIError(f"{uri} does not resolve at {tracking}: {exc.message}") from None
    states = sorted(target.rglob(STATE_FILE))
    if not states:
        raise ModelURIError(f"{uri} resolves at {tracking}, but to no EmoGen checkpoint (no {STATE_FILE} in it)")
    return ResolvedModel(uri, states[0], name, version, run_id)


def resolve_checkpoint_ref(ref: str | Path, tracking_uri: str | None = None) -> ResolvedModel:
    """The one way a checkpoint reference is read: a state.pt, a checkpoint folder, a run
    folder (its newest checkpoint_*), each local or on object storage (s3://...: listed,
    then only the state file fetched into this node's cache), or a models:/ or runs:/ URI
    (downloaded, see `resolve_model_uri`). A location that holds no checkpoint raises
    MissingInputError naming it."""
    if is_model_uri(ref):
        return resolve_model_uri(str(ref), tracking_uri)
    # deferred: emogen.checkpoint imports torch; the CLI imports this module for its --help texts
    from emogen.checkpoint import resolve_checkpoint

    state_path = resolve_checkpoint(ref)
    return ResolvedModel(storage.absolute(ref), state_path.resolve())


def pinned_reference(ref: str | Path, tracking_uri: str | None = None) -> str:
    """A checkpoint reference checked (MissingInputError / ModelURIError naming it) and pinned
    to the one checkpoint it names now, as a reference any node can resolve again to the
    same file: a local or remote run folder -> its newest checkpoint's state file (a run
    that goes on checkpointing cannot hand two readers different checkpoints), a
    models:/NAME@ALIAS -> models:/NAME/VERSION (an alias may move), runs:/ as it is.

    What a driver hands the workers it starts instead of a path on its own disk: nodes
    share no file system, so each worker resolves the pinned reference into its own
    node's cache (`resolve_checkpoint_ref`), once per node."""
    if is_model_uri(ref):
        resolved = resolve_model_uri(str(ref), tracking_uri)
        if str(ref).startswith("models:/") and resolved.name and resolved.version:
            return f"models:/{resolved.name}/{resolved.version}"
        return str(ref)
    # deferred: emogen.checkpoint imports torch; the CLI imports this module for its --help texts
    from emogen.checkpoint import locate_checkpoint

    return storage.absolute(locate_checkpoint(ref))


def register(model_uri: str, name: str, run_id: str, tags: dict[str, str] | None = None) -> str:
    """A new version of registered model `name` from `model_uri` (a model run `run_id`
    logged), tagged with `tags` and the run; returns the version. Registers at MLflow's
    configured registry (emogen.tracking.runs.configure)."""
    # deferred: mlflow is heavy and the CLI imports this module for its --help texts
    import mlflow

    return str(mlflow.register_model(model_uri, name, tags={**(tags or {}), "emogen.run_id": run_id}).version)


def registered_version(name: str, run_id: str, tracking_uri: str | None = None) -> str | None:
    """The version of `name` registered from run `run_id`, if any: a resumed experiment or a
    re-run sweep registers nothing twice."""
    # deferred: mlflow is heavy and the CLI imports this module for its --help texts
    from mlflow.exceptions import MlflowException

    _, client = _client(tracking_uri)
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return str(versions[0].version) if versions else None


def promote(name: str, version: str, alias: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Point `alias` at version `version` of registered model `name` (moving it if it pointed elsewhere)."""
    # deferred: mlflow is heavy and the CLI imports this module for its --help texts
    from mlflow.exceptions import MlflowException

    tracking, client = _client(tracking_uri)
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
    # deferred: mlflow is heavy and the CLI imports this module for its --help texts
    from mlflow.exceptions import MlflowException

    tracking, client = _client(tracking_uri)
    try:
        aliases = client.get_registered_model(name).aliases  # alias -> version
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise ModelURIError(f"no registered model {name!r} at {tracking}: {exc.message}") from None
    return sorted(({"version": str(v.version), "aliases": sorted(a for a, n in aliases.items() if str(n) == str(v.version)),
                    "run_id": v.run_id, "tags": dict(v.tags)} for v in versions), key=lambda v: int(v["version"]))
