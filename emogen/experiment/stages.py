"""The experiment's stages, in the order `STAGES` runs them: each reads the context's parts it
needs, launches its work as Ray tasks (or Ray Train runs), records every finished unit in the
journal, and leaves what later stages use in `ctx.outputs`.

emogen.training and the task bodies are looked up at call time (`training.fit`,
`tasks.train_ser_task`), so a test can replace them to prove a resumed run trains nothing."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import soundfile as sf

from emogen import storage, training
from emogen.config import EMOTIONS, AudioConfig
from emogen.data.features import decode_mels
from emogen.evaluation.metrics import frechet_distance, held_out_report
from emogen.evaluation.probe import LinearProbe
from emogen.experiment import tasks
from emogen.experiment.assemble import assemble_results
from emogen.experiment.config import model_overrides
from emogen.experiment.context import ExperimentContext, Fold, condition_slug
from emogen.experiment.journal import StageKey, write_json
from emogen.experiment.report import write_report
from emogen.experiment.results import (
    CONDITIONS,
    CONTROL_MATCHES,
    DIFFUSION,
    GENERATED_FROM,
    GENERATORS,
    PROBE_JUDGE,
    REAL,
    SER_JUDGE,
    VAE,
    JudgeRun,
    ProbeRun,
    SampleClip,
    Samples,
    SERMetrics,
    SERRun,
)
from emogen.logs import get_logger

log = get_logger("experiment")
EXAMPLES_FILE = "examples.npz"  # beside each generated set: a few mels per emotion for the report


# ------------------------------------------------------------------ SER trainings


def ser_loop(ctx: ExperimentContext, fold: Fold, condition: str, seed: int,
             scale: float = 1.0) -> tuple[training.LoopConfig, str]:
    """The training loop config and run folder of one SER of a fold, with its MLflow child
    run: the one place the experiment builds an emogen.training loop config. scale: epochs
    (and early-stopping patience) x scale, for the matched-steps control."""
    spec = ctx.spec
    ser_overrides = model_overrides(spec.overrides, "ser")
    epochs = {"epochs": ctx.config.ser_epochs} if ctx.config.ser_epochs else {}
    ser_train = training.train_config("ser", spec.preset, {**ser_overrides["train"], **epochs})
    ser_overrides["train"].update(seed=seed, early_stopping_patience=round(ser_train.early_stopping_patience * scale))
    loop, run_params = training.loop_config("ser", spec.preset, ser_overrides, max(1, round(ser_train.epochs * scale)))
    run_params.update(condition=condition, fold=fold.index, seed=seed)
    run_name = f"ser-{condition_slug(condition)}-f{fold.index}-s{seed}-{spec.name}"
    run_id = training.start_child_run(run_name, "ser", run_params, ctx.tracking.uri, ctx.tracking.parent_run_id)
    loop.mlflow = training.MlflowTarget(tracking_uri=ctx.tracking.run.tracking_uri, run_id=run_id)
    loop.label = f"ser {condition} fold {fold.index} seed {seed}"
    return loop, str(ctx.layout.ser_dir(fold, condition, seed))


class _SERTrainings:
    """SER trainings launched side by side as Ray tasks, each recorded in the journal when collected."""

    def __init__(self, ctx: ExperimentContext):
        self.ctx = ctx
        self.task = ctx.resources.remote(tasks.train_ser_task, max_retries=2)
        self.pending: dict[StageKey, Any] = {}

    def start(self, key: StageKey, fold: Fold, condition: str, seed: int, datasets: dict[str, Any],
              scale: float = 1.0) -> None:
        loop, run_dir = ser_loop(self.ctx, fold, condition, seed, scale)
        self.pending[key] = self.task.remote(loop, datasets, run_dir, self.ctx.config.use_gpu)

    def collect(self) -> None:
        for key, ref in self.pending.items():
            self.ctx.finished.run(key, lambda ref=ref: ray.get(ref))


def _n_generated(ctx: ExperimentContext, fold: Fold, condition: str, seed: int) -> int:
    """Generated clips (kept) in the training set of a condition's SER."""
    if condition not in GENERATED_FROM:
        return 0
    return ctx.finished[StageKey.generated(fold.index, GENERATED_FROM[condition], seed)]["n_kept"]


# ------------------------------------------------------------------ the linear probe


def probe(ctx: ExperimentContext, fold: Fold) -> LinearProbe:
    """The fold's linear probe on its real train+val clips (fit in the driver: one
    deterministic, cheap fit; fit again on resume rather than pickled)."""
    if fold.index not in ctx.outputs.probes:
        rows = fold.rows("train", "val")
        ctx.outputs.probes[fold.index] = LinearProbe().fit(decode_mels(rows), rows["label"].to_numpy())
    return ctx.outputs.probes[fold.index]


def _score_probe(ctx: ExperimentContext, fold: Fold) -> dict[str, Any]:
    preds = probe(ctx, fold).predict(ray.get(fold.held_out.mels))
    return {"n_train": int(len(fold.rows("train", "val"))),
            **held_out_report(ray.get(fold.held_out.labels), np.asarray(preds), fold.held_out.speakers)}


# ------------------------------------------------------------------ the stages


def train_baselines(ctx: ExperimentContext) -> None:
    """Per fold and seed, an SER on the real training clips, and per fold the judge SER on
    training + validation clips (Ray tasks, side by side); meanwhile, in the driver, each
    fold's linear probe."""
    trainings = _SERTrainings(ctx)
    for fold in ctx.folds:
        real = None
        for seed in ctx.config.seeds:
            key = StageKey.ser(fold.index, REAL, seed)
            if key not in ctx.finished:
                real = real or training.split_datasets(ctx.spec.features, fold.assignment)
                trainings.start(key, fold, REAL, seed, real)
        key = StageKey.judge(fold.index)
        if key not in ctx.finished:
            trainings.start(key, fold, "judge", ctx.config.judge_seed,
                            training.split_datasets(ctx.spec.features, fold.judge_assignment()))
    for fold in ctx.folds:
        ctx.finished.run(StageKey.probe(fold.index), lambda fold=fold: _score_probe(ctx, fold))
    trainings.collect()


def _train_generator(ctx: ExperimentContext, generator: str) -> None:
    """One generator per fold with Ray Train on the fold's training speakers; latent
    diffusion needs the fold's VAE trained first."""
    cfg, spec, generators = ctx.config, ctx.spec, ctx.outputs.generators
    for fold in ctx.folds:
        latent = generator == DIFFUSION and spec.diffusion_space == "latent"
        fit_config = training.FitConfig(
            preset=spec.preset, overrides=model_overrides(spec.overrides, generator),
            epochs={VAE: cfg.vae_epochs, DIFFUSION: cfg.diffusion_epochs}[generator],
            run_name=f"{generator}-f{fold.index}-{spec.name}", num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
            storage_path=ctx.layout.train_storage, tracking_uri=ctx.tracking.uri,
            parent_run_id=ctx.tracking.parent_run_id, cpus_per_worker=cfg.cpus_per_worker,
            assignment=fold.assignment, label=f"{generator} fold {fold.index}",
            vae_checkpoint=generators[(fold.index, VAE)]["checkpoint"] if latent else None,
        )
        generators[(fold.index, generator)] = ctx.finished.run(
            StageKey.generator(fold.index, generator),
            lambda fit_config=fit_config: training.fit(generator, spec.features, fit_config))


def train_vae(ctx: ExperimentContext) -> None:
    _train_generator(ctx, VAE)


def train_diffusion(ctx: ExperimentContext) -> None:
    _train_generator(ctx, DIFFUSION)


def generate(ctx: ExperimentContext) -> None:
    """Per fold, seed and generator, per_emotion clips of every emotion, filtered by the
    fold and seed's baseline SER and scored by the judges (Ray tasks); per fold and seed,
    the FID of real training clips against the held-out ones, the scale of "real-like"."""
    references, launched = _launch_generation(ctx)
    for (fold_index, seed), (held_out, train) in references.items():
        ctx.finished.run(StageKey.fid_reference(fold_index, seed), lambda a=held_out, b=train: frechet_distance(
            ray.get(a)["embeddings"], ray.get(b)["embeddings"]))
    for (fold, gen, seed), ref in launched.items():
        result = ray.get(ref)
        gen_dir = ctx.layout.generated_dir(fold, gen, seed)
        write_examples(storage.join(gen_dir, EXAMPLES_FILE), result.pop("examples"))
        ctx.finished.run(StageKey.generated(fold.index, gen, seed), lambda result=result, gen_dir=gen_dir: {
            **result, "dir": gen_dir})
        judged = result["judged"]
        log.info("%s fold %d seed %d: filter clarity %.3f, judge clarity %.3f (probe %.3f), FID %.1f, IS %.2f, kept %d/%d",
                 gen, fold.index, seed, result["clarity"], judged[SER_JUDGE]["all"], judged[PROBE_JUDGE]["all"],
                 result["fid"], result["inception_score"], result["n_kept"], result["n_clips"])


def _launch_generation(ctx: ExperimentContext) -> tuple[dict[tuple[int, int], tuple[Any, Any]], dict[tuple[Fold, str, int], Any]]:
    """The unfinished generation tasks and FID references: {(fold, seed): (held-out
    embeddings, training embeddings)} and {(fold, generator, seed): generated set}, as refs."""
    cfg, finished = ctx.config, ctx.finished
    evaluate_task = ctx.resources.remote(tasks.evaluate_task)
    generate_task = ctx.resources.remote(tasks.generate_task, max_retries=2)
    launched, references, train_refs, probes = {}, {}, {}, {}
    for fold, seed in ctx.pairs():
        keys = [StageKey.generated(fold.index, gen, seed) for gen in GENERATORS] + [StageKey.fid_reference(fold.index, seed)]
        if all(key in finished for key in keys):
            continue
        filter_checkpoint = finished[StageKey.ser(fold.index, REAL, seed)]["checkpoint"]
        # the held-out clips' embeddings by the filter: the real side of every FID
        held_out = evaluate_task.remote(filter_checkpoint, fold.held_out.mels, fold.held_out.labels)
        if StageKey.fid_reference(fold.index, seed) not in finished:
            if fold.index not in train_refs:
                rows = fold.rows("train")
                train_refs[fold.index] = (ray.put(decode_mels(rows)), ray.put(rows["label"].to_numpy()))
            references[(fold.index, seed)] = (held_out, evaluate_task.remote(filter_checkpoint, *train_refs[fold.index]))
        if fold.index not in probes:
            probes[fold.index] = ray.put(probe(ctx, fold))
        for gen in GENERATORS:
            if StageKey.generated(fold.index, gen, seed) not in finished:
                launched[(fold, gen, seed)] = generate_task.remote(
                    ctx.outputs.generators[(fold.index, gen)]["checkpoint"], filter_checkpoint,
                    finished[StageKey.judge(fold.index)]["checkpoint"], probes[fold.index], ctx.spec.per_emotion, seed,
                    cfg.sampling() if gen == DIFFUSION else {"vae_latent": cfg.vae_latent}, cfg.min_confidence,
                    ctx.layout.generated_dir(fold, gen, seed), held_out, fold.held_out.mels)
    return references, launched


def train_augmented(ctx: ExperimentContext) -> None:
    """Per fold and seed, an SER on real+VAE and one on real+diffusion clips, and the
    control: real clips alone for as many optimizer steps as CONTROL_MATCHES's (Ray tasks)."""
    trainings, real = _SERTrainings(ctx), {}
    for fold, seed in ctx.pairs():
        n_train = fold.counts["train"]
        for condition in CONDITIONS[1:]:
            key = StageKey.ser(fold.index, condition, seed)
            if key in ctx.finished:
                continue
            if condition in GENERATED_FROM:
                generated = ctx.finished[StageKey.generated(fold.index, GENERATED_FROM[condition], seed)]["dir"]
                data = training.split_datasets(ctx.spec.features, fold.assignment, extra_train=[generated])
                scale = 1.0
            else:
                if fold.index not in real:
                    real[fold.index] = training.split_datasets(ctx.spec.features, fold.assignment)
                data, scale = real[fold.index], (n_train + _n_generated(ctx, fold, CONTROL_MATCHES, seed)) / n_train
            trainings.start(key, fold, condition, seed, data, scale)
    trainings.collect()


def evaluate(ctx: ExperimentContext) -> None:
    """Every SER and judge on its fold's held-out speakers (Ray tasks); the probes' scores."""
    evaluate_task = ctx.resources.remote(tasks.evaluate_task)
    speakers = {fold.index: ray.put(fold.held_out.speakers) for fold in ctx.folds}
    refs = {(fold, condition, seed): evaluate_task.remote(
                ctx.finished[StageKey.ser(fold.index, condition, seed)]["checkpoint"], fold.held_out.mels,
                fold.held_out.labels, speakers[fold.index])
            for fold, seed in ctx.pairs() for condition in CONDITIONS}
    judge_refs = {fold.index: evaluate_task.remote(ctx.finished[StageKey.judge(fold.index)]["checkpoint"],
                                                   fold.held_out.mels, fold.held_out.labels) for fold in ctx.folds}
    ctx.outputs.probe_runs = [_probe_run(ctx.finished[StageKey.probe(fold.index)], fold) for fold in ctx.folds]
    ctx.outputs.runs = {c: [] for c in CONDITIONS}
    for (fold, condition, seed), ref in refs.items():
        ctx.outputs.runs[condition].append(_ser_run(ctx, fold, condition, seed, ray.get(ref)))
    ctx.outputs.judges = []
    for fold_index, ref in judge_refs.items():
        metrics, summary = ray.get(ref), ctx.finished[StageKey.judge(fold_index)]
        metrics.pop("embeddings")
        ctx.outputs.judges.append(JudgeRun(fold=fold_index, seed=ctx.config.judge_seed, checkpoint=summary["checkpoint"],
                                           epochs=summary["epochs_completed"], metrics=SERMetrics.model_validate(metrics)))


def _probe_run(scores: dict[str, Any], fold: Fold) -> ProbeRun:
    scores = dict(scores)
    return ProbeRun(fold=fold.index, n_train=scores.pop("n_train"), per_speaker=scores.pop("per_speaker"),
                    metrics=SERMetrics.model_validate(scores))


def _ser_run(ctx: ExperimentContext, fold: Fold, condition: str, seed: int, metrics: dict[str, Any]) -> SERRun:
    """One SER's training summary and its scores on the fold's held-out speakers."""
    metrics.pop("embeddings")
    per_speaker = metrics.pop("per_speaker")
    summary, n_generated = ctx.finished[StageKey.ser(fold.index, condition, seed)], _n_generated(ctx, fold, condition, seed)
    return SERRun(
        fold=fold.index, seed=seed, checkpoint=summary["checkpoint"], n_train=fold.counts["train"] + n_generated,
        n_generated=n_generated, train_steps=int(summary["history"][-1]["steps"]), train_seconds=summary.get("seconds"),
        epochs=summary["epochs_completed"], stopped_early=summary["stopped_early"],
        metrics=SERMetrics.model_validate(metrics), per_speaker=per_speaker, history=summary["history"],
    )


def listening_samples(ctx: ExperimentContext) -> None:
    """Mels (one per emotion and source) for the report's grid, Griffin-Lim WAVs to listen
    to: held-out real clips of the first fold and the first seed's generated ones; per
    emotion, the first fold's diffusion U-Net attention while generating a clip (PNG)."""
    fold, seed = ctx.pairs()[0]
    sources = _listening_mels(ctx, fold, seed)
    sample_dir = ctx.layout.samples
    sample_dir.mkdir(parents=True, exist_ok=True)
    grid = {f"{source}/{emotion}": mels[0] for source, per in sources.items() for emotion, mels in per.items()}
    np.savez_compressed(sample_dir / "mels.npz", **grid)
    inverse = ctx.resources.remote(tasks.griffin_lim_task)
    waves = {source: inverse.remote(np.concatenate(list(per.values()))) for source, per in sources.items() if per}
    attention = ctx.resources.remote(tasks.attention_task)
    diffusion = ctx.outputs.generators[(fold.index, DIFFUSION)]["checkpoint"]
    pngs = {emotion: attention.remote(diffusion, emotion, seed, ctx.config.sampling()) for emotion in EMOTIONS}
    wavs = _write_wavs(ctx, sources, waves, sample_dir)
    attention_paths = {}
    for emotion, ref in pngs.items():  # the PNG comes back as bytes: the task may run on another node
        path = sample_dir / f"attention_{emotion}.png"
        storage.write_bytes(path, ray.get(ref))
        attention_paths[emotion] = ctx.layout.relative(path)
    ctx.outputs.samples = Samples(mels=ctx.layout.relative(sample_dir / "mels.npz"), wavs=wavs,
                                  attention=attention_paths)


def _listening_mels(ctx: ExperimentContext, fold: Fold, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """{source: {emotion: up to wavs_per_emotion mels}}: the fold's held-out real clips, and each generator's examples."""
    n = ctx.config.wavs_per_emotion
    test = fold.held_out.rows
    sources: dict[str, dict[str, np.ndarray]] = {REAL: {}}
    for k, emotion in enumerate(EMOTIONS):
        rows = test[test["label"] == k].head(n)
        if len(rows):
            sources[REAL][emotion] = decode_mels(rows)
    for gen in GENERATORS:
        examples = read_examples(storage.join(ctx.layout.generated_dir(fold, gen, seed), EXAMPLES_FILE))
        sources[gen] = {e: examples[e][:n].astype(np.float32) for e in EMOTIONS if len(examples[e])}
    return sources


def write_examples(location: str, examples: dict[str, np.ndarray]) -> None:
    """A generated set's example mels per emotion (for the report), as one .npz beside the set."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **examples)
    storage.write_bytes(location, buffer.getvalue())


def read_examples(location: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(location))) as examples:
        return {name: examples[name] for name in examples.files}


def _write_wavs(ctx: ExperimentContext, sources: dict[str, dict[str, np.ndarray]], waves: dict[str, Any],
                sample_dir: Path) -> list[SampleClip]:
    """The Griffin-Lim waveforms of each source as 16-bit WAVs, in the order their mels were sent."""
    wavs, rate = [], AudioConfig().sample_rate
    for source, ref in waves.items():
        source_waves = iter(ray.get(ref))
        for emotion, mels in sources[source].items():
            for i in range(len(mels)):
                path = sample_dir / f"{source}_{emotion}_{i}.wav"
                sf.write(str(path), next(source_waves), rate, subtype="PCM_16")
                wavs.append(SampleClip(source=source, emotion=emotion, path=ctx.layout.relative(path)))
    return wavs


def write_reports(ctx: ExperimentContext) -> None:
    """results.json, report.md and report.html; the report shows the total up to here."""
    results = assemble_results(ctx)
    results.seconds = {**ctx.seconds, "total": round(sum(ctx.seconds.values()), 1)}
    write_json(ctx.layout.out / "results.json", results.to_json())
    paths = write_report(results, ctx.layout.out)
    results.report = {kind: str(paths[kind]) for kind in ("md", "html")}
    ctx.outputs.results = results


# ------------------------------------------------------------------ the order


@dataclass(frozen=True)
class Stage:
    name: str  # its key in results.seconds
    describe: Callable[[ExperimentContext], str]  # its progress line
    run: Callable[[ExperimentContext], None]


def _folds_text(ctx: ExperimentContext) -> str:
    return f"{len(ctx.folds)} folds x {len(ctx.config.seeds)} seeds"


STAGES: tuple[Stage, ...] = (
    Stage("train_ser_real", lambda ctx: f"training {len(ctx.pairs())} baseline SERs on real clips ({_folds_text(ctx)}) "
          f"and {len(ctx.folds)} judge SERs (Ray tasks), fitting {len(ctx.folds)} linear probes", train_baselines),
    Stage("train_vae", lambda ctx: f"training {len(ctx.folds)} VAEs, one per fold (Ray Train)", train_vae),
    Stage("train_diffusion", lambda ctx: f"training {len(ctx.folds)} {ctx.spec.diffusion_space}-space diffusion U-Nets, "
          "one per fold (Ray Train)", train_diffusion),
    Stage("generate", lambda ctx: f"generating {ctx.spec.per_emotion} clips per emotion per fold and seed with each "
          "generator (Ray tasks)", generate),
    Stage("train_ser_augmented", lambda ctx: f"training {len(ctx.pairs()) * (len(CONDITIONS) - 1)} SERs: real+VAE, "
          f"real+diffusion, and real alone for real+diffusion's optimizer steps ({_folds_text(ctx)}, Ray tasks)",
          train_augmented),
    Stage("evaluate", lambda ctx: f"evaluating {len(CONDITIONS) * len(ctx.pairs())} SERs and {len(ctx.folds)} judges "
          "on their folds' held-out speakers (Ray tasks)", evaluate),
    Stage("samples", lambda ctx: "Griffin-Lim audio and diffusion attention maps for the report", listening_samples),
    Stage("report", lambda ctx: "writing results.json, report.md, report.html", write_reports),
)
