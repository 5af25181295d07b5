"""The augmentation experiment: does generated speech improve speech emotion recognition?

    emogen experiment --data runs/demo/data --preset demo --out runs/demo/experiment

Speaker-grouped K-fold cross-validation (`--folds`, `datasets.speaker_folds`): each fold
holds out a disjoint group of test speakers, validates on some of the others and trains on
the rest, so every speaker is tested exactly once. Per fold:

1. generators: a VAE and a diffusion U-Net (latent diffusion on the VAE in the demo
   preset) trained with Ray Train on the fold's training speakers only (no test speaker
   reaches a generator);
2. references: the linear probe (`emogen.evaluation.probe`) and a judge SER, both trained on the
   fold's real training + validation clips, the judge with a seed of its own;
3. per seed: a baseline SER on real training clips; N generated clips per emotion from
   each generator (optionally kept only if the seed's baseline SER gives the requested
   emotion at least `min_confidence`); an SER on real+VAE and one on real+diffusion;
   and a control: an SER on the real clips alone trained for as many optimizer steps as
   the real+diffusion one (more clips per epoch at equal epochs means more steps, and an
   undertrained baseline gains from steps whatever the extra clips contain);
4. every SER, the probe and the judge evaluated on the fold's held-out speakers (WA, UA,
   macro F1, confusion, UA per speaker); the generated sets scored by the filter (the
   seed's baseline SER: FID on its embeddings against held-out real clips, Inception
   Score, clarity) and by the judges that chose nothing (clarity of all and of the kept
   clips, per emotion, beside each judge's own UA on real held-out clips).

Then paired statistics (`emogen.evaluation.stats`) of each condition's UA against real and against
the matched-steps control over fold x seed pairs (same fold, same seed: mean, 95 % t
interval, paired t and Wilcoxon p-values) and over speakers (bootstrap interval);
results.json (`emogen.experiment.results`: every number, seconds per stage), report.md / report.html
with plots and Griffin-Lim WAVs, one MLflow parent run with a child run per training.

Seeds vary the SER initialization and data order and the generated samples; a fold's
generators are shared by its seeds (a generator pair per seed would multiply the cost, and
the question is whether a given generator's data helps). The SER trainings of every fold
and seed, generation, scoring and Griffin-Lim run as Ray tasks, side by side on a cluster.

`run_experiment` runs STAGES, named stage functions sharing one `ExperimentContext`.
Every unit of work records its result in <out>/stages.json under its `StageKey` (fold,
what, seed) when it finishes, so re-running the same command resumes after the last
finished one (trainings also resume from their per-epoch checkpoints).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emogen.config import EMOTIONS, replace
from emogen.models.diffusion import SAMPLERS
from emogen.errors import InvalidInputError
from emogen.logs import get_logger
from emogen.models.vae import LATENT_SOURCES
from emogen.options import option
from emogen.presets import preset_sections
from emogen.experiment.results import (
    AUGMENTED_BY,
    CONDITIONS,
    CONTROL,
    CONTROL_MATCHES,
    DIFFUSION,
    GENERATED_FROM,
    GENERATORS,
    JUDGES,
    PROBE_JUDGE,
    REAL,
    SER_JUDGE,
    SCORES,
    UA,
    UA_GAIN_TARGET_POINTS,
    VAE,
    DataSummary,
    ExperimentResults,
    FidSpread,
    FoldSplit,
    GeneratedSet,
    GeneratorRun,
    JudgedClarity,
    JudgeRun,
    MLflowRun,
    SampleClip,
    Samples,
    SERMetrics,
    SERRun,
    ProbeRun,
    Realism,
    Targets,
    comparisons,
    paired_gains,
    pool_probes,
    spread,
    summarize,
)

log = get_logger("experiment")


@dataclass(frozen=True)
class ExperimentConfig:
    """What the experiment does; a preset's "experiment" section sets the defaults. Every
    field is an `emogen experiment` option of the same name (--per-emotion, ...)."""

    # EmoDB's 10 speakers in 5 folds: 2 held out per fold
    folds: int = option(5, "speaker folds: each holds out its own test speakers, every speaker is tested once")
    seeds: tuple[int, ...] = option((0, 1, 2), "SER / sampling seeds (per fold)")
    # Generated clips per emotion: per_emotion if > 0, else ratio x real training clips / 6
    # (balanced over the emotions whatever the real class balance is).
    per_emotion: int = option(0, "generated clips per emotion (0: from --ratio)")
    ratio: float = option(1.0, "generated / real training clips, balanced over emotions")
    # None: the preset's diffusion sampler, steps and guidance
    sampler: str | None = option(None, "diffusion sampler (default: the preset's)", choices=tuple(SAMPLERS))
    steps: int | None = option(None, "sampling steps (default: the preset's)")
    guidance_scale: float | None = option(None, "classifier-free guidance (default: the preset's)")
    # models.vae: the emotion's fitted latent distribution, or N(0, I) as the seed did
    vae_latent: str = option("posterior", "VAE latents: each emotion's fitted distribution or the prior",
                             choices=LATENT_SOURCES)
    min_confidence: float = option(
        0.0, "keep generated clips the seed's real-trained SER gives >= this probability for their emotion")
    # None: the preset's train_ser / train_vae / train_diffusion
    ser_epochs: int | None = option(None, "epochs of every SER (default: the preset's)")
    vae_epochs: int | None = option(None, "VAE epochs (default: the preset's)")
    diffusion_epochs: int | None = option(None, "diffusion epochs (default: the preset's)")
    num_workers: int = option(1, "Ray Train workers for the VAE and diffusion trainings")
    cpus_per_worker: float | None = option(None, "CPUs (torch threads) per VAE / diffusion worker (default: Ray Train's 1)")
    use_gpu: bool = option(False, "GPUs for training, generation and evaluation")
    cpus_per_task: float = option(1.0, "CPUs per SER training / generation task")
    wavs_per_emotion: int = option(1, "Griffin-Lim clips per emotion and source in the report")
    # the judge SER's seed: it must not be the filter (a seed's baseline SER) in disguise
    judge_seed: int = option(1000, "seed of the SER that judges generated clips (trained on train+val)")
    register_prefix: str = option("emogen", "register each fold's generators and baseline SERs in the MLflow model "
                                  "registry as PREFIX-vae, PREFIX-diffusion, PREFIX-ser ('': do not register)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise ValueError("the experiment needs at least one seed")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2 (every speaker is tested once), got {self.folds}")
        if self.per_emotion < 0 or self.ratio < 0:
            raise ValueError("per_emotion and ratio must be >= 0")
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError("min_confidence must be in [0, 1)")
        if self.wavs_per_emotion < 1 or self.num_workers < 1:
            raise ValueError("wavs_per_emotion and num_workers must be >= 1")
        if self.cpus_per_task <= 0 or (self.cpus_per_worker is not None and self.cpus_per_worker <= 0):
            raise ValueError("cpus_per_task and cpus_per_worker must be > 0")


def experiment_config(preset: str, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """The preset's experiment section with overrides on top (None values keep the preset's)."""
    values = {**preset_sections(preset).get("experiment", {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return replace(ExperimentConfig(), values)


def model_overrides(overrides: dict[str, dict[str, Any]] | None, model: str) -> dict[str, dict[str, Any]]:
    """One model's overrides from an experiment's: the model sections as they are, and
    "train" merged with "train_<model>" (e.g. {"train_ser": {"epochs": 10}})."""
    overrides = overrides or {}
    out = {k: dict(v) for k, v in overrides.items() if not k.startswith("train")}
    out["train"] = {**overrides.get("train", {}), **overrides.get(f"train_{model}", {})}
    return out


# -------------------------------------------------------------------- finished stages


class StageKind(enum.Enum):
    PARENT_RUN = "parent_run"
    GENERATOR = "generator"  # a generator's Ray Train run, keyed by the generator alone
    SER = "ser"
    JUDGE = "judge"
    GENERATED = "generated"
    FID_REFERENCE = "fid_reference"
    PROBE = "probe"


@dataclass(frozen=True)
class StageKey:
    """One unit of work in <out>/stages.json: "parent_run", then per fold "fold0/vae",
    "fold0/ser/real/0", "fold0/generated/vae/0", "fold0/fid_reference/0", "fold0/probe",
    "fold0/judge"."""

    kind: StageKind
    fold: int | None = None
    name: str | None = None  # the generator or the condition
    seed: int | None = None

    def __str__(self) -> str:
        parts = [] if self.fold is None else [f"fold{self.fold}"]
        parts += [] if self.kind is StageKind.GENERATOR else [self.kind.value]
        return "/".join([*parts, *(str(p) for p in (self.name, self.seed) if p is not None)])

    @classmethod
    def parent_run(cls) -> StageKey:
        return cls(StageKind.PARENT_RUN)

    @classmethod
    def generator(cls, fold: int, generator: str) -> StageKey:
        return cls(StageKind.GENERATOR, fold, generator)

    @classmethod
    def ser(cls, fold: int, condition: str, seed: int) -> StageKey:
        return cls(StageKind.SER, fold, condition, seed)

    @classmethod
    def judge(cls, fold: int) -> StageKey:
        return cls(StageKind.JUDGE, fold)

    @classmethod
    def generated(cls, fold: int, generator: str, seed: int) -> StageKey:
        return cls(StageKind.GENERATED, fold, generator, seed)

    @classmethod
    def fid_reference(cls, fold: int, seed: int) -> StageKey:
        return cls(StageKind.FID_REFERENCE, fold, seed=seed)

    @classmethod
    def probe(cls, fold: int) -> StageKey:
        return cls(StageKind.PROBE, fold)


def _write_json(path: Path, data: Any) -> None:
    from emogen.checkpoint import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=float)

    atomic_write(path, write)


class FinishedStages:
    """Finished units of work and their results in <out>/stages.json (resume skips them)."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def __contains__(self, key: StageKey) -> bool:
        return str(key) in self.done

    def __getitem__(self, key: StageKey) -> Any:
        return self.done[str(key)]

    def run(self, key: StageKey, func: Callable[[], Any]) -> Any:
        if key not in self:
            self.done[str(key)] = func()
            _write_json(self.path, self.done)
        return self[key]


# -------------------------------------------------------------------- the shared context


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per fold
class Split:
    """One speaker fold: its assignment (TrainConfig.split_seed and val_fraction), its
    rows, and its held-out clips, which every model of the fold is scored on, in Ray's
    object store."""

    fold: int
    assignment: dict[str, str]  # clip_id -> "train" | "val" | "test"
    table: Any  # the features table (pandas) with this fold's "split" column
    counts: dict[str, int]
    test: Any  # the test rows
    test_mels: Any  # ray.ObjectRef
    test_labels: Any  # ray.ObjectRef
    test_speakers: Any  # numpy array of the test rows' speakers

    def rows(self, *splits: str) -> Any:
        return self.table[self.table["split"].isin(splits)]

    def judge_assignment(self) -> dict[str, str]:
        """The judge's and the probe's: the validation clips join training."""
        return {clip: "train" if split == "val" else split for clip, split in self.assignment.items()}

    def summary(self) -> FoldSplit:
        speakers = {s: sorted(self.rows(s)["speaker"].astype(str).unique().tolist()) for s in ("val", "test")}
        return FoldSplit(fold=self.fold, test_speakers=speakers["test"], val_speakers=speakers["val"],
                         split_counts=self.counts, class_counts=_class_counts(self.table))


def _class_counts(table: Any) -> dict[str, dict[str, int]]:
    return {s: {e: int(((table["split"] == s) & (table["label"] == k)).sum()) for k, e in enumerate(EMOTIONS)}
            for s in ("train", "val", "test")}


@dataclass
class ExperimentContext:
    """What the stages share: the run's settings and paths, the folds, Ray resources, the
    MLflow parent run, and what the stages before produced."""

    features: str | Path
    out: Path
    preset: str
    config: ExperimentConfig
    name: str
    overrides: dict[str, dict[str, Any]]
    command: str | None
    tracking_uri: str | None  # as given: None is MLflow's default store
    mlflow: MLflowRun  # the resolved store, the experiment and the parent run
    cpu_task: dict[str, float]  # Ray resources of every task
    splits: list[Split]  # one per fold
    per_emotion: int  # generated clips per emotion, fold, seed and generator
    diffusion_space: str  # "mel" or "latent"
    finished: FinishedStages
    seconds: dict[str, float]  # wall seconds per stage, the caller's (corpus, preprocess) first
    generators: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)  # (fold, generator): fit() summary
    probes: dict[int, Any] = field(default_factory=dict)  # fold: fitted LinearProbe (refit on resume: deterministic)
    runs: dict[str, list[SERRun]] = field(default_factory=dict)
    probe_runs: list[ProbeRun] = field(default_factory=list)
    judges: list[JudgeRun] = field(default_factory=list)
    samples: Samples | None = None
    results: ExperimentResults | None = None

    def remote(self, func: Callable[..., Any], **options: Any) -> Any:
        """func as a Ray task with the experiment's per-task resources (and options such as max_retries)."""
        import ray

        return ray.remote(func).options(**self.cpu_task, **options)

    def pairs(self) -> list[tuple[Split, int]]:
        """Every (fold, seed), fold by fold."""
        return [(split, seed) for split in self.splits for seed in self.config.seeds]

    def fold_dir(self, split: Split) -> Path:
        return self.out / f"fold{split.fold}"


def _start(features: str | Path, out_dir: str | Path, preset: str, config: ExperimentConfig | None, name: str | None,
           tracking_uri: str | None, command: str | None, seconds_before: dict[str, float] | None,
           overrides: dict[str, dict[str, Any]] | None) -> ExperimentContext:
    """The folds, their held-out clips in the object store, and the MLflow parent run."""
    import ray

    from emogen.tracking import runs as tracking
    from emogen.data.features import decode_mels, read_features
    from emogen.presets import model_configs
    from emogen.training import fold_assignments, train_config

    config = config or experiment_config(preset)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = name or out.name
    overrides = overrides or {}
    finished = FinishedStages(out / "stages.json")
    experiment_id = tracking.configure(tracking_uri)
    _quiet_ray_data()

    ser_train = train_config("ser", preset, model_overrides(overrides, "ser")["train"])
    try:
        assignments = fold_assignments(features, config.folds, ser_train)
    except ValueError as error:  # too few speakers for the folds: the user's choice to fix
        raise InvalidInputError(f"--folds {config.folds}: {error}") from None
    table = read_features(features)
    splits = []
    for fold, assignment in enumerate(assignments):
        fold_table = table.assign(split=table["clip_id"].map(assignment))
        counts = {s: int((fold_table["split"] == s).sum()) for s in ("train", "val", "test")}
        if counts["val"] == 0 or counts["train"] == 0:
            raise InvalidInputError(f"--folds {config.folds}: fold {fold} left no training or validation speakers in "
                                    f"{features}; use fewer folds or a corpus with more speakers")
        test = fold_table[fold_table["split"] == "test"].reset_index(drop=True)
        splits.append(Split(fold, assignment, fold_table, counts, test, ray.put(decode_mels(test)),
                            ray.put(test["label"].to_numpy()), test["speaker"].astype(str).to_numpy()))
    mean_train = np.mean([split.counts["train"] for split in splits])
    per_emotion = config.per_emotion or max(1, round(config.ratio * mean_train / len(EMOTIONS)))
    diffusion_space = model_configs(preset, overrides)["diffusion"].space
    params = {"preset": preset, "features": str(features), "experiment": dataclasses.asdict(config), "per_emotion": per_emotion,
              "split_counts": {f"fold{s.fold}": s.counts for s in splits}, "diffusion_space": diffusion_space,
              "overrides": overrides}
    parent = finished.run(StageKey.parent_run(), lambda: _parent_run(name, params, tracking_uri))
    tracking.mark_running(parent, tracking_uri)  # until _log_parent ends it (a stopped job: KILLED)
    return ExperimentContext(
        features=features, out=out, preset=preset, config=config, name=name, overrides=overrides, command=command,
        tracking_uri=tracking_uri,
        mlflow=MLflowRun(tracking_uri=tracking.resolve_tracking_uri(tracking_uri), experiment_id=experiment_id, parent_run_id=parent),
        cpu_task={"num_cpus": config.cpus_per_task, "num_gpus": 1 if config.use_gpu else 0},
        splits=splits, per_emotion=per_emotion, diffusion_space=diffusion_space, finished=finished,
        seconds=dict(seconds_before or {}),
    )


def _parent_run(name: str, params: dict[str, Any], tracking_uri: str | None) -> str:
    from emogen.tracking import runs as tracking

    return tracking.get_or_create_run(f"experiment-{name}", {"emogen.model": "experiment"}, params, tracking_uri)


def _condition_dir(condition: str) -> str:
    return condition.replace("+", "_")


# ---------------------------------------------------------------------- Ray tasks


def _set_threads() -> None:
    """Torch threads = the CPUs Ray gave this task: more threads than CPUs oversubscribe
    the cores that the tasks beside it use."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    _quiet_ray_data()


def _quiet_ray_data() -> None:
    """No Ray Data progress bars: datasets carry this context into the training tasks,
    whose per-epoch lines are the progress (a bar per epoch and split is noise)."""
    import logging

    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _train_ser_task(loop: dict[str, Any], datasets: dict[str, Any], run_dir: str, use_gpu: bool) -> dict[str, Any]:
    from emogen.training import train_in_process

    _set_threads()
    began = time.time()
    summary = train_in_process(loop, datasets, run_dir, use_gpu)
    summary["seconds"] = round(time.time() - began, 1)
    return summary


def _judged(requested: np.ndarray, predicted: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    """A judge's clarity of all generated clips and of the kept ones, overall and per emotion."""
    from emogen.evaluation.metrics import clarity_per_emotion, emotional_clarity

    return {"all": emotional_clarity(requested, predicted), "all_per_emotion": clarity_per_emotion(requested, predicted),
            "kept": emotional_clarity(requested[keep], predicted[keep]),
            "kept_per_emotion": clarity_per_emotion(requested[keep], predicted[keep])}


def _generate_task(generator_checkpoint: str, filter_checkpoint: str, judge_checkpoint: str, probe: Any, per_emotion: int,
                   seed: int, options: dict[str, Any], min_confidence: float, out_dir: str,
                   real_eval: dict[str, Any], real_mels: np.ndarray) -> dict[str, Any]:
    """Generate per_emotion clips of every emotion, score them with the filter (the fold
    and seed's baseline SER), keep the confident ones, write them as a features dataset,
    let the judges (the fold's judge SER and linear probe) score all and kept clips, and
    measure realism against the fold's held-out real clips."""
    from emogen.data.features import write_generated_features
    from emogen.inference.classifier import SERClassifier
    from emogen.inference.generator import EmotionGenerator
    from emogen.evaluation.metrics import (
        classification_report,
        emotional_clarity,
        frechet_distance,
        inception_score,
        silent_frame_fraction,
        two_sample_accuracy,
    )

    _set_threads()
    began = time.time()
    generator = EmotionGenerator.from_checkpoint(generator_checkpoint)
    mels, labels = [], []
    for k, emotion in enumerate(EMOTIONS):
        mels.append(generator.generate(emotion, per_emotion, seed=seed * 1000 + k, **options))
        labels += [k] * per_emotion
    mels, labels = np.concatenate(mels), np.asarray(labels)
    generate_s = time.time() - began

    probs, embeddings = SERClassifier.from_checkpoint(filter_checkpoint).predict(mels)
    confidence = probs[np.arange(len(labels)), labels]
    keep = confidence >= min_confidence
    kept_labels = labels[keep]
    if keep.sum() == 0:
        raise RuntimeError(f"min_confidence {min_confidence} kept none of {len(labels)} generated clips: lower it")
    write_generated_features(mels[keep], kept_labels, out_dir, source=Path(out_dir).name)
    report = classification_report(labels, probs.argmax(axis=1))
    judge_probs, _ = SERClassifier.from_checkpoint(judge_checkpoint).predict(mels)
    return {
        "n_clips": int(len(labels)),
        "n_kept": int(keep.sum()),
        "kept_per_emotion": {e: int((kept_labels == k).sum()) for k, e in enumerate(EMOTIONS)},
        "clarity": emotional_clarity(labels, probs.argmax(axis=1)),
        "clarity_per_emotion": report["recall"],
        "judged": {SER_JUDGE: _judged(labels, judge_probs.argmax(axis=1), keep),
                   PROBE_JUDGE: _judged(labels, np.asarray(probe.predict(mels)), keep)},
        "fid": frechet_distance(real_eval["embeddings"], embeddings)["fid"],
        "fid_counts": {"n_real": int(len(real_eval["embeddings"])), "n_generated": int(len(embeddings))},
        "inception_score": inception_score(probs)["is"],
        "two_sample": two_sample_accuracy(real_mels, mels, seed=seed),
        "silent_frames": silent_frame_fraction(mels),
        "mean_confidence": float(confidence.mean()),
        "examples": {e: mels[labels == k][:4].astype(np.float16) for k, e in enumerate(EMOTIONS)},
        "generate_seconds": round(generate_s, 1),
    }


def _evaluate_task(ser_checkpoint: str, mels: np.ndarray, labels: np.ndarray, speakers: np.ndarray | None = None) -> dict[str, Any]:
    """Scores and embeddings of an SER on labelled clips; with speakers, also UA per speaker."""
    from emogen.evaluation.metrics import held_out_report
    from emogen.inference.classifier import SERClassifier
    from emogen.evaluation.metrics import classification_report

    _set_threads()
    probs, embeddings = SERClassifier.from_checkpoint(ser_checkpoint).predict(mels)
    preds = probs.argmax(axis=1)
    report = classification_report(labels, preds) if speakers is None else held_out_report(labels, preds, speakers)
    return {**report, "embeddings": embeddings}


def _attention_task(checkpoint: str, emotion: str, seed: int, sampling: dict[str, Any], path: str) -> str:
    """The diffusion U-Net's attention while it generates one clip of an emotion, as a PNG."""
    from emogen.inference.attention import capture_attention, plot_attention
    from emogen.inference.generator import EmotionGenerator

    _set_threads()
    maps = capture_attention(EmotionGenerator.from_checkpoint(checkpoint), emotion, seed=seed, **sampling)
    return str(plot_attention(maps, path))


def _griffin_lim_task(mels: np.ndarray) -> np.ndarray:
    from emogen.audio.mel import MelInverter
    from emogen.config import AudioConfig

    _set_threads()
    return MelInverter(AudioConfig())(np.array(mels, dtype=np.float32))  # a writable copy of the object-store array


# ---------------------------------------------------------------------- the stages


def _ser_loop(ctx: ExperimentContext, split: Split, condition: str, seed: int, scale: float = 1.0) -> tuple[dict[str, Any], str]:
    """The training loop config and run folder of one SER of a fold, with its MLflow child
    run. scale: epochs (and early-stopping patience) x scale, for the matched-steps control."""
    from emogen.training import loop_config, start_child_run, train_config

    ser_overrides = model_overrides(ctx.overrides, "ser")
    ser_train = train_config("ser", ctx.preset, {**ser_overrides["train"],
                                                 **({"epochs": ctx.config.ser_epochs} if ctx.config.ser_epochs else {})})
    ser_overrides["train"].update(seed=seed, early_stopping_patience=round(ser_train.early_stopping_patience * scale))
    loop, run_params = loop_config("ser", ctx.preset, ser_overrides, max(1, round(ser_train.epochs * scale)))
    run_params.update(condition=condition, fold=split.fold, seed=seed)
    label = f"{_condition_dir(condition)}-f{split.fold}-s{seed}"
    run_id = start_child_run(f"ser-{label}-{ctx.name}", "ser", run_params, ctx.tracking_uri, ctx.mlflow.parent_run_id)
    loop["mlflow"] = {"tracking_uri": ctx.mlflow.tracking_uri, "run_id": run_id}
    loop["label"] = f"ser {condition} fold {split.fold} seed {seed}"
    return loop, str(ctx.fold_dir(split) / "ser" / f"{_condition_dir(condition)}-s{seed}")


def _probe(ctx: ExperimentContext, split: Split) -> Any:
    """The fold's linear probe on its real train+val clips (fit in the driver: one
    deterministic, cheap fit; fit again on resume rather than pickled)."""
    from emogen.data.features import decode_mels
    from emogen.evaluation.probe import LinearProbe

    if split.fold not in ctx.probes:
        rows = split.rows("train", "val")
        ctx.probes[split.fold] = LinearProbe().fit(decode_mels(rows), rows["label"].to_numpy())
    return ctx.probes[split.fold]


def _score_probe(ctx: ExperimentContext, split: Split) -> dict[str, Any]:
    import ray

    from emogen.evaluation.metrics import held_out_report

    preds = _probe(ctx, split).predict(ray.get(split.test_mels))
    return {"n_train": int(len(split.rows("train", "val"))),
            **held_out_report(ray.get(split.test_labels), np.asarray(preds), split.test_speakers)}


def train_baselines(ctx: ExperimentContext) -> None:
    """Per fold and seed, an SER on the real training clips, and per fold the judge SER on
    training + validation clips (Ray tasks, side by side); meanwhile, in the driver, each
    fold's linear probe."""
    import ray

    from emogen.training import split_datasets

    train_ser = ctx.remote(_train_ser_task, max_retries=2)
    pending = {}
    for split in ctx.splits:
        real = None
        for seed in ctx.config.seeds:
            key = StageKey.ser(split.fold, REAL, seed)
            if key not in ctx.finished:
                real = real or split_datasets(ctx.features, split.assignment)
                loop, run_dir = _ser_loop(ctx, split, REAL, seed)
                pending[key] = train_ser.remote(loop, real, run_dir, ctx.config.use_gpu)
        key = StageKey.judge(split.fold)
        if key not in ctx.finished:
            loop, run_dir = _ser_loop(ctx, split, "judge", ctx.config.judge_seed)
            pending[key] = train_ser.remote(loop, split_datasets(ctx.features, split.judge_assignment()), run_dir,
                                            ctx.config.use_gpu)
    for split in ctx.splits:
        ctx.finished.run(StageKey.probe(split.fold), lambda split=split: _score_probe(ctx, split))
    for key, ref in pending.items():
        ctx.finished.run(key, lambda ref=ref: ray.get(ref))


def _train_generator(ctx: ExperimentContext, generator: str) -> None:
    """One generator per fold with Ray Train on the fold's training speakers; latent
    diffusion needs the fold's VAE trained first."""
    from emogen.training import FitConfig, fit

    cfg = ctx.config
    for split in ctx.splits:
        latent = generator == DIFFUSION and ctx.diffusion_space == "latent"
        fit_config = FitConfig(
            preset=ctx.preset, overrides=model_overrides(ctx.overrides, generator),
            epochs={VAE: cfg.vae_epochs, DIFFUSION: cfg.diffusion_epochs}[generator],
            run_name=f"{generator}-f{split.fold}-{ctx.name}", num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
            storage_path=ctx.out / "train", tracking_uri=ctx.tracking_uri, parent_run_id=ctx.mlflow.parent_run_id,
            cpus_per_worker=cfg.cpus_per_worker, assignment=split.assignment, label=f"{generator} fold {split.fold}",
            vae_checkpoint=ctx.generators[(split.fold, VAE)]["checkpoint"] if latent else None,
        )
        ctx.generators[(split.fold, generator)] = ctx.finished.run(
            StageKey.generator(split.fold, generator), lambda fit_config=fit_config: fit(generator, ctx.features, fit_config))


def train_vae(ctx: ExperimentContext) -> None:
    _train_generator(ctx, VAE)


def train_diffusion(ctx: ExperimentContext) -> None:
    _train_generator(ctx, DIFFUSION)


def generate(ctx: ExperimentContext) -> None:
    """Per fold, seed and generator, per_emotion clips of every emotion, filtered by the
    fold and seed's baseline SER and scored by the judges (Ray tasks); per fold and seed,
    the FID of real training clips against the held-out ones, the scale of "real-like"."""
    import ray

    from emogen.data.features import decode_mels
    from emogen.evaluation.metrics import frechet_distance

    cfg, finished = ctx.config, ctx.finished
    evaluate_task = ctx.remote(_evaluate_task)
    generate_task = ctx.remote(_generate_task, max_retries=2)
    sampling = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale}
    launched, references, train_refs, probes = {}, {}, {}, {}
    for split, seed in ctx.pairs():
        fold = split.fold
        keys = [StageKey.generated(fold, gen, seed) for gen in GENERATORS] + [StageKey.fid_reference(fold, seed)]
        if all(key in finished for key in keys):
            continue
        filter_checkpoint = finished[StageKey.ser(fold, REAL, seed)]["checkpoint"]
        held_out = evaluate_task.remote(filter_checkpoint, split.test_mels, split.test_labels)  # embeddings for FID
        if StageKey.fid_reference(fold, seed) not in finished:
            if fold not in train_refs:
                rows = split.rows("train")
                train_refs[fold] = (ray.put(decode_mels(rows)), ray.put(rows["label"].to_numpy()))
            references[(fold, seed)] = (held_out, evaluate_task.remote(filter_checkpoint, *train_refs[fold]))
        if fold not in probes:
            probes[fold] = ray.put(_probe(ctx, split))
        for gen in GENERATORS:
            if StageKey.generated(fold, gen, seed) not in finished:
                launched[(fold, gen, seed)] = generate_task.remote(
                    ctx.generators[(fold, gen)]["checkpoint"], filter_checkpoint, finished[StageKey.judge(fold)]["checkpoint"],
                    probes[fold], ctx.per_emotion, seed, sampling if gen == DIFFUSION else {"vae_latent": cfg.vae_latent},
                    cfg.min_confidence,
                    str(_generated_dir(ctx, split, gen, seed)), held_out, split.test_mels)
    for (fold, seed), (held_out, training) in references.items():
        finished.run(StageKey.fid_reference(fold, seed), lambda a=held_out, b=training: frechet_distance(
            ray.get(a)["embeddings"], ray.get(b)["embeddings"]))
    for (fold, gen, seed), ref in launched.items():
        result = ray.get(ref)
        gen_dir = _generated_dir(ctx, ctx.splits[fold], gen, seed)
        np.savez_compressed(gen_dir / "examples.npz", **result.pop("examples"))
        finished.run(StageKey.generated(fold, gen, seed), lambda result=result, gen_dir=gen_dir: {**result, "dir": str(gen_dir)})
        judged = result["judged"]
        log.info("%s fold %d seed %d: filter clarity %.3f, judge clarity %.3f (probe %.3f), FID %.1f, IS %.2f, kept %d/%d",
                 gen, fold, seed, result["clarity"], judged[SER_JUDGE]["all"], judged[PROBE_JUDGE]["all"], result["fid"],
                 result["inception_score"], result["n_kept"], result["n_clips"])


def _generated_dir(ctx: ExperimentContext, split: Split, generator: str, seed: int) -> Path:
    return ctx.fold_dir(split) / "generated" / f"{generator}-s{seed}"


def _n_generated(ctx: ExperimentContext, split: Split, condition: str, seed: int) -> int:
    """Generated clips (kept) in the training set of a condition's SER."""
    if condition not in GENERATED_FROM:
        return 0
    return ctx.finished[StageKey.generated(split.fold, GENERATED_FROM[condition], seed)]["n_kept"]


def train_augmented(ctx: ExperimentContext) -> None:
    """Per fold and seed, an SER on real+VAE and one on real+diffusion clips, and the
    control: real clips alone for as many optimizer steps as CONTROL_MATCHES's (Ray tasks)."""
    import ray

    from emogen.training import split_datasets

    train_ser = ctx.remote(_train_ser_task, max_retries=2)
    pending, real = {}, {}
    for split, seed in ctx.pairs():
        n_train = split.counts["train"]
        for condition in CONDITIONS[1:]:
            key = StageKey.ser(split.fold, condition, seed)
            if key in ctx.finished:
                continue
            if condition in GENERATED_FROM:
                generated = ctx.finished[StageKey.generated(split.fold, GENERATED_FROM[condition], seed)]["dir"]
                data, scale = split_datasets(ctx.features, split.assignment, extra_train=[generated]), 1.0
            else:
                if split.fold not in real:
                    real[split.fold] = split_datasets(ctx.features, split.assignment)
                data, scale = real[split.fold], (n_train + _n_generated(ctx, split, CONTROL_MATCHES, seed)) / n_train
            loop, run_dir = _ser_loop(ctx, split, condition, seed, scale)
            pending[key] = train_ser.remote(loop, data, run_dir, ctx.config.use_gpu)
    for key, ref in pending.items():
        ctx.finished.run(key, lambda ref=ref: ray.get(ref))


def evaluate(ctx: ExperimentContext) -> None:
    """Every SER and judge on its fold's held-out speakers (Ray tasks); the probes' scores."""
    import ray

    evaluate_task = ctx.remote(_evaluate_task)
    speakers = {split.fold: ray.put(split.test_speakers) for split in ctx.splits}
    refs = {}
    for split, seed in ctx.pairs():
        for condition in CONDITIONS:
            summary = ctx.finished[StageKey.ser(split.fold, condition, seed)]
            refs[(split, condition, seed)] = evaluate_task.remote(summary["checkpoint"], split.test_mels, split.test_labels,
                                                                  speakers[split.fold])
    judge_refs = {split.fold: evaluate_task.remote(ctx.finished[StageKey.judge(split.fold)]["checkpoint"], split.test_mels,
                                                   split.test_labels) for split in ctx.splits}
    ctx.probe_runs = []
    for split in ctx.splits:
        probe = dict(ctx.finished[StageKey.probe(split.fold)])
        ctx.probe_runs.append(ProbeRun(fold=split.fold, n_train=probe.pop("n_train"), per_speaker=probe.pop("per_speaker"),
                                       metrics=SERMetrics.model_validate(probe)))
    ctx.runs = {c: [] for c in CONDITIONS}
    for (split, condition, seed), ref in refs.items():
        metrics = ray.get(ref)
        metrics.pop("embeddings")
        per_speaker = metrics.pop("per_speaker")
        summary, n_generated = ctx.finished[StageKey.ser(split.fold, condition, seed)], _n_generated(ctx, split, condition, seed)
        ctx.runs[condition].append(SERRun(
            fold=split.fold, seed=seed, checkpoint=summary["checkpoint"], n_train=split.counts["train"] + n_generated,
            n_generated=n_generated, train_steps=int(summary["history"][-1]["steps"]), train_seconds=summary.get("seconds"),
            epochs=summary["epochs_completed"], stopped_early=summary["stopped_early"],
            metrics=SERMetrics.model_validate(metrics), per_speaker=per_speaker, history=summary["history"],
        ))
    ctx.judges = []
    for fold, ref in judge_refs.items():
        metrics, summary = ray.get(ref), ctx.finished[StageKey.judge(fold)]
        metrics.pop("embeddings")
        ctx.judges.append(JudgeRun(fold=fold, seed=ctx.config.judge_seed, checkpoint=summary["checkpoint"],
                                   epochs=summary["epochs_completed"], metrics=SERMetrics.model_validate(metrics)))


def listening_samples(ctx: ExperimentContext) -> None:
    """Mels (one per emotion and source) for the report's grid, Griffin-Lim WAVs to listen
    to: held-out real clips of the first fold and the first seed's generated ones; per
    emotion, the first fold's diffusion U-Net attention while generating a clip (PNG)."""
    import ray
    import soundfile as sf

    from emogen.config import AudioConfig
    from emogen.data.features import decode_mels

    split, seed = ctx.pairs()[0]
    n = ctx.config.wavs_per_emotion
    sources: dict[str, dict[str, np.ndarray]] = {REAL: {}}
    for k, emotion in enumerate(EMOTIONS):
        rows = split.test[split.test["label"] == k].head(n)
        if len(rows):
            sources[REAL][emotion] = decode_mels(rows)
    for gen in GENERATORS:
        examples = np.load(_generated_dir(ctx, split, gen, seed) / "examples.npz")
        sources[gen] = {e: examples[e][:n].astype(np.float32) for e in EMOTIONS if len(examples[e])}
    sample_dir = ctx.out / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    grid = {f"{source}/{emotion}": mels[0] for source, per in sources.items() for emotion, mels in per.items()}
    np.savez_compressed(sample_dir / "mels.npz", **grid)
    inverse = ctx.remote(_griffin_lim_task)
    refs = {source: inverse.remote(np.concatenate(list(per.values()))) for source, per in sources.items() if per}
    cfg = ctx.config
    sampling = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale}
    attention = ctx.remote(_attention_task)
    attention_refs = {emotion: attention.remote(ctx.generators[(split.fold, DIFFUSION)]["checkpoint"], emotion, seed, sampling,
                                                str(sample_dir / f"attention_{emotion}.png")) for emotion in EMOTIONS}
    wavs = []
    rate = AudioConfig().sample_rate
    for source, ref in refs.items():
        waves = iter(ray.get(ref))
        for emotion, mels in sources[source].items():
            for i in range(len(mels)):
                path = sample_dir / f"{source}_{emotion}_{i}.wav"
                sf.write(str(path), next(waves), rate, subtype="PCM_16")
                wavs.append(SampleClip(source=source, emotion=emotion, path=str(path.relative_to(ctx.out))))
    pngs = {emotion: str(Path(ray.get(ref)).relative_to(ctx.out)) for emotion, ref in attention_refs.items()}
    ctx.samples = Samples(mels=str((sample_dir / "mels.npz").relative_to(ctx.out)), wavs=wavs, attention=pngs)


def write_reports(ctx: ExperimentContext) -> None:
    """results.json, report.md and report.html; the report shows the total up to here."""
    from emogen.experiment.report import write_report

    results = _results(ctx)
    results.seconds = {**ctx.seconds, "total": round(sum(ctx.seconds.values()), 1)}
    _write_json(ctx.out / "results.json", results.to_json())
    paths = write_report(results, ctx.out)
    results.report = {kind: str(paths[kind]) for kind in ("md", "html")}
    ctx.results = results


@dataclass(frozen=True)
class Stage:
    name: str  # its key in results.seconds
    describe: Callable[[ExperimentContext], str]  # its progress line
    run: Callable[[ExperimentContext], None]


def _folds_text(ctx: ExperimentContext) -> str:
    return f"{len(ctx.splits)} folds x {len(ctx.config.seeds)} seeds"


STAGES: tuple[Stage, ...] = (
    Stage("train_ser_real", lambda ctx: f"training {len(ctx.pairs())} baseline SERs on real clips ({_folds_text(ctx)}) "
          f"and {len(ctx.splits)} judge SERs (Ray tasks), fitting {len(ctx.splits)} linear probes", train_baselines),
    Stage("train_vae", lambda ctx: f"training {len(ctx.splits)} VAEs, one per fold (Ray Train)", train_vae),
    Stage("train_diffusion", lambda ctx: f"training {len(ctx.splits)} {ctx.diffusion_space}-space diffusion U-Nets, "
          "one per fold (Ray Train)", train_diffusion),
    Stage("generate", lambda ctx: f"generating {ctx.per_emotion} clips per emotion per fold and seed with each generator "
          "(Ray tasks)", generate),
    Stage("train_ser_augmented", lambda ctx: f"training {len(ctx.pairs()) * (len(CONDITIONS) - 1)} SERs: real+VAE, "
          f"real+diffusion, and real alone for real+diffusion's optimizer steps ({_folds_text(ctx)}, Ray tasks)",
          train_augmented),
    Stage("evaluate", lambda ctx: f"evaluating {len(CONDITIONS) * len(ctx.pairs())} SERs and {len(ctx.splits)} judges "
          "on their folds' held-out speakers (Ray tasks)", evaluate),
    Stage("samples", lambda ctx: "Griffin-Lim audio and diffusion attention maps for the report", listening_samples),
    Stage("report", lambda ctx: "writing results.json, report.md, report.html", write_reports),
)


# ------------------------------------------------------------------- the experiment


def run_experiment(
    features: str | Path,
    out_dir: str | Path,
    preset: str = "demo",
    config: ExperimentConfig | None = None,
    name: str | None = None,
    tracking_uri: str | None = None,
    command: str | None = None,
    seconds_before: dict[str, float] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> ExperimentResults:
    """Run (or resume) the whole experiment; returns the results also written to
    <out_dir>/results.json, with the report's paths. seconds_before: stages the caller ran
    first (corpus, preprocess). overrides: preset sections ({"ser": {...}, "train_ser": {...},
    "train": {...}, ...})."""
    began = time.time()
    ctx = _start(features, out_dir, preset, config, name, tracking_uri, command, seconds_before, overrides)
    for index, stage in enumerate(STAGES, start=1):
        log.info("%d/%d +%.0fs %s", index, len(STAGES), time.time() - began, stage.describe(ctx))
        stage_began = time.time()
        stage.run(ctx)
        ctx.seconds[stage.name] = round(time.time() - stage_began, 1)
    results = ctx.results
    assert results is not None, "the report stage builds the results"
    results.seconds = {**ctx.seconds, "total": round(sum(ctx.seconds.values()), 1)}
    _write_json(ctx.out / "results.json", results.to_json())
    _log_parent(results, ctx.out, tracking_uri)
    if ctx.config.register_prefix:
        _register_models(ctx, results)
    return results


def _register_models(ctx: ExperimentContext, results: ExperimentResults) -> list[dict[str, Any]]:
    """Each fold's generators and each fold and seed's baseline SER as versions of
    PREFIX-vae, PREFIX-diffusion and PREFIX-ser, tagged with the experiment, fold, seed
    and their judged clarity / UA. A model already registered from the same run (a
    resumed experiment) is not registered again."""
    from emogen.tracking import runs as tracking
    from emogen.inference.pyfunc import log_checkpoint_model
    from emogen.tracking.registry import register, registered_version

    tracking.configure(ctx.tracking_uri)
    prefix = ctx.config.register_prefix
    done = []
    for (fold, generator), summary in sorted(ctx.generators.items()):
        name, run_id = f"{prefix}-{generator}", summary["mlflow_run_id"]
        # no model_uri: trained before models were logged (a resumed old experiment)
        if not summary.get("model_uri") or registered_version(name, run_id, ctx.tracking_uri):
            continue
        info = results.generated.get(generator)
        tags = {"emogen.experiment": ctx.name, "emogen.fold": str(fold)}
        if info is not None and SER_JUDGE in info.judged:  # over the experiment's folds and seeds
            tags["emogen.clarity_by_ser_judge"] = f"{info.judged[SER_JUDGE].all.mean:.4f}"
        done.append({"model": name, "version": register(summary["model_uri"], name, run_id, tags), **tags})
    for run in results.runs.get(REAL, []):
        name = f"{prefix}-ser"
        run_id = tracking.find_run(f"ser-{_condition_dir(REAL)}-f{run.fold}-s{run.seed}-{ctx.name}", ctx.tracking_uri)
        if run_id is None or registered_version(name, run_id, ctx.tracking_uri):
            continue
        tags = {"emogen.experiment": ctx.name, "emogen.fold": str(run.fold), "emogen.seed": str(run.seed),
                "emogen.ua": f"{run.metrics.unweighted_accuracy:.4f}"}
        logged = log_checkpoint_model(run_id, run.checkpoint, register_as=name, tags=tags)
        done.append({"model": name, "version": logged["version"], **tags})
    log.info("registered %d models: %s", len(done), ", ".join(f"{d['model']} v{d['version']}" for d in done))
    return done


# ------------------------------------------------------------------- results


def _results(ctx: ExperimentContext) -> ExperimentResults:
    runs, cfg = ctx.runs, ctx.config
    gains = {c: paired_gains(runs[c], runs[REAL]) for c in CONDITIONS if c != REAL}
    real = _real_realism(ctx)  # one pass over the real clips for both generators
    generated = {gen: _generated_set(ctx, gen, real) for gen in GENERATORS}
    folds = [split.summary() for split in ctx.splits]
    tested = {e: sum(f.class_counts["test"][e] for f in folds) for e in EMOTIONS}
    return ExperimentResults(
        name=ctx.name,
        preset=ctx.preset,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=ctx.command or f"emogen experiment --data {ctx.features} --preset {ctx.preset}",
        config=dataclasses.asdict(cfg),
        data=DataSummary(features=str(ctx.features), split_counts={"test": sum(tested.values())}, class_counts={"test": tested},
                         test_speakers=sorted(s for f in folds for s in f.test_speakers), folds=folds),
        seeds=list(cfg.seeds),
        n_folds=len(ctx.splits),
        conditions=list(CONDITIONS),
        runs=runs,
        summary={c: summarize(runs[c]) for c in CONDITIONS},
        gains=gains,
        # what the generated clips add beyond the optimizer steps they bring
        gains_over_matched={CONTROL_MATCHES: paired_gains(runs[CONTROL_MATCHES], runs[CONTROL])},
        comparisons=comparisons(runs),
        probe=pool_probes(ctx.probe_runs),
        probes=ctx.probe_runs,
        judges=ctx.judges,
        generated=generated,
        generators={gen: _generator_run(ctx, split, gen) for split in ctx.splits[:1] for gen in GENERATORS},
        generators_per_fold={gen: [_generator_run(ctx, split, gen) for split in ctx.splits] for gen in GENERATORS},
        samples=ctx.samples,
        targets=Targets(
            ua_gain_points=UA_GAIN_TARGET_POINTS,
            diffusion_ua_gain_met=bool(gains[AUGMENTED_BY[DIFFUSION]][UA].mean * 100 >= UA_GAIN_TARGET_POINTS),
            # by the judge that chose nothing: the filter's clarity is high for what it kept by construction
            clarity_met=bool(generated[DIFFUSION].judged[SER_JUDGE].all.mean > generated[VAE].judged[SER_JUDGE].all.mean),
        ),
        mlflow=ctx.mlflow,
    )


def _mean_per_emotion(per_set: list[dict[str, float]]) -> dict[str, float]:
    """Per emotion, the mean over the sets that have it."""
    return {e: float(np.mean([p[e] for p in per_set if e in p])) for e in EMOTIONS if any(e in p for p in per_set)}


def _judged_clarity(ctx: ExperimentContext, judge: str, per_set: list[dict[str, Any]]) -> JudgedClarity:
    if judge == SER_JUDGE:
        judge_ua = spread(j.metrics.unweighted_accuracy for j in ctx.judges)
    else:
        judge_ua = spread(p.metrics.unweighted_accuracy for p in ctx.probe_runs)
    sets = [p["judged"][judge] for p in per_set]
    return JudgedClarity(judge_ua=judge_ua, all=spread(s["all"] for s in sets), kept=spread(s["kept"] for s in sets),
                         all_per_emotion=_mean_per_emotion([s["all_per_emotion"] for s in sets]),
                         kept_per_emotion=_mean_per_emotion([s["kept_per_emotion"] for s in sets]))


def _generated_set(ctx: ExperimentContext, generator: str, real: dict[str, float]) -> GeneratedSet:
    per_set = [ctx.finished[StageKey.generated(split.fold, generator, seed)] for split, seed in ctx.pairs()]
    references = [ctx.finished[StageKey.fid_reference(split.fold, seed)]["fid"] for split, seed in ctx.pairs()]
    return GeneratedSet(
        n_per_emotion=ctx.per_emotion,
        n_clips=int(sum(p["n_clips"] for p in per_set) / len(per_set)),
        n_kept=int(sum(p["n_kept"] for p in per_set) / len(per_set)),
        clarity=spread(p["clarity"] for p in per_set),
        clarity_per_emotion={e: float(np.mean([p["clarity_per_emotion"][e] for p in per_set])) for e in EMOTIONS},
        fid=FidSpread(**spread(p["fid"] for p in per_set).model_dump(), **per_set[0]["fid_counts"]),
        real_fid_reference=float(np.mean(references)),
        inception_score=spread(p["inception_score"] for p in per_set),
        mean_confidence=spread(p["mean_confidence"] for p in per_set),
        generate_seconds=spread(p["generate_seconds"] for p in per_set),
        judged={judge: _judged_clarity(ctx, judge, per_set) for judge in JUDGES},
        realism=Realism(two_sample_accuracy=spread(p["two_sample"]["accuracy"] for p in per_set),
                        n_per_side=per_set[0]["two_sample"]["n_per_side"],
                        silent_frames=spread(p["silent_frames"] for p in per_set),
                        real_silent_frames=real["silent_frames"], real_two_sample_accuracy=real["two_sample"]),
    )


def _real_realism(ctx: ExperimentContext) -> dict[str, float]:
    """The realism measures' real references: near-silent frames of the held-out real clips
    (every clip once over the folds) and the two-sample accuracy of held-out against
    training real clips (mean over folds)."""
    import ray

    from emogen.data.features import decode_mels
    from emogen.evaluation.metrics import silent_frame_fraction, two_sample_accuracy

    held_out = [ray.get(split.test_mels) for split in ctx.splits]
    return {
        "silent_frames": float(np.average([silent_frame_fraction(mels) for mels in held_out],
                                          weights=[split.counts["test"] for split in ctx.splits])),
        "two_sample": float(np.mean([two_sample_accuracy(mels, decode_mels(split.rows("train")))["accuracy"]
                                     for mels, split in zip(held_out, ctx.splits)])),
    }


def _generator_run(ctx: ExperimentContext, split: Split, generator: str) -> GeneratorRun:
    from emogen.checkpoint import load_state

    run = ctx.generators[(split.fold, generator)]
    state = load_state(run["checkpoint"])
    return GeneratorRun(
        fold=split.fold, checkpoint=run["checkpoint"], epochs=run["epochs_completed"], seconds=run["seconds"],
        mlflow_run_id=run["mlflow_run_id"], metrics={k: v for k, v in run["metrics"].items() if k.startswith(("val_", "train_"))},
        history=state["history"],
        space=state["configs"]["diffusion"]["space"] if generator == DIFFUSION else None,
    )


def _log_parent(results: ExperimentResults, out: Path, tracking_uri: str | None) -> None:
    import mlflow

    from emogen.tracking import runs as tracking

    tracking.configure(tracking_uri)
    metrics = {}
    for condition, scores in results.summary.items():
        for metric, values in scores.items():
            metrics[f"{_condition_dir(condition)}.{metric}.mean"] = values.mean
            metrics[f"{_condition_dir(condition)}.{metric}.std"] = values.std
    for condition, scores in results.gains.items():
        metrics[f"{_condition_dir(condition)}.ua_gain.mean"] = scores[UA].mean
    for condition, scores in results.gains_over_matched.items():
        metrics[f"{_condition_dir(condition)}.ua_gain_over_matched.mean"] = scores[UA].mean
    if results.probe is not None:
        metrics.update({f"probe.{score}": results.probe.metrics.score(score) for score in SCORES})
    for gen, info in results.generated.items():
        metrics.update({f"{gen}.clarity": info.clarity.mean, f"{gen}.fid": info.fid.mean,
                        f"{gen}.inception_score": info.inception_score.mean})
        metrics.update({f"{gen}.clarity_by_{judge}": judged.all.mean for judge, judged in info.judged.items()})
        if info.realism is not None:
            metrics.update({f"{gen}.two_sample_accuracy": info.realism.two_sample_accuracy.mean,
                            f"{gen}.silent_frames": info.realism.silent_frames.mean})
    metrics.update({f"seconds.{k}": float(v) for k, v in results.seconds.items()})
    with mlflow.start_run(run_id=results.mlflow.parent_run_id):
        mlflow.log_metrics(metrics)
        for file in ("results.json", "report.md", "report.html"):
            if (out / file).exists():
                mlflow.log_artifact(str(out / file), artifact_path="report")
        if (out / "plots").is_dir():
            mlflow.log_artifacts(str(out / "plots"), artifact_path="report/plots")
        if (out / "samples").is_dir():
            mlflow.log_artifacts(str(out / "samples"), artifact_path="report/samples")
