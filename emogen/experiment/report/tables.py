"""The report's tables as document blocks: SER scores (also printed by the CLI), paired
comparisons, UA per speaker and per run, clarity by judge and per emotion, realism, the
speaker folds and the configuration."""

from __future__ import annotations

import json
from typing import Any, Mapping

from emogen.config import EMOTIONS
import emogen.experiment.report.facts as facts
from emogen.experiment.report.document import Cell, Table
from emogen.experiment.report.facts import FILTER_LABEL, JUDGE_LABELS, SER_METRICS, label
from emogen.experiment.report.numbers import CHANCE, NA, count, duration, interval, mean_std, p_value, pct, signed
from emogen.experiment.report.render import md_table
from emogen.experiment.results import (
    PROBE,
    REAL,
    SER_JUDGE,
    UA,
    Comparison,
    ExperimentResults,
    GeneratorRun,
    as_results,
)


def _probe_cell(results: ExperimentResults, score: str) -> str:
    """The probe's score in percent: the pool's mean ± std over folds when there are
    several (as a condition's cell shows its spread), else the one fit's score."""
    over_folds = facts.probe_spread(results, score)
    if over_folds is not None:
        return mean_std(over_folds, scale=100)
    return NA if results.probe is None else pct(results.probe.metrics.score(score))


def ser_table(results: ExperimentResults) -> Table:
    headers = ["condition", *(name for _, name in SER_METRICS), "ΔUA vs real", "n runs (fold × seed)"]
    rows: list[list[Cell]] = []
    for cond in results.conditions:
        stats = [facts.metric_stat(results, cond, metric) for metric, _ in SER_METRICS]
        if cond == REAL:
            delta = "—"
        else:
            gain = facts.ua_gain(results, cond)
            delta = NA if gain is None else signed(gain.mean * 100)
        n = max((s.count for s in stats if s is not None), default=0) or len(facts.runs(results, cond))
        rows.append([label(cond), *(mean_std(s, scale=100) for s in stats), delta, str(n) if n else NA])
    probe = results.probe
    if probe is not None:
        real = facts.metric_stat(results, REAL, UA)
        delta = NA if real is None else signed((probe.metrics.unweighted_accuracy - real.mean) * 100)
        fits = facts.probe_fits(results)
        rows.append([label(PROBE), *(_probe_cell(results, m) for m, _ in SER_METRICS), delta,
                     "1 fit" if fits == 1 else f"{fits} fits, one per fold"])
    return Table(headers, rows)


def results_table(results: ExperimentResults | Mapping[str, Any]) -> str:
    """The headline markdown table (also printed by the CLI): one row per condition
    (real, real with matched steps, real+VAE, real+diffusion); columns WA, UA, macro F1 as
    'mean ± std' in percent with 1 decimal (e.g. '61.4 ± 2.1') over the fold × seed runs,
    'ΔUA vs real' in points ('+3.2' / '−1.0', '—' for real), the number of runs; and when
    the run has it, the linear probe as a reference row (one deterministic fit per fold,
    its spread over folds)."""
    return md_table(ser_table(as_results(results)))


def per_run_table(results: ExperimentResults) -> Table | None:
    """One row per SER run, condition by condition, sorted by (fold, seed)."""
    rows: list[list[Cell]] = []
    for cond in results.conditions:
        for run in sorted(facts.runs(results, cond), key=lambda r: (r.fold, r.seed)):
            metrics = [pct(run.metrics.score(m)) for m, _ in SER_METRICS]
            rows.append([str(run.fold), str(run.seed), label(cond), *metrics, count(run.n_train), count(run.n_generated),
                         count(run.epochs), count(run.train_steps)])
    if not rows:
        return None
    return Table(["fold", "seed", "condition", "WA", "UA", "macro F1", "n_train", "n_generated", "epochs", "steps"], rows)


def comparison_table(comparisons: list[tuple[str, str, Comparison]]) -> Table:
    return Table(["comparison", "ΔUA", "95 % CI", "paired t p", "Wilcoxon p", "n pairs", "ΔUA per speaker",
                  "bootstrap 95 % CI", "n speakers"], [_comparison_row(*c) for c in comparisons])


def _comparison_row(condition: str, reference: str, comparison: Comparison) -> list[Cell]:
    paired, speakers = comparison.paired, comparison.speakers
    return [
        f"{label(condition)} vs {label(reference)}",
        NA if paired.mean is None else signed(paired.mean * 100),
        interval(paired.ci_low, paired.ci_high),
        p_value(paired.t_p),
        p_value(paired.wilcoxon_p),
        str(paired.n),
        NA if speakers is None or speakers.mean is None else signed(speakers.mean * 100),
        NA if speakers is None else interval(speakers.ci_low, speakers.ci_high),
        NA if speakers is None else str(speakers.n),
    ]


def per_speaker_table(per_speaker: dict[str, dict[str, float]]) -> Table:
    speakers = sorted({s for values in per_speaker.values() for s in values})
    return Table(["speaker", *(label(c) for c in per_speaker)],
                 [[speaker, *(pct(values.get(speaker)) for values in per_speaker.values())] for speaker in speakers])


def quality_table(results: ExperimentResults) -> Table | None:
    """FID, IS and clip counts per generator (clarity has its own table, by judge)."""
    rows: list[list[Cell]] = [
        [label(gen), mean_std(g.fid, digits=1), mean_std(g.inception_score, digits=2), count(g.n_clips), count(g.n_kept)]
        for gen, g in facts.in_generator_order(results.generated).items()
    ]
    return Table(["generator", "FID", "IS", "n clips", "kept after filtering"], rows) if rows else None


def clarity_by_judge_table(results: ExperimentResults) -> Table:
    """Per generator: the filter's clarity (all clips only: it kept the clips it recognised,
    so its clarity of the kept ones is high by construction), then each judge that chose
    nothing, beside the judge's own UA on real held-out clips and chance."""
    filter_ua, chance = mean_std(facts.metric_stat(results, REAL, UA), scale=100), pct(CHANCE)
    rows: list[list[Cell]] = []
    for gen, g in facts.in_generator_order(results.generated).items():
        rows.append([label(gen), FILTER_LABEL, mean_std(g.clarity, scale=100), "n/a (it chose them)", filter_ua, chance])
        for judge, judged in facts.judges_in_order(g).items():
            rows.append([label(gen), JUDGE_LABELS.get(judge, judge), mean_std(judged.all, scale=100),
                         mean_std(judged.kept, scale=100), mean_std(judged.judge_ua, scale=100), chance])
    return Table(["generator", "judge", "clarity, all clips", "clarity, kept clips", "judge's UA on real held-out clips",
                  "chance"], rows)


def clarity_per_emotion_table(results: ExperimentResults) -> tuple[str, Table] | None:
    """(title, table) of clarity per emotion: by the SER judge of all and of kept clips per
    generator when every generator has it, else the filter's of all clips."""
    generated = facts.in_generator_order(results.generated)
    columns: dict[str, dict[str, float]]
    if facts.by_ser_judge(results):
        title = "Clarity per emotion by the SER judge (%)"
        columns = {f"{label(gen)}, {which}": getattr(g.judged[SER_JUDGE], f"{which}_per_emotion")
                   for gen, g in generated.items() for which in ("all", "kept")}
    else:
        title = "Clarity per emotion (%)"
        columns = {label(gen): g.clarity_per_emotion for gen, g in generated.items() if g.clarity_per_emotion}
    if not any(columns.values()):
        return None
    emotions = [e for e in EMOTIONS if any(e in values for values in columns.values())]
    emotions += sorted({e for values in columns.values() for e in values} - set(emotions))
    rows: list[list[Cell]] = [[e, *(pct(values.get(e)) for values in columns.values())] for e in emotions]
    return title, Table(["emotion", *columns], rows)


def realism_table(results: ExperimentResults) -> Table | None:
    """Two-sample accuracy and near-silent frames per generator, beside their real references."""
    rows: list[list[Cell]] = [
        [label(gen), mean_std(g.realism.two_sample_accuracy, digits=2),
         NA if g.realism.real_two_sample_accuracy is None else f"{g.realism.real_two_sample_accuracy:.2f}",
         str(g.realism.n_per_side), mean_std(g.realism.silent_frames, scale=100), pct(g.realism.real_silent_frames)]
        for gen, g in facts.in_generator_order(results.generated).items() if g.realism is not None
    ]
    if not rows:
        return None
    return Table(["generator", "two-sample accuracy", "real vs real", "clips per side", "near-silent frames",
                  "real clips'"], rows)


def generators_table(results: ExperimentResults) -> Table | None:
    rows: list[list[Cell]] = []
    for name, gen in facts.in_generator_order(results.generators).items():
        title = label(name) + (f" ({gen.space} space)" if gen.space else "")
        rows.append([title, count(gen.epochs), _final_val_metrics(gen), duration(gen.seconds), gen.checkpoint or NA])
    return Table(["generator", "epochs", "final validation metrics", "time", "checkpoint"], rows) if rows else None


def _final_val_metrics(gen: GeneratorRun) -> str:
    metrics = gen.metrics or {k: v for k, v in (gen.history[-1] if gen.history else {}).items() if k.startswith("val_")}
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or NA


def folds_table(results: ExperimentResults) -> Table:
    """Who each fold tests and validates on, and its clip counts."""
    folds = sorted(results.data.folds, key=lambda f: f.fold) if results.data else []
    rows: list[list[Cell]] = [
        [str(f.fold), ", ".join(f.test_speakers) or NA, ", ".join(f.val_speakers) or NA,
         *(count(f.split_counts.get(split)) for split in ("train", "val", "test"))]
        for f in folds
    ]
    return Table(["fold", "test speakers", "validation speakers", "train clips", "val clips", "test clips"], rows)


def clips_table(results: ExperimentResults) -> Table | None:
    """Clips per emotion and split (with folds: every clip once, in the fold that tests it)."""
    if results.data is None:
        return None
    splits, classes = results.data.split_counts, results.data.class_counts
    columns = list(dict.fromkeys([*splits, *classes]))
    if not columns:
        return None
    emotions = [e for e in EMOTIONS if any(e in classes.get(c, {}) for c in columns)]
    rows: list[list[Cell]] = [[emotion, *(count(classes.get(c, {}).get(emotion)) for c in columns)] for emotion in emotions]
    rows.append(["all", *(count(splits.get(c)) for c in columns)])
    return Table(["emotion", *columns], rows)


def config_table(config: dict) -> Table:
    return Table(["setting", "value"], [[k, v] for k, v in _flatten(config)])


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    items = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, name + "."))
        else:
            items.append((name, value if isinstance(value, str) else json.dumps(value, default=str)))
    return items
