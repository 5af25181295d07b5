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

`run_experiment` runs `stages.STAGES`, named stage functions sharing one
`context.ExperimentContext`. Every unit of work records its result in stages.json under
its `journal.StageKey` (fold, what, seed) when it finishes, so re-running the same command
resumes after the last finished one (trainings also resume from their per-epoch
checkpoints). With `--storage-path s3://...` the trainings, generated clips and the
journal live on object storage, which every node reaches; the report stays in --out.
Reading order: config, journal, context, tasks, stages, assemble, registration,
parent_run, this driver.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from emogen.experiment.config import ExperimentConfig
from emogen.experiment.context import start_experiment
from emogen.experiment.journal import write_json
from emogen.experiment.parent_run import log_parent_run
from emogen.experiment.registration import register_models
from emogen.experiment.results import ExperimentResults
from emogen.experiment.stages import STAGES
from emogen.logs import get_logger

log = get_logger("experiment")


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
    storage_path: str | Path | None = None,
) -> ExperimentResults:
    """Run (or resume) the whole experiment; returns the results also written to
    <out_dir>/results.json, with the report's paths. seconds_before: stages the caller ran
    first (corpus, preprocess). overrides: preset sections ({"ser": {...}, "train_ser": {...},
    "train": {...}, ...}). storage_path: where every task's work and the resume journal live
(a local folder or an s3:// / gs:// prefix every node can reach; default out_dir)."""
    began = time.time()
    ctx = start_experiment(features, out_dir, preset, config, name, tracking_uri, command, seconds_before, overrides,
                           storage_path)
    for index, stage in enumerate(STAGES, start=1):
        log.info("%d/%d +%.0fs %s", index, len(STAGES), time.time() - began, stage.describe(ctx))
        stage_began = time.time()
        stage.run(ctx)
        ctx.seconds[stage.name] = round(time.time() - stage_began, 1)
    results = ctx.outputs.results
    assert results is not None, "the report stage builds the results"
    results.seconds = {**ctx.seconds, "total": round(sum(ctx.seconds.values()), 1)}
    write_json(ctx.layout.out / "results.json", results.to_json())
    log_parent_run(results, ctx.layout.out, ctx.tracking.uri)
    if ctx.config.register_prefix:
        register_models(ctx, results)
    return results
