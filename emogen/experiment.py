"""The augmentation experiment: does generated speech improve speech emotion recognition?

    emogen experiment --data runs/demo/data --preset demo --out runs/demo/experiment

One job, on one speaker-independent split (train / val / held-out test speakers):

1. generators: a VAE and a diffusion U-Net (latent diffusion on the VAE in the demo
   preset) trained with Ray Train on the training split only;
2. per seed: a baseline SER on real training clips; N generated clips per emotion from
   each generator (optionally kept only if the seed's baseline SER gives the requested
   emotion at least `min_confidence`); an SER on real+VAE and one on real+diffusion;
   and a control: an SER on the real clips alone trained for as many optimizer steps as
   the real+diffusion one (more clips per epoch at equal epochs means more steps, and an
   undertrained baseline gains from steps whatever the extra clips contain);
3. every SER evaluated on the same held-out speakers (WA, UA, macro F1, confusion, UA per
   speaker), and beside them the linear probe (`emogen.probe`, fit once on the real
   train+val clips), the reference an SER must beat; the generated sets scored by the
   baseline SER (clarity, FID on its embeddings against the held-out real clips,
   Inception Score on its probabilities);
4. paired statistics (`emogen.stats`) of each condition's UA against real and against
   the matched-steps control: over seeds (mean, 95 % t interval, paired t and Wilcoxon
   p-values) and over held-out speakers (bootstrap interval);
5. results.json (`emogen.results`: every number, seconds per stage), report.md /
   report.html with plots and Griffin-Lim WAVs, one MLflow parent run with a child run
   per training.

Seeds vary the SER initialization and data order and the generated samples; the split
and the two generators are shared across seeds (training a generator pair per seed
would multiply the cost by the seeds, and the question is whether a given generator's
data helps). The SER trainings, generation, scoring and Griffin-Lim run as Ray tasks: on a
cluster the SERs of all seeds train side by side.

`run_experiment` runs STAGES, named stage functions sharing one `ExperimentContext`.
Every unit of work records its result in <out>/stages.json under its `StageKey` when it
finishes, so re-running the same command resumes after the last finished one (trainings
also resume from their per-epoch checkpoints).
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
from emogen.diffusion import SAMPLERS
from emogen.logs import get_logger
from emogen.options import option
from emogen.presets import preset_sections
from emogen.results import (
    AUGMENTED_BY,
    CONDITIONS,
    CONTROL,
    CONTROL_MATCHES,
    DIFFUSION,
    GENERATED_FROM,
    GENERATORS,
    REAL,
    SCORES,
    UA,
    UA_GAIN_TARGET_POINTS,
    VAE,
    DataSummary,
    ExperimentResults,
    FidSpread,
    GeneratedSet,
    GeneratorRun,
    MLflowRun,
    SampleClip,
    Samples,
    SERMetrics,
    SERRun,
    ProbeRun,
    Targets,
    comparisons,
    paired_gains,
    spread,
    summarize,
)

log = get_logger("experiment")


@dataclass(frozen=True)
class ExperimentConfig:
    """What the experiment does; a preset's "experiment" section sets the defaults. Every
    field is an `emogen experiment` option of the same name (--per-emotion, ...)."""

    seeds: tuple[int, ...] = option((0, 1, 2), "SER / sampling seeds")
    # Generated clips per emotion: per_emotion if > 0, else ratio x real training clips / 6
    # (balanced over the emotions whatever the real class balance is).
    per_emotion: int = option(0, "generated clips per emotion (0: from --ratio)")
    ratio: float = option(1.0, "generated / real training clips, balanced over emotions")
    # None: the preset's diffusion sampler, steps and guidance
    sampler: str | None = option(None, "diffusion sampler (default: the preset's)", choices=tuple(SAMPLERS))
    steps: int | None = option(None, "sampling steps (default: the preset's)")
    guidance_scale: float | None = option(None, "classifier-free guidance (default: the preset's)")
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise ValueError("the experiment needs at least one seed")
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
    GENERATED = "generated"
    FID_REFERENCE = "fid_reference"
    PROBE = "probe"


@dataclass(frozen=True)
class StageKey:
    """One unit of work in <out>/stages.json. It renders as the strings earlier runs
    wrote ("parent_run", "vae", "ser/real/0", "generated/vae/0", "fid_reference/0"), so
    resuming an older run finds the work it finished."""

    kind: StageKind
    name: str | None = None  # the generator or the condition
    seed: int | None = None

    def __str__(self) -> str:
        parts = [] if self.kind is StageKind.GENERATOR else [self.kind.value]
        return "/".join([*parts, *(str(p) for p in (self.name, self.seed) if p is not None)])

    @classmethod
    def parent_run(cls) -> StageKey:
        return cls(StageKind.PARENT_RUN)

    @classmethod
    def generator(cls, generator: str) -> StageKey:
        return cls(StageKind.GENERATOR, generator)

    @classmethod
    def ser(cls, condition: str, seed: int) -> StageKey:
        return cls(StageKind.SER, condition, seed)

    @classmethod
    def generated(cls, generator: str, seed: int) -> StageKey:
        return cls(StageKind.GENERATED, generator, seed)

    @classmethod
    def fid_reference(cls, seed: int) -> StageKey:
        return cls(StageKind.FID_REFERENCE, seed=seed)

    @classmethod
    def probe(cls) -> StageKey:
        return cls(StageKind.PROBE)


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


@dataclass(frozen=True)
class Split:
    """The speaker-independent split every model trains on (TrainConfig.split_seed and
    fractions), and the held-out clips every SER is scored on, in Ray's object store."""

    assignment: dict[str, str]  # clip_id -> "train" | "val" | "test"
    table: Any  # the features table (pandas) with a "split" column
    counts: dict[str, int]
    test: Any  # the test rows
    test_mels: Any  # ray.ObjectRef
    test_labels: Any  # ray.ObjectRef
    test_speakers: Any  # numpy array of the test rows' speakers


@dataclass
class ExperimentContext:
    """What the stages share: the run's settings and paths, the split, Ray resources, the
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
    split: Split
    per_emotion: int  # generated clips per emotion, seed and generator
    diffusion_space: str  # "mel" or "latent"
    finished: FinishedStages
    seconds: dict[str, float]  # wall seconds per stage, the caller's (corpus, preprocess) first
    generators: dict[str, dict[str, Any]] = field(default_factory=dict)  # fit() summaries
    runs: dict[str, list[SERRun]] = field(default_factory=dict)
    probe: ProbeRun | None = None
    samples: Samples | None = None
    results: ExperimentResults | None = None

    def remote(self, func: Callable[..., Any], **options: Any) -> Any:
        """func as a Ray task with the experiment's per-task resources (and options such as max_retries)."""
        import ray

        return ray.remote(func).options(**self.cpu_task, **options)


def _start(features: str | Path, out_dir: str | Path, preset: str, config: ExperimentConfig | None, name: str | None,
           tracking_uri: str | None, command: str | None, seconds_before: dict[str, float] | None,
           overrides: dict[str, dict[str, Any]] | None) -> ExperimentContext:
    """The split, the held-out clips in the object store, and the MLflow parent run."""
    import ray

    from emogen import tracking
    from emogen.data import decode_mels, read_features
    from emogen.presets import model_configs
    from emogen.training import split_assignment, train_config

    config = config or experiment_config(preset)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = name or out.name
    overrides = overrides or {}
    finished = FinishedStages(out / "stages.json")
    experiment_id = tracking.configure(tracking_uri)
    _quiet_ray_data()

    assignment = split_assignment(features, train_config("ser", preset, model_overrides(overrides, "ser")["train"]))
    table = read_features(features)
    table = table.assign(split=table["clip_id"].map(assignment))
    counts = {s: int((table["split"] == s).sum()) for s in ("train", "val", "test")}
    test = table[table["split"] == "test"].reset_index(drop=True)
    if test.empty or counts["val"] == 0:
        raise ValueError(f"the speaker split of {features} left no validation or test speakers; the experiment needs both")
    split = Split(assignment, table, counts, test, ray.put(decode_mels(test)), ray.put(test["label"].to_numpy()),
                  test["speaker"].astype(str).to_numpy())
    per_emotion = config.per_emotion or max(1, round(config.ratio * counts["train"] / len(EMOTIONS)))
    diffusion_space = model_configs(preset, overrides)["diffusion"].space
    params = {"preset": preset, "features": str(features), "experiment": dataclasses.asdict(config), "per_emotion": per_emotion,
              "split_counts": counts, "diffusion_space": diffusion_space, "overrides": overrides}
    parent = finished.run(StageKey.parent_run(), lambda: _parent_run(name, params, tracking_uri))
    return ExperimentContext(
        features=features, out=out, preset=preset, config=config, name=name, overrides=overrides, command=command,
        tracking_uri=tracking_uri,
        mlflow=MLflowRun(tracking_uri=tracking.resolve_tracking_uri(tracking_uri), experiment_id=experiment_id, parent_run_id=parent),
        cpu_task={"num_cpus": config.cpus_per_task, "num_gpus": 1 if config.use_gpu else 0},
        split=split, per_emotion=per_emotion, diffusion_space=diffusion_space, finished=finished,
        seconds=dict(seconds_before or {}),
    )


def _parent_run(name: str, params: dict[str, Any], tracking_uri: str | None) -> str:
    from emogen import tracking

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


def _generate_task(generator_checkpoint: str, ser_checkpoint: str, per_emotion: int, seed: int, options: dict[str, Any],
                   min_confidence: float, out_dir: str, real_eval: dict[str, Any]) -> dict[str, Any]:
    """Generate per_emotion clips of every emotion, score them with the seed's baseline
    SER, keep the confident ones, and write them as a features dataset."""
    from emogen.evaluate import SERClassifier, write_generated_features
    from emogen.generate import EmotionGenerator
    from emogen.metrics import classification_report, emotional_clarity, frechet_distance, inception_score

    _set_threads()
    began = time.time()
    generator = EmotionGenerator.from_checkpoint(generator_checkpoint)
    mels, labels = [], []
    for k, emotion in enumerate(EMOTIONS):
        mels.append(generator.generate(emotion, per_emotion, seed=seed * 1000 + k, **options))
        labels += [k] * per_emotion
    mels, labels = np.concatenate(mels), np.asarray(labels)
    generate_s = time.time() - began

    probs, embeddings = SERClassifier.from_checkpoint(ser_checkpoint).predict(mels)
    confidence = probs[np.arange(len(labels)), labels]
    keep = confidence >= min_confidence
    kept_labels = labels[keep]
    if keep.sum() == 0:
        raise RuntimeError(f"min_confidence {min_confidence} kept none of {len(labels)} generated clips: lower it")
    write_generated_features(mels[keep], kept_labels, out_dir, source=Path(out_dir).name)
    report = classification_report(labels, probs.argmax(axis=1))
    return {
        "n_clips": int(len(labels)),
        "n_kept": int(keep.sum()),
        "kept_per_emotion": {e: int((kept_labels == k).sum()) for k, e in enumerate(EMOTIONS)},
        "clarity": emotional_clarity(labels, probs.argmax(axis=1)),
        "clarity_per_emotion": report["recall"],
        "fid": frechet_distance(real_eval["embeddings"], embeddings)["fid"],
        "fid_counts": {"n_real": int(len(real_eval["embeddings"])), "n_generated": int(len(embeddings))},
        "inception_score": inception_score(probs)["is"],
        "mean_confidence": float(confidence.mean()),
        "examples": {e: mels[labels == k][:4].astype(np.float16) for k, e in enumerate(EMOTIONS)},
        "generate_seconds": round(generate_s, 1),
    }


def _evaluate_task(ser_checkpoint: str, mels: np.ndarray, labels: np.ndarray, speakers: np.ndarray | None = None) -> dict[str, Any]:
    """Scores and embeddings of an SER on labelled clips; with speakers, also UA per speaker."""
    from emogen.evaluate import SERClassifier, held_out_report
    from emogen.metrics import classification_report

    _set_threads()
    probs, embeddings = SERClassifier.from_checkpoint(ser_checkpoint).predict(mels)
    preds = probs.argmax(axis=1)
    report = classification_report(labels, preds) if speakers is None else held_out_report(labels, preds, speakers)
    return {**report, "embeddings": embeddings}


def _fit_probe(ctx: ExperimentContext) -> dict[str, Any]:
    """The linear probe on the real train+val clips (what the SERs learn from and stop
    on), scored on the held-out speakers. One deterministic fit, cheap: in the driver."""
    import ray

    from emogen.data import decode_mels
    from emogen.evaluate import held_out_report
    from emogen.probe import LinearProbe

    rows = ctx.split.table[ctx.split.table["split"].isin(["train", "val"])]
    probe = LinearProbe().fit(decode_mels(rows), rows["label"].to_numpy())
    preds = probe.predict(ray.get(ctx.split.test_mels))
    return {"n_train": int(len(rows)),
            **held_out_report(ray.get(ctx.split.test_labels), np.asarray(preds), ctx.split.test_speakers)}


def _griffin_lim_task(mels: np.ndarray) -> np.ndarray:
    from emogen.audio import MelInverter
    from emogen.config import AudioConfig

    _set_threads()
    return MelInverter(AudioConfig())(np.array(mels, dtype=np.float32))  # a writable copy of the object-store array


# ---------------------------------------------------------------------- the stages


def _ser_loop(ctx: ExperimentContext, condition: str, seed: int, scale: float = 1.0) -> tuple[dict[str, Any], str]:
    """The training loop config and run folder of one SER, with its MLflow child run.
    scale: epochs (and early-stopping patience) x scale, for the matched-steps control."""
    from emogen.training import loop_config, start_child_run, train_config

    ser_overrides = model_overrides(ctx.overrides, "ser")
    ser_train = train_config("ser", ctx.preset, {**ser_overrides["train"],
                                                 **({"epochs": ctx.config.ser_epochs} if ctx.config.ser_epochs else {})})
    ser_overrides["train"].update(seed=seed, early_stopping_patience=round(ser_train.early_stopping_patience * scale))
    loop, run_params = loop_config("ser", ctx.preset, ser_overrides, max(1, round(ser_train.epochs * scale)))
    run_params.update(condition=condition, seed=seed)
    run_id = start_child_run(f"ser-{_condition_dir(condition)}-s{seed}-{ctx.name}", "ser", run_params, ctx.tracking_uri,
                             ctx.mlflow.parent_run_id)
    loop["mlflow"] = {"tracking_uri": ctx.mlflow.tracking_uri, "run_id": run_id}
    loop["label"] = f"ser {condition} seed {seed}"
    return loop, str(ctx.out / "ser" / f"{_condition_dir(condition)}-s{seed}")


def train_baselines(ctx: ExperimentContext) -> None:
    """Per seed, an SER on the real training clips (Ray tasks, side by side)."""
    import ray

    from emogen.training import split_datasets

    todo = [seed for seed in ctx.config.seeds if StageKey.ser(REAL, seed) not in ctx.finished]
    real = split_datasets(ctx.features, ctx.split.assignment) if todo else {}
    train_ser = ctx.remote(_train_ser_task, max_retries=2)
    pending = {}
    for seed in todo:
        loop, run_dir = _ser_loop(ctx, REAL, seed)
        pending[seed] = train_ser.remote(loop, real, run_dir, ctx.config.use_gpu)
    for seed, ref in pending.items():
        ctx.finished.run(StageKey.ser(REAL, seed), lambda ref=ref: ray.get(ref))


def _train_generator(ctx: ExperimentContext, generator: str) -> None:
    """One generator with Ray Train; latent diffusion needs the VAE trained first."""
    from emogen.training import FitConfig, fit

    cfg = ctx.config
    fit_config = FitConfig(
        preset=ctx.preset, overrides=model_overrides(ctx.overrides, generator),
        epochs={VAE: cfg.vae_epochs, DIFFUSION: cfg.diffusion_epochs}[generator], run_name=f"{generator}-{ctx.name}",
        num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, storage_path=ctx.out / "train", tracking_uri=ctx.tracking_uri,
        parent_run_id=ctx.mlflow.parent_run_id, cpus_per_worker=cfg.cpus_per_worker,
        vae_checkpoint=ctx.generators[VAE]["checkpoint"] if generator == DIFFUSION and ctx.diffusion_space == "latent" else None,
    )
    ctx.generators[generator] = ctx.finished.run(StageKey.generator(generator), lambda: fit(generator, ctx.features, fit_config))


def train_vae(ctx: ExperimentContext) -> None:
    _train_generator(ctx, VAE)


def train_diffusion(ctx: ExperimentContext) -> None:
    _train_generator(ctx, DIFFUSION)


def generate(ctx: ExperimentContext) -> None:
    """Per seed and generator, per_emotion clips of every emotion, scored (and filtered)
    by the seed's baseline SER (Ray tasks); per seed, the FID of real training clips
    against the held-out ones, the scale of "real-like"."""
    import ray

    from emogen.data import decode_mels
    from emogen.metrics import frechet_distance

    cfg, split, finished = ctx.config, ctx.split, ctx.finished
    evaluate_task = ctx.remote(_evaluate_task)
    generate_task = ctx.remote(_generate_task, max_retries=2)
    train_rows = split.table[split.table["split"] == "train"]
    train_mels, train_labels = ray.put(decode_mels(train_rows)), ray.put(train_rows["label"].to_numpy())
    sampling = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale}
    launched, references = {}, {}
    for seed in cfg.seeds:
        ser_checkpoint = finished[StageKey.ser(REAL, seed)]["checkpoint"]
        keys = [StageKey.generated(gen, seed) for gen in GENERATORS] + [StageKey.fid_reference(seed)]
        if all(key in finished for key in keys):
            continue
        held_out = evaluate_task.remote(ser_checkpoint, split.test_mels, split.test_labels)  # embeddings for FID
        if StageKey.fid_reference(seed) not in finished:
            references[seed] = (held_out, evaluate_task.remote(ser_checkpoint, train_mels, train_labels))
        for gen in GENERATORS:
            if StageKey.generated(gen, seed) not in finished:
                launched[(gen, seed)] = generate_task.remote(
                    ctx.generators[gen]["checkpoint"], ser_checkpoint, ctx.per_emotion, seed,
                    sampling if gen == DIFFUSION else {}, cfg.min_confidence, str(_generated_dir(ctx, gen, seed)), held_out)
    for seed, (held_out, training) in references.items():
        finished.run(StageKey.fid_reference(seed), lambda a=held_out, b=training: frechet_distance(
            ray.get(a)["embeddings"], ray.get(b)["embeddings"]))
    for (gen, seed), ref in launched.items():
        result = ray.get(ref)
        gen_dir = _generated_dir(ctx, gen, seed)
        np.savez_compressed(gen_dir / "examples.npz", **result.pop("examples"))
        finished.run(StageKey.generated(gen, seed), lambda result=result, gen_dir=gen_dir: {**result, "dir": str(gen_dir)})
        log.info("%s seed %d: clarity %.3f, FID %.1f, IS %.2f, kept %d/%d", gen, seed, result["clarity"], result["fid"],
                 result["inception_score"], result["n_kept"], result["n_clips"])


def _generated_dir(ctx: ExperimentContext, generator: str, seed: int) -> Path:
    return ctx.out / "generated" / f"{generator}-s{seed}"


def _n_generated(ctx: ExperimentContext, condition: str, seed: int) -> int:
    """Generated clips (kept) in the training set of a condition's SER."""
    if condition not in GENERATED_FROM:
        return 0
    return ctx.finished[StageKey.generated(GENERATED_FROM[condition], seed)]["n_kept"]


def train_augmented(ctx: ExperimentContext) -> None:
    """Per seed, an SER on real+VAE and one on real+diffusion clips, and the control: real
    clips alone for as many optimizer steps as CONTROL_MATCHES's (Ray tasks)."""
    import ray

    from emogen.training import split_datasets

    train_ser = ctx.remote(_train_ser_task, max_retries=2)
    n_train = ctx.split.counts["train"]
    pending, real = {}, None
    for seed in ctx.config.seeds:
        for condition in CONDITIONS[1:]:
            key = StageKey.ser(condition, seed)
            if key in ctx.finished:
                continue
            if condition in GENERATED_FROM:
                generated = ctx.finished[StageKey.generated(GENERATED_FROM[condition], seed)]["dir"]
                data, scale = split_datasets(ctx.features, ctx.split.assignment, extra_train=[generated]), 1.0
            else:
                real = real or split_datasets(ctx.features, ctx.split.assignment)
                data, scale = real, (n_train + _n_generated(ctx, CONTROL_MATCHES, seed)) / n_train
            loop, run_dir = _ser_loop(ctx, condition, seed, scale)
            pending[key] = train_ser.remote(loop, data, run_dir, ctx.config.use_gpu)
    for key, ref in pending.items():
        ctx.finished.run(key, lambda ref=ref: ray.get(ref))


def evaluate(ctx: ExperimentContext) -> None:
    """Every SER on the held-out speakers (Ray tasks), and the linear probe (in the driver
    meanwhile)."""
    import ray

    evaluate_task = ctx.remote(_evaluate_task)
    trained = {(c, s): ctx.finished[StageKey.ser(c, s)] for c in CONDITIONS for s in ctx.config.seeds}
    speakers = ray.put(ctx.split.test_speakers)
    refs = {key: evaluate_task.remote(summary["checkpoint"], ctx.split.test_mels, ctx.split.test_labels, speakers)
            for key, summary in trained.items()}
    probe = ctx.finished.run(StageKey.probe(), lambda: _fit_probe(ctx))
    probe = dict(probe)
    ctx.probe = ProbeRun(n_train=probe.pop("n_train"), per_speaker=probe.pop("per_speaker"),
                         metrics=SERMetrics.model_validate(probe))
    ctx.runs = {c: [] for c in CONDITIONS}
    for (condition, seed), ref in refs.items():
        metrics = ray.get(ref)
        metrics.pop("embeddings")
        per_speaker = metrics.pop("per_speaker")
        summary, n_generated = trained[(condition, seed)], _n_generated(ctx, condition, seed)
        ctx.runs[condition].append(SERRun(
            seed=seed, checkpoint=summary["checkpoint"], n_train=ctx.split.counts["train"] + n_generated,
            n_generated=n_generated, train_steps=int(summary["history"][-1]["steps"]), train_seconds=summary.get("seconds"),
            epochs=summary["epochs_completed"], stopped_early=summary["stopped_early"],
            metrics=SERMetrics.model_validate(metrics), per_speaker=per_speaker, history=summary["history"],
        ))


def listening_samples(ctx: ExperimentContext) -> None:
    """Mels (one per emotion and source) for the report's grid, Griffin-Lim WAVs to listen to."""
    import ray
    import soundfile as sf

    from emogen.config import AudioConfig
    from emogen.data import decode_mels

    seed = ctx.config.seeds[0]
    n = ctx.config.wavs_per_emotion
    sources: dict[str, dict[str, np.ndarray]] = {REAL: {}}
    for k, emotion in enumerate(EMOTIONS):
        rows = ctx.split.test[ctx.split.test["label"] == k].head(n)
        if len(rows):
            sources[REAL][emotion] = decode_mels(rows)
    for gen in GENERATORS:
        examples = np.load(_generated_dir(ctx, gen, seed) / "examples.npz")
        sources[gen] = {e: examples[e][:n].astype(np.float32) for e in EMOTIONS if len(examples[e])}
    sample_dir = ctx.out / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    grid = {f"{source}/{emotion}": mels[0] for source, per in sources.items() for emotion, mels in per.items()}
    np.savez_compressed(sample_dir / "mels.npz", **grid)
    inverse = ctx.remote(_griffin_lim_task)
    refs = {source: inverse.remote(np.concatenate(list(per.values()))) for source, per in sources.items() if per}
    wavs = []
    rate = AudioConfig().sample_rate
    for source, ref in refs.items():
        waves = iter(ray.get(ref))
        for emotion, mels in sources[source].items():
            for i in range(len(mels)):
                path = sample_dir / f"{source}_{emotion}_{i}.wav"
                sf.write(str(path), next(waves), rate, subtype="PCM_16")
                wavs.append(SampleClip(source=source, emotion=emotion, path=str(path.relative_to(ctx.out))))
    ctx.samples = Samples(mels=str((sample_dir / "mels.npz").relative_to(ctx.out)), wavs=wavs)


def write_reports(ctx: ExperimentContext) -> None:
    """results.json, report.md and report.html; the report shows the total up to here."""
    from emogen.report import write_report

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


STAGES: tuple[Stage, ...] = (
    Stage("train_ser_real", lambda ctx: f"training {len(ctx.config.seeds)} baseline SERs on real clips (Ray tasks)",
          train_baselines),
    Stage("train_vae", lambda ctx: "training the VAE (Ray Train)", train_vae),
    Stage("train_diffusion", lambda ctx: f"training the {ctx.diffusion_space}-space diffusion U-Net (Ray Train)",
          train_diffusion),
    Stage("generate", lambda ctx: f"generating {ctx.per_emotion} clips per emotion per seed with each generator (Ray tasks)",
          generate),
    Stage("train_ser_augmented", lambda ctx: f"training {len(ctx.config.seeds) * (len(CONDITIONS) - 1)} SERs: real+VAE, "
          "real+diffusion, and real alone for real+diffusion's optimizer steps (Ray tasks)", train_augmented),
    Stage("evaluate", lambda ctx: f"evaluating {len(CONDITIONS) * len(ctx.config.seeds)} SERs (Ray tasks) and the "
          f"linear probe on {ctx.split.counts['test']} held-out clips", evaluate),
    Stage("samples", lambda ctx: "Griffin-Lim audio for the report", listening_samples),
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
    return results


# ------------------------------------------------------------------- results


def _results(ctx: ExperimentContext) -> ExperimentResults:
    runs, cfg, split = ctx.runs, ctx.config, ctx.split
    gains = {c: paired_gains(runs[c], runs[REAL]) for c in CONDITIONS if c != REAL}
    generated = {gen: _generated_set(ctx, gen) for gen in GENERATORS}
    class_counts = {
        s: {e: int(((split.table["split"] == s) & (split.table["label"] == k)).sum()) for k, e in enumerate(EMOTIONS)}
        for s in ("train", "val", "test")
    }
    return ExperimentResults(
        name=ctx.name,
        preset=ctx.preset,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=ctx.command or f"emogen experiment --data {ctx.features} --preset {ctx.preset}",
        config=dataclasses.asdict(cfg),
        data=DataSummary(features=str(ctx.features), split_counts=split.counts, class_counts=class_counts,
                         test_speakers=sorted(split.test["speaker"].unique().tolist())),
        seeds=list(cfg.seeds),
        conditions=list(CONDITIONS),
        runs=runs,
        summary={c: summarize(runs[c]) for c in CONDITIONS},
        gains=gains,
        # what the generated clips add beyond the optimizer steps they bring
        gains_over_matched={CONTROL_MATCHES: paired_gains(runs[CONTROL_MATCHES], runs[CONTROL])},
        comparisons=comparisons(runs),
        probe=ctx.probe,
        generated=generated,
        generators={gen: _generator_run(run, gen) for gen, run in ctx.generators.items()},
        samples=ctx.samples,
        targets=Targets(
            ua_gain_points=UA_GAIN_TARGET_POINTS,
            diffusion_ua_gain_met=bool(gains[AUGMENTED_BY[DIFFUSION]][UA].mean * 100 >= UA_GAIN_TARGET_POINTS),
            clarity_met=bool(generated[DIFFUSION].clarity.mean > generated[VAE].clarity.mean),
        ),
        mlflow=ctx.mlflow,
    )


def _generated_set(ctx: ExperimentContext, generator: str) -> GeneratedSet:
    seeds = ctx.config.seeds
    per_seed = [ctx.finished[StageKey.generated(generator, s)] for s in seeds]
    return GeneratedSet(
        n_per_emotion=ctx.per_emotion,
        n_clips=int(sum(p["n_clips"] for p in per_seed) / len(per_seed)),
        n_kept=int(sum(p["n_kept"] for p in per_seed) / len(per_seed)),
        clarity=spread(p["clarity"] for p in per_seed),
        clarity_per_emotion={e: float(np.mean([p["clarity_per_emotion"][e] for p in per_seed])) for e in EMOTIONS},
        fid=FidSpread(**spread(p["fid"] for p in per_seed).model_dump(), **per_seed[0]["fid_counts"]),
        real_fid_reference=float(np.mean([ctx.finished[StageKey.fid_reference(s)]["fid"] for s in seeds])),
        inception_score=spread(p["inception_score"] for p in per_seed),
        mean_confidence=spread(p["mean_confidence"] for p in per_seed),
        generate_seconds=spread(p["generate_seconds"] for p in per_seed),
    )


def _generator_run(run: dict[str, Any], generator: str) -> GeneratorRun:
    from emogen.checkpoint import load_state

    state = load_state(run["checkpoint"])
    return GeneratorRun(
        checkpoint=run["checkpoint"], epochs=run["epochs_completed"], seconds=run["seconds"], mlflow_run_id=run["mlflow_run_id"],
        metrics={k: v for k, v in run["metrics"].items() if k.startswith(("val_", "train_"))},
        history=state["history"],
        space=state["configs"]["diffusion"]["space"] if generator == DIFFUSION else None,
    )


def _log_parent(results: ExperimentResults, out: Path, tracking_uri: str | None) -> None:
    import mlflow

    from emogen import tracking

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
