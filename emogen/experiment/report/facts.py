"""What the report reads off the results, and what it calls things: a condition's runs and
spreads, the design (folds x seeds), the probe over folds, the clarity the findings go by.
Every section asks here, so they all count and name the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emogen.experiment.results import (
    CONTROL,
    DIFFUSION,
    GENERATED_FROM,
    GENERATORS,
    JUDGES,
    PROBE,
    PROBE_JUDGE,
    REAL,
    SER_JUDGE,
    UA,
    VAE,
    Comparison,
    ExperimentResults,
    GeneratedSet,
    JudgedClarity,
    SERRun,
    Spread,
    spread,
)

SER_METRICS: tuple[tuple[str, str], ...] = (
    ("weighted_accuracy", "WA"),
    (UA, "UA"),
    ("macro_f1", "macro F1"),
)
GENERATOR_LABELS = {VAE: "VAE", DIFFUSION: "diffusion"}
LABELS = {
    REAL: "real",
    CONTROL: "real, matched steps",
    **{condition: f"real+{GENERATOR_LABELS[generator]}" for condition, generator in GENERATED_FROM.items()},
    **GENERATOR_LABELS,
    PROBE: "linear probe (reference)",
}
JUDGE_LABELS = {SER_JUDGE: "SER judge (train+val, own seed)", PROBE_JUDGE: "linear probe"}
# what one SER run, one generated set and the filter are in the speaker-fold design
RUN_NOUN = "fold × seed run"
OVER_RUNS = "fold × seed runs"
OVER_SETS = "fold × seed sets"
PER_RUN = "per fold and seed"
FILTER_WHO = "each fold and seed's baseline SER"
FILTER_LABEL = f"filter ({FILTER_WHO}; chose the kept clips)"


def label(name: str) -> str:
    return LABELS.get(name, name)


def runs(results: ExperimentResults, condition: str) -> list[SERRun]:
    return results.runs.get(condition, [])


def metric_stat(results: ExperimentResults, condition: str, metric: str) -> Spread | None:
    """Mean/std over fold x seed runs (results fill a missing summary from the runs)."""
    return results.summary.get(condition, {}).get(metric)


def ua_gain(results: ExperimentResults, condition: str) -> Spread | None:
    """UA of `condition` minus UA of real, as a fraction, paired by fold and seed."""
    return results.gains.get(condition, {}).get(UA)


def per_speaker(results: ExperimentResults) -> dict[str, dict[str, float]]:
    """{condition or PROBE: {speaker: UA}}, a condition's UA averaged over its runs."""
    table: dict[str, dict[str, float]] = {}
    for cond in results.conditions:
        values: dict[str, list[float]] = {}
        for run in runs(results, cond):
            for speaker, ua in run.per_speaker.items():
                values.setdefault(speaker, []).append(ua)
        if values:
            table[cond] = {speaker: float(np.mean(v)) for speaker, v in sorted(values.items())}
    if results.probe is not None and results.probe.per_speaker:
        table[PROBE] = dict(sorted(results.probe.per_speaker.items()))
    return table


def comparisons(results: ExperimentResults) -> list[tuple[str, str, Comparison]]:
    """(condition, reference, comparison): against real first, then against the control."""
    return [(cond, ref, comparison) for ref in (REAL, CONTROL)
            for cond, comparison in results.comparisons.get(ref, {}).items()]


def n_folds(results: ExperimentResults) -> int:
    """How many speaker folds the run has (0 when the results do not say)."""
    if results.n_folds is not None:
        return results.n_folds
    if results.data is not None and results.data.folds:
        return len(results.data.folds)
    return len({run.fold for cond_runs in results.runs.values() for run in cond_runs})


def n_seeds(results: ExperimentResults) -> int:
    return len(results.seeds) or len({run.seed for cond_runs in results.runs.values() for run in cond_runs})


def tested_speakers(results: ExperimentResults) -> list[str]:
    """Every held-out speaker: the union of the folds' test speakers."""
    data = results.data
    if data is None:
        return []
    from_folds = {s for fold in data.folds for s in fold.test_speakers}
    return sorted(from_folds) if from_folds else list(data.test_speakers)


def probe_fits(results: ExperimentResults) -> int:
    """How many fits the probe row stands for: one per fold."""
    if results.probes:
        return len(results.probes)
    probe = results.probe
    return probe.fold_ua.count if probe is not None and probe.fold_ua is not None and probe.fold_ua.count else 1


def probe_spread(results: ExperimentResults, score: str) -> Spread | None:
    """A probe score over folds, when there is more than one fold: UA from the pool's
    fold_ua, the other scores from the per-fold probes. None: one fit, no spread."""
    probe = results.probe
    if score == UA and probe is not None and probe.fold_ua is not None and len(probe.fold_ua.values) > 1:
        return probe.fold_ua
    if len(results.probes) > 1:
        return spread(p.metrics.score(score) for p in results.probes)
    return None


def by_ser_judge(results: ExperimentResults) -> bool:
    """Whether clarity goes by the SER judge: every generator has it (as the findings need
    both generators' to compare), else every number goes by the filter, never a mix."""
    return bool(results.generated) and all(SER_JUDGE in g.judged for g in results.generated.values())


def in_generator_order(section: dict[str, Any]) -> dict[str, Any]:
    """The experiment's generators first, in their order, then any others by name."""
    names = [*(g for g in GENERATORS if g in section), *sorted(k for k in section if k not in GENERATORS)]
    return {name: section[name] for name in names}


def judges_in_order(generated: GeneratedSet) -> dict[str, JudgedClarity]:
    """The experiment's judges first, in their order, then any others by name."""
    names = [*(j for j in JUDGES if j in generated.judged), *sorted(k for k in generated.judged if k not in JUDGES)]
    return {name: generated.judged[name] for name in names}


@dataclass(frozen=True)
class ReportedClarity:
    """The clarity of all generated clips the lead, the findings and the plot go by: the SER
    judge's when every generator has it (it chose no clips), else the filter's."""

    by_ser_judge: bool
    overall: dict[str, Spread]  # generator -> clarity of all clips
    per_emotion: dict[str, dict[str, float]]  # generator -> emotion -> clarity of all clips
    judge_ua: Spread | None  # the judge's own UA on the real held-out clips


def reported_clarity(results: ExperimentResults) -> ReportedClarity:
    generated = in_generator_order(results.generated)
    if by_ser_judge(results):
        judged = {gen: g.judged[SER_JUDGE] for gen, g in generated.items()}
        return ReportedClarity(True, {gen: j.all for gen, j in judged.items()},
                               {gen: j.all_per_emotion for gen, j in judged.items() if j.all_per_emotion},
                               next(iter(judged.values())).judge_ua)  # the same judges scored every generator
    return ReportedClarity(False, {gen: g.clarity for gen, g in generated.items()},
                           {gen: g.clarity_per_emotion for gen, g in generated.items() if g.clarity_per_emotion},
                           metric_stat(results, REAL, UA))
