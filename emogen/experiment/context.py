"""What the experiment's stages share: the speaker folds, and an `ExperimentContext` made of
small parts (what was asked, where files go, the MLflow runs, Ray resources, the resume
journal, what earlier stages produced), and how an experiment starts one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray

from emogen import storage, training
from emogen.config import EMOTIONS
from emogen.data.features import decode_mels, read_features
from emogen.errors import InvalidInputError
from emogen.experiment.config import ExperimentConfig, experiment_config, model_overrides
from emogen.experiment.journal import FinishedStages, StageKey
from emogen.experiment.results import ExperimentResults, FoldSplit, JudgeRun, MLflowRun, ProbeRun, Samples, SERRun
from emogen.experiment.tasks import quiet_ray_data
from emogen.presets import model_configs
from emogen.tracking import runs as tracking_runs

SPLITS = ("train", "val", "test")


def condition_slug(condition: str) -> str:
    """A condition as a folder, MLflow run or metric name: "real+diffusion" -> "real_diffusion"."""
    return condition.replace("+", "_")


# ----------------------------------------------------------------------- the folds


@dataclass(frozen=True)
class HeldOut:
    """A fold's test clips, its held-out speakers' (every model of the fold is scored on
    them); mels and labels sit in Ray's object store once, for every task that reads them."""

    rows: Any  # the test rows of the features table (pandas)
    mels: Any  # ray.ObjectRef of their decoded log-mels
    labels: Any  # ray.ObjectRef of their labels
    speakers: Any  # numpy array of their speakers


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per fold
class Fold:
    """One fold of the speaker-grouped cross-validation: each clip's role in it (test: the
    fold's held-out speakers; val: speakers TrainConfig.split_seed and val_fraction chose
    among the others; train: the rest), the features table with that role as its "split"
    column, and the held-out clips."""

    index: int
    assignment: dict[str, str]  # clip_id -> "train" | "val" | "test"
    table: Any  # the features table (pandas) with this fold's "split" column
    counts: dict[str, int]  # clips per split
    held_out: HeldOut

    def rows(self, *splits: str) -> Any:
        return self.table[self.table["split"].isin(splits)]

    def judge_assignment(self) -> dict[str, str]:
        """The judge's and the probe's: the validation clips join training."""
        return {clip: "train" if split == "val" else split for clip, split in self.assignment.items()}

    def summary(self) -> FoldSplit:
        speakers = {s: sorted(self.rows(s)["speaker"].astype(str).unique().tolist()) for s in ("val", "test")}
        return FoldSplit(fold=self.index, test_speakers=speakers["test"], val_speakers=speakers["val"],
                         split_counts=self.counts, class_counts=_class_counts(self.table))


def _class_counts(table: Any) -> dict[str, dict[str, int]]:
    return {s: {e: int(((table["split"] == s) & (table["label"] == k)).sum()) for k, e in enumerate(EMOTIONS)}
            for s in SPLITS}


def _fold(index: int, assignment: dict[str, str], table: Any, folds: int, features: str | Path) -> Fold:
    fold_table = table.assign(split=table["clip_id"].map(assignment))
    counts = {s: int((fold_table["split"] == s).sum()) for s in SPLITS}
    if counts["val"] == 0 or counts["train"] == 0:
        raise InvalidInputError(f"--folds {folds}: fold {index} left no training or validation speakers in "
                                f"{features}; use fewer folds or a corpus with more speakers")
    test = fold_table[fold_table["split"] == "test"].reset_index(drop=True)
    held_out = HeldOut(rows=test, mels=ray.put(decode_mels(test)), labels=ray.put(test["label"].to_numpy()),
                       speakers=test["speaker"].astype(str).to_numpy())
    return Fold(index, assignment, fold_table, counts, held_out)


# ------------------------------------------------------------------ the context's parts


@dataclass(frozen=True)
class ExperimentSpec:
    """What was asked, and what follows from it before anything trains."""

    features: str | Path
    preset: str
    config: ExperimentConfig
    name: str
    overrides: dict[str, dict[str, Any]]  # preset sections ({"ser": {...}, "train_ser": {...}, ...})
    command: str | None  # the command line the report shows to reproduce the run
    per_emotion: int  # generated clips per emotion, fold, seed and generator
    diffusion_space: str  # "mel" or "latent"


@dataclass(frozen=True)
class Layout:
    """Where the experiment's files go. What a task on any node writes or reads (the
    generators' Ray Train runs, the SERs' run folders, the generated clips) and the resume
    journal live under `storage` (a local folder or an s3:// / gs:// prefix: with no shared
    disk, only storage is seen by every node and by a rerun); what only the driver writes
    (the report, its samples and plots, results.json) under the local `out`."""

    out: Path
    storage: str  # a location (emogen.storage); `out` itself when no storage path is given

    def fold_dir(self, fold: Fold) -> str:
        return storage.join(self.storage, f"fold{fold.index}")

    def ser_dir(self, fold: Fold, condition: str, seed: int) -> str:
        return storage.join(self.fold_dir(fold), "ser", f"{condition_slug(condition)}-s{seed}")

    def generated_dir(self, fold: Fold, generator: str, seed: int) -> str:
        return storage.join(self.fold_dir(fold), "generated", f"{generator}-s{seed}")

    @property
    def train_storage(self) -> str:
        """Ray Train's storage for the generators' runs."""
        return storage.join(self.storage, "train")

    @property
    def samples(self) -> Path:
        return self.out / "samples"

    @property
    def stages(self) -> str:
        return storage.join(self.storage, "stages.json")

    def relative(self, path: Path) -> str:
        """path as results.json names it: relative to the output folder, which can move."""
        return str(path.relative_to(self.out))


@dataclass(frozen=True)
class Tracking:
    """The MLflow store as given (None: MLflow's default), and the resolved store, the MLflow
    experiment and the parent run that every training's child run hangs under."""

    uri: str | None
    run: MLflowRun

    @property
    def parent_run_id(self) -> str:
        return self.run.parent_run_id


@dataclass(frozen=True)
class TaskResources:
    """What Ray reserves for each of the experiment's tasks."""

    num_cpus: float
    num_gpus: int

    def remote(self, func: Callable[..., Any], **options: Any) -> Any:
        """func as a Ray task with these resources (and options such as max_retries)."""
        return ray.remote(func).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, **options)


@dataclass
class StageOutputs:
    """What the stages produced, for the stages after them (rebuilt from the journal on resume)."""

    generators: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)  # (fold, generator): fit() summary
    probes: dict[int, Any] = field(default_factory=dict)  # fold: fitted LinearProbe (refit on resume: deterministic)
    runs: dict[str, list[SERRun]] = field(default_factory=dict)  # condition: its SERs, fold by fold
    probe_runs: list[ProbeRun] = field(default_factory=list)
    judges: list[JudgeRun] = field(default_factory=list)
    samples: Samples | None = None
    results: ExperimentResults | None = None


@dataclass
class ExperimentContext:
    """What the stages share; each stage reads the parts it needs and adds to `outputs`."""

    spec: ExperimentSpec
    layout: Layout
    tracking: Tracking
    resources: TaskResources
    folds: list[Fold]
    finished: FinishedStages
    seconds: dict[str, float]  # wall seconds per stage, the caller's (corpus, preprocess) first
    outputs: StageOutputs = field(default_factory=StageOutputs)

    @property
    def config(self) -> ExperimentConfig:
        return self.spec.config

    def pairs(self) -> list[tuple[Fold, int]]:
        """Every (fold, seed), fold by fold."""
        return [(fold, seed) for fold in self.folds for seed in self.config.seeds]


# ------------------------------------------------------------------ starting an experiment


def start_experiment(features: str | Path, out_dir: str | Path, preset: str, config: ExperimentConfig | None,
                     name: str | None, tracking_uri: str | None, command: str | None,
                     seconds_before: dict[str, float] | None,
                     overrides: dict[str, dict[str, Any]] | None,
                     storage_path: str | Path | None = None) -> ExperimentContext:
    """The folds, their held-out clips in the object store, and the MLflow parent run."""
    config = config or experiment_config(preset)
    out = Path(out_dir).resolve()
    layout = Layout(out, storage.absolute(storage_path or out))
    layout.out.mkdir(parents=True, exist_ok=True)
    name = name or layout.out.name
    overrides = overrides or {}
    finished = FinishedStages(layout.stages)
    experiment_id = tracking_runs.configure(tracking_uri)
    quiet_ray_data()

    folds = _folds(features, config, preset, overrides)
    mean_train = np.mean([fold.counts["train"] for fold in folds])
    per_emotion = config.per_emotion or max(1, round(config.ratio * mean_train / len(EMOTIONS)))
    spec = ExperimentSpec(features=features, preset=preset, config=config, name=name, overrides=overrides,
                          command=command, per_emotion=per_emotion,
                          diffusion_space=model_configs(preset, overrides)["diffusion"].space)
    parent = finished.run(StageKey.parent_run(), lambda: _parent_run(spec, folds, tracking_uri))
    tracking_runs.mark_running(parent, tracking_uri)  # until the parent run's last log ends it (a stopped job: KILLED)
    run = MLflowRun(tracking_uri=tracking_runs.resolve_tracking_uri(tracking_uri), experiment_id=experiment_id,
                    parent_run_id=parent)
    return ExperimentContext(
        spec=spec, layout=layout, tracking=Tracking(tracking_uri, run),
        resources=TaskResources(num_cpus=config.cpus_per_task, num_gpus=1 if config.use_gpu else 0),
        folds=folds, finished=finished, seconds=dict(seconds_before or {}),
    )


def _folds(features: str | Path, config: ExperimentConfig, preset: str,
           overrides: dict[str, dict[str, Any]]) -> list[Fold]:
    """The speaker folds, assigned with the SER's split seed and validation share."""
    ser_train = training.train_config("ser", preset, model_overrides(overrides, "ser")["train"])
    try:
        assignments = training.fold_assignments(features, config.folds, ser_train)
    except ValueError as error:  # too few speakers for the folds: the user's choice to fix
        raise InvalidInputError(f"--folds {config.folds}: {error}") from None
    table = read_features(features)
    return [_fold(index, assignment, table, config.folds, features) for index, assignment in enumerate(assignments)]


def _parent_run(spec: ExperimentSpec, folds: list[Fold], tracking_uri: str | None) -> str:
    params = {"preset": spec.preset, "features": str(spec.features), "experiment": dataclasses.asdict(spec.config),
              "per_emotion": spec.per_emotion, "split_counts": {f"fold{f.index}": f.counts for f in folds},
              "diffusion_space": spec.diffusion_space, "overrides": spec.overrides}
    return tracking_runs.get_or_create_run(f"experiment-{spec.name}", {"emogen.model": "experiment"}, params, tracking_uri)
