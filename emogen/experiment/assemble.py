"""The finished work as an `ExperimentResults`: the runs, their paired statistics, the
generated sets' scores pooled over folds and seeds, and the generators' training runs."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import ray

from emogen.checkpoint import load_state
from emogen.config import EMOTIONS
from emogen.data.features import decode_mels
from emogen.evaluation.metrics import silent_frame_fraction, two_sample_accuracy
from emogen.experiment.context import ExperimentContext, Fold
from emogen.experiment.journal import StageKey
from emogen.experiment.results import (
    CONDITIONS,
    CONTROL,
    CONTROL_MATCHES,
    DIFFUSION,
    GENERATORS,
    JUDGES,
    REAL,
    SER_JUDGE,
    DataSummary,
    ExperimentResults,
    FidSpread,
    GeneratedSet,
    GeneratorRun,
    JudgedClarity,
    Realism,
    comparisons,
    paired_gains,
    pool_probes,
    spread,
    summarize,
)


def assemble_results(ctx: ExperimentContext) -> ExperimentResults:
    """Everything results.json holds but the seconds and the report's paths."""
    spec, outputs = ctx.spec, ctx.outputs
    runs = outputs.runs
    gains = {c: paired_gains(runs[c], runs[REAL]) for c in CONDITIONS if c != REAL}
    real = _real_realism(ctx)  # one pass over the real clips for both generators
    generated = {gen: _generated_set(ctx, gen, real) for gen in GENERATORS}
    return ExperimentResults(
        name=spec.name,
        preset=spec.preset,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=spec.command or f"emogen experiment --data {spec.features} --preset {spec.preset}",
        config=dataclasses.asdict(spec.config),
        data=_data_summary(ctx),
        seeds=list(spec.config.seeds),
        n_folds=len(ctx.folds),
        conditions=list(CONDITIONS),
        runs=runs,
        summary={c: summarize(runs[c]) for c in CONDITIONS},
        gains=gains,
        # what the generated clips add beyond the optimizer steps they bring
        gains_over_matched={CONTROL_MATCHES: paired_gains(runs[CONTROL_MATCHES], runs[CONTROL])},
        comparisons=comparisons(runs),
        probe=pool_probes(outputs.probe_runs),
        probes=outputs.probe_runs,
        judges=outputs.judges,
        generated=generated,
        generators={gen: _generator_run(ctx, fold, gen) for fold in ctx.folds[:1] for gen in GENERATORS},
        generators_per_fold={gen: [_generator_run(ctx, fold, gen) for fold in ctx.folds] for gen in GENERATORS},
        samples=outputs.samples,
        mlflow=ctx.tracking.run,
    )


def _data_summary(ctx: ExperimentContext) -> DataSummary:
    """The folds, and the held-out clips over all of them: every clip is tested once."""
    folds = [fold.summary() for fold in ctx.folds]
    tested = {e: sum(f.class_counts["test"][e] for f in folds) for e in EMOTIONS}
    return DataSummary(features=str(ctx.spec.features), split_counts={"test": sum(tested.values())},
                       class_counts={"test": tested}, test_speakers=sorted(s for f in folds for s in f.test_speakers),
                       folds=folds)


def _mean_per_emotion(per_set: list[dict[str, float]]) -> dict[str, float]:
    """Per emotion, the mean over the sets that have it."""
    return {e: float(np.mean([p[e] for p in per_set if e in p])) for e in EMOTIONS if any(e in p for p in per_set)}


def _judged_clarity(ctx: ExperimentContext, judge: str, per_set: list[dict[str, Any]]) -> JudgedClarity:
    if judge == SER_JUDGE:
        judge_ua = spread(j.metrics.unweighted_accuracy for j in ctx.outputs.judges)
    else:
        judge_ua = spread(p.metrics.unweighted_accuracy for p in ctx.outputs.probe_runs)
    sets = [p["judged"][judge] for p in per_set]
    return JudgedClarity(judge_ua=judge_ua, all=spread(s["all"] for s in sets), kept=spread(s["kept"] for s in sets),
                         all_per_emotion=_mean_per_emotion([s["all_per_emotion"] for s in sets]),
                         kept_per_emotion=_mean_per_emotion([s["kept_per_emotion"] for s in sets]))


def _generated_set(ctx: ExperimentContext, generator: str, real: dict[str, float]) -> GeneratedSet:
    """A generator's sets over every fold and seed; real: the realism measures' real references."""
    per_set = [ctx.finished[StageKey.generated(fold.index, generator, seed)] for fold, seed in ctx.pairs()]
    references = [ctx.finished[StageKey.fid_reference(fold.index, seed)]["fid"] for fold, seed in ctx.pairs()]
    return GeneratedSet(
        n_per_emotion=ctx.spec.per_emotion,
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
    held_out = [ray.get(fold.held_out.mels) for fold in ctx.folds]
    return {
        "silent_frames": float(np.average([silent_frame_fraction(mels) for mels in held_out],
                                          weights=[fold.counts["test"] for fold in ctx.folds])),
        "two_sample": float(np.mean([two_sample_accuracy(mels, decode_mels(fold.rows("train")))["accuracy"]
                                     for mels, fold in zip(held_out, ctx.folds)])),
    }


def _generator_run(ctx: ExperimentContext, fold: Fold, generator: str) -> GeneratorRun:
    run = ctx.outputs.generators[(fold.index, generator)]
    state = load_state(run["checkpoint"])
    return GeneratorRun(
        fold=fold.index, checkpoint=run["checkpoint"], epochs=run["epochs_completed"], seconds=run["seconds"],
        mlflow_run_id=run["mlflow_run_id"], metrics={k: v for k, v in run["metrics"].items() if k.startswith(("val_", "train_"))},
        history=state["history"],
        space=state["configs"]["diffusion"]["space"] if generator == DIFFUSION else None,
    )
