"""The experiment report: does generated speech improve speech-emotion recognition?

`write_report(results, out_dir)` turns an experiment's results (`emogen.experiment.results`, as the
model or as the results.json dict) and the sample files beside it into:

- `report.md`: readable as text, with plots and WAVs linked by relative path;
- `report.html`: the same content, self-contained (no external CSS, JS or fonts): plots
  embedded as base64 PNG, WAVs embedded as `<audio>` data URIs and also linked;
- `plots/`: the PNGs.

Sections, in order: title (name, preset, date, total time); "What this run shows", a
paragraph generated from the numbers (the design: K speaker folds x S seeds = N paired runs,
every speaker tested once, or for a run before folds the seeds and test size; UA gains in
points, whether the two targets are met, with clarity by the SER judge when the run has one,
whether the SER beats the linear probe, and "significant at 5 %" / "not significant" only
from the stored paired tests, or why there is no test); the SER table (`results_table`,
also printed by the CLI, with the linear probe as a reference row: one fit per fold, its
spread over folds), the paired statistics, UA per held-out speaker and the per fold x seed
table; generated-data quality (FID, IS, clip counts; clarity by judge: the filter that chose
the kept clips, then the judges that chose nothing, each beside its own UA on real held-out
clips and chance; clarity per emotion); generator training; time per stage; plots (SER
scores, one confusion matrix per condition, UA per held-out speaker, mel grid, training
curves, clarity by the SER judge); audio samples; how to reproduce; MLflow; data (the
speaker folds: each fold's test and validation speakers and clip counts) and configuration.

A results.json from before speaker folds and judges (one split, clarity by the filter
only) keeps the single-split wording and tables: seeds, "Test speakers", the filter's
clarity beside FID and IS.

Only the SER runs are needed: a missing section is skipped or shown as "n/a", never a
crash, because a partial experiment still deserves a report.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Union
from urllib.parse import quote

import numpy as np

from emogen.config import EMOTIONS, AudioConfig
from emogen.experiment.results import (
    AUGMENTED_BY,
    CONTROL,
    CONTROL_MATCHES,
    DIFFUSION,
    GENERATED_FROM,
    GENERATORS,
    JUDGES,
    PROBE,
    PROBE_JUDGE,
    REAL,
    SER_JUDGE,
    SILENT_FRAMES_TOLERANCE,
    TWO_SAMPLE_TARGETS,
    UA,
    VAE,
    Comparison,
    ExperimentResults,
    GeneratedSet,
    GeneratorRun,
    JudgedClarity,
    SERRun,
    Spread,
    as_results,
    spread,
)
from emogen.evaluation.stats import MIN_PAIRS, significant

MEL_SOURCES: tuple[str, ...] = (REAL, *GENERATORS)
SER_METRICS: tuple[tuple[str, str], ...] = (
    ("weighted_accuracy", "WA"),
    (UA, "UA"),
    ("macro_f1", "macro F1"),
)
_GENERATOR_LABELS = {VAE: "VAE", DIFFUSION: "diffusion"}
_LABELS = {
    REAL: "real",
    CONTROL: "real, matched steps",
    **{condition: f"real+{_GENERATOR_LABELS[generator]}" for condition, generator in GENERATED_FROM.items()},
    **_GENERATOR_LABELS,
    PROBE: "linear probe (reference)",
}
_GENERATOR_COLORS = {VAE: "#DD8452", DIFFUSION: "#55A868"}
# a condition with generated clips takes its generator's colour
_COLORS = {PROBE: "#222222", REAL: "#4C72B0", CONTROL: "#8C8C8C", **{AUGMENTED_BY[g]: c for g, c in _GENERATOR_COLORS.items()}, **_GENERATOR_COLORS}
_MINUS = "\u2212"  # a typographic minus lines up with "+" in tables
CHANCE = 1 / len(EMOTIONS)  # clarity and UA of a judge that guesses
_JUDGE_LABELS = {SER_JUDGE: "SER judge (train+val, own seed)", PROBE_JUDGE: "linear probe"}
NA = "n/a"
_AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}


# --------------------------------------------------------------------------- numbers


def _runs(results: ExperimentResults, condition: str) -> list[SERRun]:
    return results.runs.get(condition, [])


def _metric_stat(results: ExperimentResults, condition: str, metric: str) -> Spread | None:
    """Mean/std over seeds (results fill a missing summary from the runs)."""
    return results.summary.get(condition, {}).get(metric)


def _ua_gain(results: ExperimentResults, condition: str) -> Spread | None:
    """UA of `condition` minus UA of real, as a fraction, paired by seed."""
    return results.gains.get(condition, {}).get(UA)


def _per_speaker(results: ExperimentResults) -> dict[str, dict[str, float]]:
    """{condition or PROBE: {speaker: UA}}, a condition's UA averaged over its runs."""
    table: dict[str, dict[str, float]] = {}
    for cond in results.conditions:
        values: dict[str, list[float]] = {}
        for run in _runs(results, cond):
            for speaker, ua in run.per_speaker.items():
                values.setdefault(speaker, []).append(ua)
        if values:
            table[cond] = {speaker: float(np.mean(v)) for speaker, v in sorted(values.items())}
    if results.probe is not None and results.probe.per_speaker:
        table[PROBE] = dict(sorted(results.probe.per_speaker.items()))
    return table


def _comparisons(results: ExperimentResults) -> list[tuple[str, str, Comparison]]:
    """(condition, reference, comparison): against real first, then against the control."""
    return [(cond, ref, comparison) for ref in (REAL, CONTROL)
            for cond, comparison in results.comparisons.get(ref, {}).items()]


def _n_folds(results: ExperimentResults) -> int | None:
    """How many speaker folds the run has; None for a run from before folds (one split),
    whose report keeps the single-split wording."""
    if results.n_folds is not None:
        return results.n_folds
    if results.data is not None and results.data.folds:
        return len(results.data.folds)
    return len({run.fold for runs in results.runs.values() for run in runs if run.fold is not None}) or None


def _n_seeds(results: ExperimentResults) -> int:
    return len(results.seeds) or len({run.seed for runs in results.runs.values() for run in runs})


def _tested_speakers(results: ExperimentResults) -> list[str]:
    """Every held-out speaker: with folds, the union of the folds' test speakers."""
    data = results.data
    if data is None:
        return []
    from_folds = {s for fold in data.folds for s in fold.test_speakers}
    return sorted(from_folds) if from_folds else list(data.test_speakers)


def _run_noun(results: ExperimentResults) -> str:
    """What one run of a condition is: a seed, or with folds a fold x seed run."""
    return "seed" if _n_folds(results) is None else "fold × seed run"


def _over(results: ExperimentResults) -> str:
    """What a spread is over: the seeds, or with folds the fold x seed runs."""
    return _run_noun(results) + "s"


def _over_sets(results: ExperimentResults) -> str:
    """What a generated-clip number is over: the seeds, or with folds the fold x seed sets."""
    return "seeds" if _n_folds(results) is None else "fold × seed sets"


def _probe_fits(results: ExperimentResults) -> int:
    """How many fits the probe row stands for: one per fold (1 before folds)."""
    if results.probes:
        return len(results.probes)
    probe = results.probe
    return probe.fold_ua.count if probe is not None and probe.fold_ua is not None and probe.fold_ua.count else 1


def _probe_spread(results: ExperimentResults, score: str) -> Spread | None:
    """A probe score over folds, when there is more than one fold: UA from the pool's
    fold_ua, the other scores from the per-fold probes. None: one fit, no spread."""
    probe = results.probe
    if score == UA and probe is not None and probe.fold_ua is not None and len(probe.fold_ua.values) > 1:
        return probe.fold_ua
    if len(results.probes) > 1:
        return spread(p.metrics.score(score) for p in results.probes)
    return None


def _probe_cell(results: ExperimentResults, score: str) -> str:
    """The probe's score in percent: the pool's mean ± std over folds when there are
    several (as a condition's cell shows its spread), else the one fit's score."""
    over_folds = _probe_spread(results, score)
    if over_folds is not None:
        return _mean_std(over_folds, scale=100)
    return NA if results.probe is None else _pct(results.probe.metrics.score(score))


def _by_ser_judge(results: ExperimentResults) -> bool:
    """Whether clarity goes by the SER judge: every generator has it (as the findings need
    both generators' to compare), else every number goes by the filter, never a mix."""
    return bool(results.generated) and all(SER_JUDGE in g.judged for g in results.generated.values())


def _has_judged(results: ExperimentResults) -> bool:
    """Whether judges that chose no clips scored the generated ones (files before folds: no)."""
    return any(g.judged for g in results.generated.values())


# --------------------------------------------------------------------------- formatting


def _label(name: str) -> str:
    return _LABELS.get(name, name)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "unnamed"


def _pct(x: float | None) -> str:
    return NA if x is None else f"{x * 100:.1f}"


def _mean_std(stat: Spread | None, scale: float = 1.0, digits: int = 1) -> str:
    if stat is None:
        return NA
    text = f"{stat.mean * scale:.{digits}f}"
    return text if stat.std is None else f"{text} ± {stat.std * scale:.{digits}f}"


def _signed(points: float, digits: int = 1) -> str:
    text = f"{abs(points):.{digits}f}"
    if float(text) == 0:
        return text  # "+0.0" / "−0.0" would suggest a direction that is not there
    return ("+" if points > 0 else _MINUS) + text


def _gain_text(points: float, threshold: float) -> str:
    # one decimal may round a miss up to the threshold ("+3.0", not met): show two then
    text = _signed(points)
    if (round(points, 1) >= threshold) != (points >= threshold):
        text = _signed(points, 2)
    return text


def _p_value(p: float | None) -> str:
    if p is None:
        return NA
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_text(p: float | None) -> str:
    """"p = 0.012", "p < 0.001" or "p n/a"."""
    text = _p_value(p)
    return f"p {text}" if p is None or text.startswith("<") else f"p = {text}"


def _interval(low: float | None, high: float | None) -> str:
    """A difference interval in points, "−3.0 to +7.2"."""
    if low is None or high is None:
        return NA
    return f"{_signed(low * 100)} to {_signed(high * 100)}"


def _count(x: float | None) -> str:
    return NA if x is None else f"{x:,.0f}"


def _duration(seconds: float | None) -> str:
    """Seconds below a minute, else minutes and seconds, else hours and minutes; rounded
    once to the shown unit, so 1619.6 s reads "27 min 0 s", never "26 min 60 s"."""
    if seconds is None or not math.isfinite(seconds):
        return NA
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole_seconds = round(seconds)
    if whole_seconds < 3600:
        return f"{whole_seconds // 60} min {whole_seconds % 60} s"
    whole_minutes = round(seconds / 60)
    return f"{whole_minutes // 60} h {whole_minutes % 60} min"


def _date(created: str | None) -> str:
    if not created:
        return NA
    try:
        return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return created


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --------------------------------------------------------------------------- document model
# Sections are built once as blocks and rendered twice, so md and html cannot drift apart.


@dataclass(frozen=True)
class AudioClip:
    rel: str  # relative to the report folder
    path: Path


Cell = Union[str, AudioClip]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Cell]]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Plot:
    title: str
    caption: str
    rel: str
    path: Path


Block = Union[Heading, Para, Table, Code, Plot]


# --------------------------------------------------------------------------- tables


def _results_rows(results: ExperimentResults) -> tuple[list[str], list[list[Cell]]]:
    n_header = "n seeds" if _n_folds(results) is None else "n runs (fold × seed)"
    headers = ["condition", *(label for _, label in SER_METRICS), "ΔUA vs real", n_header]
    rows: list[list[Cell]] = []
    for cond in results.conditions:
        stats = [_metric_stat(results, cond, metric) for metric, _ in SER_METRICS]
        if cond == REAL:
            delta = "—"
        else:
            gain = _ua_gain(results, cond)
            delta = NA if gain is None else _signed(gain.mean * 100)
        n = max((s.count for s in stats if s is not None), default=0) or len(_runs(results, cond))
        rows.append([_label(cond), *(_mean_std(s, scale=100) for s in stats), delta, str(n) if n else NA])
    probe = results.probe
    if probe is not None:
        real = _metric_stat(results, REAL, UA)
        delta = NA if real is None else _signed((probe.metrics.unweighted_accuracy - real.mean) * 100)
        fits = _probe_fits(results)
        rows.append([_label(PROBE), *(_probe_cell(results, m) for m, _ in SER_METRICS), delta,
                     "1 fit" if fits == 1 else f"{fits} fits, one per fold"])
    return headers, rows


def results_table(results: ExperimentResults | Mapping[str, Any]) -> str:
    """The headline markdown table (also printed by the CLI): one row per condition
    (real, real with matched steps, real+VAE, real+diffusion); columns WA, UA, macro F1 as
    'mean ± std' in percent with 1 decimal (e.g. '61.4 ± 2.1'), 'ΔUA vs real' in points
    ('+3.2' / '−1.0', '—' for real), n seeds (with speaker folds: n fold × seed runs, the
    spread being over them); and when the run has it, the linear probe as a reference row
    (one deterministic fit per fold: no spread from a single split, the spread over folds
    with several)."""
    headers, rows = _results_rows(as_results(results))
    return _md_table(Table(headers, rows))


def _per_run_table(results: ExperimentResults) -> Table | None:
    """One row per SER run, condition by condition, sorted by (fold, seed); a fold column
    when the runs carry one (a run from before folds has none)."""
    runs = {cond: _runs(results, cond) for cond in results.conditions}
    with_fold = any(run.fold is not None for cond_runs in runs.values() for run in cond_runs)
    rows: list[list[Cell]] = []
    for cond, cond_runs in runs.items():
        for run in sorted(cond_runs, key=lambda r: (-1 if r.fold is None else r.fold, r.seed)):
            fold = [NA if run.fold is None else str(run.fold)] if with_fold else []
            metrics = [_pct(run.metrics.score(m)) for m, _ in SER_METRICS]
            rows.append([*fold, str(run.seed), _label(cond), *metrics, _count(run.n_train), _count(run.n_generated),
                         _count(run.epochs), _count(run.train_steps)])
    if not rows:
        return None
    headers = [*(["fold"] if with_fold else []), "seed", "condition", "WA", "UA", "macro F1", "n_train", "n_generated",
               "epochs", "steps"]
    return Table(headers, rows)


def _quality_rows(results: ExperimentResults, with_clarity: bool) -> list[list[Cell]]:
    """FID, IS and clip counts per generator; the filter's clarity beside them only for
    files without judges (with judges it belongs in the clarity-by-judge table)."""
    return [
        [
            _label(gen),
            *([_mean_std(g.clarity, scale=100)] if with_clarity else []),
            _mean_std(g.fid, digits=1),
            _mean_std(g.inception_score, digits=2),
            _count(g.n_clips),
            _count(g.n_kept),
        ]
        for gen, g in _in_generator_order(results.generated).items()
    ]


def _filter_who(results: ExperimentResults) -> str:
    """Who the filter is: the run's baseline SER of the same seed (and fold)."""
    return "each seed's baseline SER" if _n_folds(results) is None else "each fold and seed's baseline SER"


def _filter_label(results: ExperimentResults) -> str:
    return f"filter ({_filter_who(results)}; chose the kept clips)"


def _judges_in_order(generated: GeneratedSet) -> dict[str, JudgedClarity]:
    """The experiment's judges first, in their order, then any others by name."""
    names = [*(j for j in JUDGES if j in generated.judged), *sorted(k for k in generated.judged if k not in JUDGES)]
    return {name: generated.judged[name] for name in names}


def _clarity_by_judge_rows(results: ExperimentResults) -> list[list[Cell]]:
    """Per generator: the filter's clarity (all clips only: it kept the clips it recognised,
    so its clarity of the kept ones is high by construction), then each judge that chose
    nothing, beside the judge's own UA on real held-out clips and chance."""
    filter_ua, chance = _mean_std(_metric_stat(results, REAL, UA), scale=100), _pct(CHANCE)
    rows: list[list[Cell]] = []
    for gen, g in _in_generator_order(results.generated).items():
        rows.append([_label(gen), _filter_label(results), _mean_std(g.clarity, scale=100), "n/a (it chose them)",
                     filter_ua, chance])
        for judge, judged in _judges_in_order(g).items():
            rows.append([_label(gen), _JUDGE_LABELS.get(judge, judge), _mean_std(judged.all, scale=100),
                         _mean_std(judged.kept, scale=100), _mean_std(judged.judge_ua, scale=100), chance])
    return rows


def _in_generator_order(section: dict[str, Any]) -> dict[str, Any]:
    """The experiment's generators first, in their order, then any others by name."""
    names = [*(g for g in GENERATORS if g in section), *sorted(k for k in section if k not in GENERATORS)]
    return {name: section[name] for name in names}


@dataclass(frozen=True)
class ReportedClarity:
    """The clarity of all generated clips the findings and the plot go by: the SER judge's
    when the run has one (it chose no clips; Targets.clarity_met goes by it too), else the
    filter's (files before judges)."""

    by_ser_judge: bool
    overall: dict[str, Spread]  # generator -> clarity of all clips
    per_emotion: dict[str, dict[str, float]]  # generator -> emotion -> clarity of all clips
    judge_ua: Spread | None  # the judge's own UA on the real held-out clips


def _reported_clarity(results: ExperimentResults) -> ReportedClarity:
    generated = _in_generator_order(results.generated)
    if _by_ser_judge(results):
        judged = {gen: g.judged[SER_JUDGE] for gen, g in generated.items()}
        return ReportedClarity(True, {gen: j.all for gen, j in judged.items()},
                               {gen: j.all_per_emotion for gen, j in judged.items() if j.all_per_emotion},
                               next(iter(judged.values())).judge_ua)  # the same judges scored every generator
    return ReportedClarity(False, {gen: g.clarity for gen, g in generated.items()},
                           {gen: g.clarity_per_emotion for gen, g in generated.items() if g.clarity_per_emotion},
                           _metric_stat(results, REAL, UA))


def _clarity_per_emotion_table(results: ExperimentResults) -> tuple[str, Table] | None:
    """(title, table) of clarity per emotion: by the SER judge of all and of kept clips per
    generator when the run has it, else the filter's of all clips as before judges."""
    generated = _in_generator_order(results.generated)
    columns: dict[str, dict[str, float]]
    if _by_ser_judge(results):
        title = "Clarity per emotion by the SER judge (%)"
        columns = {f"{_label(gen)}, {which}": getattr(g.judged[SER_JUDGE], f"{which}_per_emotion")
                   for gen, g in generated.items() for which in ("all", "kept")}
    else:
        title = "Clarity per emotion (%)"
        columns = {_label(gen): g.clarity_per_emotion for gen, g in generated.items() if g.clarity_per_emotion}
    if not any(columns.values()):
        return None
    emotions = [e for e in EMOTIONS if any(e in values for values in columns.values())]
    emotions += sorted({e for values in columns.values() for e in values} - set(emotions))
    rows: list[list[Cell]] = [[e, *(_pct(values.get(e)) for values in columns.values())] for e in emotions]
    return title, Table(["emotion", *columns], rows)


def _final_val_metrics(gen: GeneratorRun) -> str:
    metrics = gen.metrics or {k: v for k, v in (gen.history[-1] if gen.history else {}).items() if k.startswith("val_")}
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or NA


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    items = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, name + "."))
        else:
            items.append((name, value if isinstance(value, str) else json.dumps(value, default=str)))
    return items


# --------------------------------------------------------------------------- sections


def _title_section(results: ExperimentResults) -> list[Block]:
    meta = [
        f"Preset: {results.preset or NA}",
        f"Date: {_date(results.created)}",
        f"Total time: {_duration(results.seconds.get('total'))}",
    ]
    return [Heading(f"EmoGen experiment: {results.name or 'unnamed'}", 1), Para(" · ".join(meta))]


def _scope_sentence(results: ExperimentResults) -> str:
    if _n_folds(results) is not None:
        return _design_sentence(results)
    n_seeds = len(results.seeds) or max((len(_runs(results, c)) for c in results.conditions), default=0)
    data = results.data
    n_clips = data.split_counts.get("test") if data else None
    if n_clips is None:
        n_clips = next((r.metrics.count for c in results.conditions for r in _runs(results, c)), None)
    seeds_text = f"Each condition was run with {_plural(n_seeds, 'seed')}" if n_seeds else "The number of seeds is unknown"
    clips_text = f"{_plural(n_clips, 'real test clip')}" if n_clips is not None else "real test clips"
    if data and data.test_speakers:
        clips_text += f" from {_plural(len(data.test_speakers), 'held-out speaker')}"
    return f"{seeds_text}; every SER is tested on {clips_text}."


def _design_sentence(results: ExperimentResults) -> str:
    """The speaker-fold design from the numbers: folds x seeds = paired runs, and every
    speaker tested once (by the fold that holds it out)."""
    n_folds, n_seeds = _n_folds(results) or 0, _n_seeds(results)
    design = f"{_plural(n_folds, 'speaker fold')} × {_plural(n_seeds, 'seed')} = {_plural(n_folds * n_seeds, 'paired run')}"
    text = f"The design is {design} per condition"
    finished = max((len(_runs(results, c)) for c in results.conditions), default=0)
    if finished and finished != n_folds * n_seeds:  # a partial run: say what the numbers below rest on
        text += f" ({finished} with results)"
    speakers = _tested_speakers(results)
    text += f"; every one of the {_plural(len(speakers), 'speaker')}" if speakers else "; every speaker"
    text += " is tested once, by the SERs of the fold that holds it out"
    n_clips = results.data.split_counts.get("test") if results.data else None
    if n_clips is not None:
        text += f" ({_plural(n_clips, 'real test clip')} in all)"
    return text + "."


def _per_run(results: ExperimentResults) -> str:
    """"per seed", or with folds "per fold and seed": what one paired value stands for."""
    return "per seed" if _n_folds(results) is None else "per fold and seed"


def _gain_sentences(results: ExperimentResults, threshold: float) -> list[str]:
    sentences = []
    real = _metric_stat(results, REAL, UA)
    for generator in (DIFFUSION, VAE):
        cond = AUGMENTED_BY[generator]
        gain, stat = _ua_gain(results, cond), _metric_stat(results, cond, UA)
        if gain is None:
            sentences.append(f"There is no {_label(cond)} result to compare with real.")
            continue
        text = f"Adding {_label(generator)}-generated clips changed unweighted accuracy (UA) by {_gain_text(gain.mean * 100, threshold)} points"
        if real is not None and stat is not None:
            text += f" ({real.mean * 100:.1f}% → {stat.mean * 100:.1f}%)"
        if len(gain.values) > 1:
            label = "per-seed gains" if _n_folds(results) is None else "gains per fold and seed"
            text += f"; {label} " + ", ".join(_signed(v * 100) for v in gain.values)
        sentences.append(text + ".")
        if gain.std is not None and gain.count > 1 and abs(gain.mean) < gain.std:
            spread_name = "seed-to-seed spread" if _n_folds(results) is None else "spread over folds and seeds"
            sentences.append(
                f"That change is smaller than its {spread_name} ({gain.std * 100:.1f} points), so it may be noise."
            )
    return sentences


def _ua_target_sentence(results: ExperimentResults, threshold: float) -> str:
    diffusion = AUGMENTED_BY[DIFFUSION]
    target = f"{_label(diffusion)} ≥ +{threshold:.1f} UA points over real"
    gain = _ua_gain(results, diffusion)
    if gain is None:
        return f"The target {target} cannot be judged: the real or {_label(diffusion)} results are missing."
    points = gain.mean * 100
    if points >= threshold:
        return f"The target {target} is met ({_gain_text(points, threshold)} points)."
    return (
        f"The target {target} is not met: the gain is {_gain_text(points, threshold)} points, "
        f"{threshold - points:.1f} points short."
    )


def _clarity_target_sentence(results: ExperimentResults) -> str:
    """The clarity target by the SER judge when both generators have it (it chose no clips,
    and it is what Targets.clarity_met is decided by), else by the filter as before judges."""
    vae, diff = results.generated.get(VAE), results.generated.get(DIFFUSION)
    target = "diffusion clarity > VAE clarity"
    if vae is None or diff is None:
        return f"The target {target} cannot be judged: clarity was not measured for both generators."
    if _by_ser_judge(results):
        vae_judged, diff_judged = vae.judged[SER_JUDGE], diff.judged[SER_JUDGE]
        diff_clarity, vae_clarity = diff_judged.all.mean, vae_judged.all.mean
        judge = (f"Emotional clarity by the SER judge (an SER trained on each fold's real training and validation "
                 f"clips with its own seed, which chose no clips; UA {diff_judged.judge_ua.mean * 100:.1f}% on the real "
                 f"held-out clips, chance {CHANCE * 100:.1f}%), the share of all generated clips it classifies as the "
                 "requested emotion,")
    else:
        diff_clarity, vae_clarity = diff.clarity.mean, vae.clarity.mean
        judge = "Emotional clarity (the real-trained SER's accuracy on generated clips against the requested emotion)"
    verdict = "met" if diff_clarity > vae_clarity else "not met"
    return (
        f"{judge} is {diff_clarity * 100:.1f}% for diffusion and {vae_clarity * 100:.1f}% for the VAE, "
        f"so the target {target} is {verdict}."
    )


def _findings_section(results: ExperimentResults) -> list[Block]:
    threshold = results.targets.ua_gain_points
    sentences = [
        _scope_sentence(results),
        *_gain_sentences(results, threshold),
        _ua_target_sentence(results, threshold),
        _clarity_target_sentence(results),
        *_realism_sentences(results),
        *_steps_sentence(results),
        *_probe_sentences(results),
        *_significance_sentences(results),
    ]
    return [Heading("What this run shows"), Para(" ".join(sentences))]


def _realism_sentences(results: ExperimentResults) -> list[str]:
    """Whether the generated mels look like speech, against the realism targets."""
    parts, silent = [], []
    real_silent = real_two_sample = None
    for gen, generated in _in_generator_order(results.generated).items():
        r = generated.realism
        if r is None:
            continue
        target = TWO_SAMPLE_TARGETS.get(gen)
        verdict = "" if target is None else f" (target ≤ {target:.2f}: {'met' if r.two_sample_met(gen) else 'not met'})"
        parts.append(f"{r.two_sample_accuracy.mean:.2f} for {_label(gen)}{verdict}")
        silent.append(f"{r.silent_frames.mean * 100:.1f}% for {_label(gen)}")
        real_silent, real_two_sample = r.real_silent_frames, r.real_two_sample_accuracy
    if not parts:
        return []
    reference = "" if real_two_sample is None else f", against {real_two_sample:.2f} for the training speakers' real clips"
    return [f"A simple classifier tells generated mels from held-out real ones with accuracy {', '.join(parts)} "
            f"(0.50 = indistinguishable{reference}); near-silent frames are {', '.join(silent)} against "
            f"{real_silent * 100:.1f}% in real speech."]


def _probe_sentences(results: ExperimentResults) -> list[str]:
    """Whether the baseline SER beats the linear probe: below it, the SER is a weaker
    instrument than a linear model on the same mels."""
    probe, real = results.probe, _metric_stat(results, REAL, UA)
    if probe is None or real is None:
        return []
    probe_ua, gap = probe.metrics.unweighted_accuracy * 100, (real.mean - probe.metrics.unweighted_accuracy) * 100
    if _n_folds(results) is None:
        text = (f"The linear probe (logistic regression on per-band mel statistics, fit once on the real training and "
                f"validation clips) reaches UA {probe_ua:.1f}% on the same held-out speakers; the baseline SER (real) ")
    else:
        fits = _probe_fits(results)
        over_folds = _probe_spread(results, UA)
        spread_text = f" (± {over_folds.std * 100:.1f} over folds)" if over_folds and over_folds.std is not None else ""
        text = (f"The linear probe (logistic regression on per-band mel statistics, fit on each fold's real training "
                f"and validation clips: {_plural(fits, 'fit')}) reaches UA {probe_ua:.1f}%{spread_text} on the same "
                "folds' held-out speakers; the baseline SER (real) ")
    if round(gap, 1) > 0:
        return [text + f"beats it by {gap:.1f} points, so the SER learns more from the mels than a linear model does."]
    if round(gap, 1) < 0:
        return [text + f"is {-gap:.1f} points below it, so the SER is a weaker instrument than a linear model here "
                "and its gains measure little."]
    return [text + "ties with it, so the SER learns no more than a linear model here."]


def _significance_sentence(condition: str, reference: str, comparison: Comparison) -> str:
    paired, name = comparison.paired, f"{_label(condition)} vs {_label(reference)}"
    if paired.mean is None:
        return f"{name}: no shared seeds to pair, so no test."
    text = f"{name}: UA {_signed(paired.mean * 100)} points"
    if paired.n < MIN_PAIRS:
        text += (f" from n = {paired.n} pair; the test needs more: a paired test needs at least {MIN_PAIRS} pairs "
                 "(run more seeds), so no significance is claimed")
    elif paired.t_p is None:
        text += f" over n = {paired.n} pairs; no paired t-test ({paired.note}), so no significance is claimed"
    else:
        t_says = significant(paired.t_p)
        verdict = "significant at 5 %" if t_says else "not significant"
        text += (f" (95 % CI {_interval(paired.ci_low, paired.ci_high)}; paired t {_p_text(paired.t_p)}, "
                 f"Wilcoxon {_p_text(paired.wilcoxon_p)}; n = {paired.n} pairs): {verdict} by the paired t-test")
        wilcoxon_says = significant(paired.wilcoxon_p)
        if wilcoxon_says is not None and wilcoxon_says != t_says:
            text += ", though the Wilcoxon test disagrees"
    speakers = comparison.speakers
    if speakers is not None and speakers.mean is not None:
        text += f"; over {_plural(speakers.n, 'held-out speaker')} {_signed(speakers.mean * 100)} points"
        if speakers.ci_low is not None:
            text += f" (bootstrap 95 % CI {_interval(speakers.ci_low, speakers.ci_high)})"
    return text + "."


def _significance_sentences(results: ExperimentResults) -> list[str]:
    """From the stored paired tests only; results without them (older runs) say so."""
    comparisons = _comparisons(results)
    if not comparisons:
        return [f"These are means and spreads over {_over(results)}, not significance tests."]
    return [_significance_sentence(cond, ref, comparison) for cond, ref, comparison in comparisons]


def _steps_sentence(results: ExperimentResults) -> list[str]:
    """Equal epochs on more clips means more optimizer steps, and an undertrained baseline
    gains from extra steps whatever the extra clips contain: report the matched-steps
    control when the run has one, else say how many more steps the augmented SERs took."""
    control = results.gains_over_matched.get(CONTROL_MATCHES, {}).get(UA)
    if control is not None:
        matched = _ua_gain(results, CONTROL)
        text = f"The real-only control, trained for as many optimizer steps as {_label(CONTROL_MATCHES)}"
        if matched is not None:
            text += f", changed UA by {_signed(matched.mean * 100)} points over real"
        text += f"; {_label(CONTROL_MATCHES)} changes UA by {_signed(control.mean * 100)} points over that control"
        if len(control.values) > 1:
            text += f" ({_per_run(results)} {', '.join(_signed(v * 100) for v in control.values)})"
        return [text + ", which is what the generated clips add beyond the extra steps."]
    base = [r.n_train for r in _runs(results, REAL) if r.n_train]
    more = [r.n_train for c, runs in results.runs.items() if c != REAL for r in runs if r.n_train]
    if not base or not more or max(more) <= max(base):
        return []
    ratio = max(more) / max(base)
    return [
        f"Every SER trains for the same number of epochs, so the augmented ones take up to {ratio:.2f}x the "
        "baseline's optimizer steps; part of a gain can come from the extra steps rather than from what the "
        "generated clips contain (compare the clarity per emotion of the kept clips)."
    ]


def _ser_section(results: ExperimentResults) -> list[Block]:
    headers, rows = _results_rows(results)
    folds = _n_folds(results) is not None
    scope = ("Mean ± std over seeds, in percent, on the held-out test speakers." if not folds else
             "Mean ± std over fold × seed runs, in percent, each run scored on its fold's held-out test speakers; "
             "the linear probe's ± is over folds.")
    blocks: list[Block] = [
        Heading("Speech-emotion recognition"),
        Para(f"{scope} WA = overall accuracy, UA = mean per-class recall, ΔUA in points."),
        Table(headers, rows),
    ]
    comparisons = _comparisons(results)
    if comparisons:
        paired_by, averaged = ("seed", "over seeds") if not folds else ("fold and seed", "over the seeds of its fold")
        blocks += [
            Heading("Paired comparisons", 3),
            Para(f"UA difference in points, paired by {paired_by}: mean, 95 % confidence interval from the paired t "
                 "distribution, two-sided p-values of the paired t-test and the Wilcoxon signed-rank test; and the "
                 f"per-speaker UA difference (averaged {averaged}) with a percentile bootstrap interval over the "
                 "held-out speakers. n/a: too few pairs or speakers for the statistic."),
            Table(["comparison", "ΔUA", "95 % CI", "paired t p", "Wilcoxon p", "n pairs", "ΔUA per speaker",
                   "bootstrap 95 % CI", "n speakers"], [_comparison_row(*c) for c in comparisons]),
        ]
    per_speaker = _per_speaker(results)
    if per_speaker:
        speakers = sorted({s for values in per_speaker.values() for s in values})
        blocks += [
            Heading("UA per held-out speaker (%)", 3),
            Table(["speaker", *(_label(c) for c in per_speaker)],
                  [[speaker, *(_pct(values.get(speaker)) for values in per_speaker.values())] for speaker in speakers]),
        ]
    per_run = _per_run_table(results)
    if per_run is not None:
        blocks += [Heading("Per seed" if per_run.headers[0] == "seed" else "Per fold and seed", 3), per_run]
    return blocks


def _comparison_row(condition: str, reference: str, comparison: Comparison) -> list[Cell]:
    paired, speakers = comparison.paired, comparison.speakers
    return [
        f"{_label(condition)} vs {_label(reference)}",
        NA if paired.mean is None else _signed(paired.mean * 100),
        _interval(paired.ci_low, paired.ci_high),
        _p_value(paired.t_p),
        _p_value(paired.wilcoxon_p),
        str(paired.n),
        NA if speakers is None or speakers.mean is None else _signed(speakers.mean * 100),
        NA if speakers is None else _interval(speakers.ci_low, speakers.ci_high),
        NA if speakers is None else str(speakers.n),
    ]


def _relative_to_judge(clarity: float, judge_ua: float) -> str:
    """Where a clarity lies between chance and the judge's own UA, compared at the one
    decimal shown, so the words never contradict the numbers beside them."""
    shown_clarity, shown_ua, shown_chance = (round(x * 100, 1) for x in (clarity, judge_ua, CHANCE))
    if shown_clarity < shown_chance:
        return "below chance"
    if shown_clarity == shown_chance:
        return "at chance"
    if shown_clarity >= shown_ua:
        return "at or above its own UA"
    return "between chance and its own UA"


def _judge_sentences(results: ExperimentResults) -> list[str]:
    """Clarity is relative to its judge: a judge near chance on real speech cannot tell the
    emotion of generated speech either. Names each judge's UA on real held-out clips, its
    clarity of every generator's clips, and chance."""
    chance = f"{CHANCE * 100:.1f}% with {len(EMOTIONS)} emotions"
    real, probe = _metric_stat(results, REAL, UA), results.probe
    if not _has_judged(results):  # before judges: the filter is the only one
        if real is None:
            return []
        text = (f"Clarity is only meaningful relative to the judge's own UA and to chance: the judge (each seed's "
                f"real-trained SER) scores UA {real.mean * 100:.1f}% on the real held-out clips")
        if probe is not None:
            text += f"; the linear probe {probe.metrics.unweighted_accuracy * 100:.1f}%"
        return [text + f"; chance is {chance}."]
    generated = _in_generator_order(results.generated)
    sentences = [
        f"Clarity is only meaningful relative to the judge's own UA on the real held-out clips and to chance "
        f"({chance}): clarity near chance says the judge cannot tell the requested emotion, clarity near the "
        "judge's own UA says the clips are about as recognisable to it as real ones."
    ]
    judges = [*JUDGES, *sorted({k for g in generated.values() for k in g.judged} - set(JUDGES))]
    for judge in judges:
        by_generator = {gen: g.judged[judge] for gen, g in generated.items() if judge in g.judged}
        if not by_generator:
            continue
        judge_ua = next(iter(by_generator.values())).judge_ua.mean  # the same judges scored every generator
        parts = [f"{j.all.mean * 100:.1f}% of the {_label(gen)} clips ({_relative_to_judge(j.all.mean, judge_ua)})"
                 for gen, j in by_generator.items()]
        name = "SER judge" if judge == SER_JUDGE else _JUDGE_LABELS.get(judge, judge)
        sentences.append(f"The {name} scores UA {judge_ua * 100:.1f}% on the real held-out clips "
                         f"({_signed((judge_ua - CHANCE) * 100)} points from chance) and classifies "
                         f"{' and '.join(parts)} as the requested emotion.")
    if real is not None:
        parts = [f"{g.clarity.mean * 100:.1f}% of the {_label(gen)} clips" for gen, g in generated.items()]
        sentences.append(f"The filter (UA {real.mean * 100:.1f}%) classifies {' and '.join(parts)} as requested; it "
                         "chose the kept clips, so its clarity of those is high by construction and is not evidence.")
    return sentences


def _quality_section(results: ExperimentResults) -> list[Block]:
    judged = _has_judged(results)
    rows = _quality_rows(results, with_clarity=not judged)
    if not rows:
        return []
    over = _over_sets(results)
    if judged:
        blocks: list[Block] = [
            Heading("Generated data quality"),
            Para(f"FID and IS are computed on the filter's embeddings and probabilities ({_filter_who(results)}, "
                 f"which also chose the kept clips); mean ± std over {over}; clip counts are per set."),
            Table(["generator", "FID", "IS", "n clips", "kept after filtering"], rows),
            Heading("Clarity by judge", 3),
            Para(f"Clarity = share (%) of generated clips a judge classifies as the requested emotion, of all clips "
                 f"and of the clips kept after filtering; mean ± std over {over}. Judge's UA = its own UA (%) on the "
                 f"real held-out clips: over {_over(results)} for the filter, over folds for the others."),
            Table(["generator", "judge", "clarity, all clips", "clarity, kept clips", "judge's UA on real held-out clips",
                   "chance"], _clarity_by_judge_rows(results)),
        ]
    else:
        blocks = [
            Heading("Generated data quality"),
            Para(
                "Clarity = accuracy (%) of the real-trained SER on generated clips against the requested emotion; "
                "FID and IS are computed on that SER's embeddings and probabilities; mean ± std over seeds."
            ),
            Table(["generator", "clarity", "FID", "IS", "n clips", "kept after filtering"], rows),
        ]
    judge_sentences = _judge_sentences(results)
    if judge_sentences:
        blocks.append(Para(" ".join(judge_sentences)))
    generated = _in_generator_order(results.generated)
    reference = next((g.real_fid_reference for g in generated.values() if g.real_fid_reference is not None), None)
    if reference is not None:
        blocks.append(Para(f"For scale: FID of held-out real clips against training real clips is {reference:.1f}."))
    fid = results.generated[DIFFUSION].fid if DIFFUSION in results.generated else None
    if fid is not None and fid.n_real is not None and fid.n_generated is not None:
        # FID is biased upward for small sets: the counts say how comparable values are
        # with folds the counts are the first set's: the folds' test sets differ a little in size
        whose = "" if _n_folds(results) is None else " (the first fold and seed's)"
        blocks.append(Para(f"FID sample sizes{whose}: {fid.n_real} held-out real clips vs {fid.n_generated} generated "
                           f"clips {_per_run(results)}."))
    per_emotion = _clarity_per_emotion_table(results)
    if per_emotion is not None:
        title, table = per_emotion
        blocks += [Heading(title, 3), table]
    return blocks + _realism_blocks(results)


def _realism_blocks(results: ExperimentResults) -> list[Block]:
    """Does it look like speech: the two-sample test and near-silent frames beside their targets."""
    realism = {gen: g.realism for gen, g in _in_generator_order(results.generated).items() if g.realism is not None}
    if not realism:
        return []
    rows: list[list[Cell]] = []
    for gen, r in realism.items():
        target = TWO_SAMPLE_TARGETS.get(gen)
        met = r.two_sample_met(gen)
        rows.append([
            _label(gen), _mean_std(r.two_sample_accuracy, digits=2),
            NA if r.real_two_sample_accuracy is None else f"{r.real_two_sample_accuracy:.2f}",
            NA if target is None else f"≤ {target:.2f} ({'met' if met else 'not met'})", str(r.n_per_side),
            _mean_std(r.silent_frames, scale=100), _pct(r.real_silent_frames),
            f"within {SILENT_FRAMES_TOLERANCE * 100:.0f} points ({'met' if r.silent_frames_met else 'not met'})",
        ])
    return [
        Heading("Realism", 3),
        Para(f"Two-sample accuracy: how well a logistic regression on 8 × 8-pooled mels tells generated clips from the "
             f"fold's held-out real ones (5-fold cross-validated, equal numbers per side): 0.50 = indistinguishable, "
             f"1.00 = every clip told apart. The test tells speakers apart too: the real reference is the same test "
             f"between the held-out clips and the fold's training clips (other speakers), the best a generator of the "
             f"training speakers can expect. Near-silent frames: share (%) of frames whose loudest band is below "
             f"{AudioConfig().silent_frame_db:.0f} dB (pauses and the silence around an utterance). Mean ± std over "
             f"{_over_sets(results)}."),
        Table(["generator", "two-sample accuracy", "real vs real", "target", "clips per side", "near-silent frames", "real clips'",
               "target"], rows),
    ]


def _generators_section(results: ExperimentResults) -> list[Block]:
    rows: list[list[Cell]] = []
    for name, gen in _in_generator_order(results.generators).items():
        label = _label(name) + (f" ({gen.space} space)" if gen.space else "")
        rows.append([label, _count(gen.epochs), _final_val_metrics(gen), _duration(gen.seconds), gen.checkpoint or NA])
    if not rows:
        return []
    return [Heading("Generator training"), Table(["generator", "epochs", "final validation metrics", "time", "checkpoint"], rows)]


def _data_section(results: ExperimentResults) -> list[Block]:
    data = results.data
    blocks: list[Block] = []
    if data is not None:
        blocks.append(Heading("Data"))
        if data.features:
            blocks.append(Para(f"Features: {data.features}"))
        if data.folds:
            blocks += _folds_blocks(results)
        elif data.test_speakers:
            blocks.append(Para("Test speakers (held out of every training set): " + ", ".join(data.test_speakers)))
        splits, classes = data.split_counts, data.class_counts
        columns = list(dict.fromkeys([*splits, *classes]))
        if columns:
            rows: list[list[Cell]] = []
            emotions = [e for e in EMOTIONS if any(e in classes.get(c, {}) for c in columns)]
            for emotion in emotions:
                rows.append([emotion, *(_count(classes.get(c, {}).get(emotion)) for c in columns)])
            rows.append(["all", *(_count(splits.get(c)) for c in columns)])
            if data.folds:
                blocks.append(Para("Clips per emotion, each counted once (in the test set of the fold that holds out "
                                   "its speaker):"))
            blocks.append(Table(["emotion", *columns], rows))
    if results.config:
        blocks += [Heading("Configuration"), Table(["setting", "value"], [[k, v] for k, v in _flatten(results.config)])]
    return blocks


def _folds_blocks(results: ExperimentResults) -> list[Block]:
    """The speaker folds: who each fold tests and validates on, and its clip counts. The
    data section's per-emotion table counts every clip once, in the fold that tests it."""
    folds = sorted(results.data.folds, key=lambda f: f.fold) if results.data else []
    speakers = _tested_speakers(results)
    rows: list[list[Cell]] = [
        [str(f.fold), ", ".join(f.test_speakers) or NA, ", ".join(f.val_speakers) or NA,
         *(_count(f.split_counts.get(split)) for split in ("train", "val", "test"))]
        for f in folds
    ]
    return [
        Para(f"Speaker folds: every speaker is tested once ({_plural(len(speakers), 'speaker')} over "
             f"{_plural(len(folds), 'fold')}), by the SERs of the fold that holds it out; a fold neither trains nor "
             "validates on its test speakers. Clip counts per fold:"),
        Table(["fold", "test speakers", "validation speakers", "train clips", "val clips", "test clips"], rows),
    ]


def _timing_section(results: ExperimentResults) -> list[Block]:
    stages = [(k, v) for k, v in results.seconds.items() if k != "total" and math.isfinite(v)]
    total = results.seconds.get("total")
    # the caller measures the total; summing stages is a fallback, labelled as such
    total_label = "total"
    if total is None and stages:
        total, total_label = sum(v for _, v in stages), "total (sum of stages)"
    if not stages and total is None:
        return []
    rows: list[list[Cell]] = [
        [stage, f"{s:.1f}", _duration(s), f"{100 * s / total:.0f}%" if total else NA] for stage, s in stages
    ]
    rows.append([total_label, f"{total:.1f}", _duration(total), "100%" if total else NA])
    return [Heading("Time per stage"), Table(["stage", "seconds", "time", "share"], rows)]


def _plots_section(plots: list[Plot], notes: list[str]) -> list[Block]:
    if not plots and not notes:
        return []
    return [Heading("Plots"), *plots, *(Para(n) for n in notes)]


def _resolve(out_dir: Path, path: str) -> tuple[Path, str]:
    """(absolute path, link relative to the report) for a path from results.json."""
    p = Path(path)
    full = p if p.is_absolute() else out_dir / p
    try:
        rel = full.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        rel = full.as_posix()
    return full, rel


def _samples_section(results: ExperimentResults, out_dir: Path) -> list[Block]:
    rows: list[list[Cell]] = []
    for clip in results.samples.wavs if results.samples else []:
        full, rel = _resolve(out_dir, clip.path)
        cell: Cell
        if full.suffix.lower() not in _AUDIO_MIME:
            # only audio is inlined: a stray path must not pull any other file into the page
            cell = f"not an audio file: {rel}"
        elif not full.is_file():
            cell = f"missing: {rel}"
        else:
            cell = AudioClip(rel, full)
        rows.append([_label(clip.source), clip.emotion, cell])
    if not rows:
        return []
    return [
        Heading("Audio samples"),
        Para("Generated mels are turned into audio with Griffin-Lim, so some phasiness is expected in generated clips."),
        Table(["source", "emotion", "listen"], rows),
    ]


def _attention_section(results: ExperimentResults, out_dir: Path) -> list[Block]:
    """The diffusion U-Net's attention while generating one clip per emotion (emogen.inference.attention)."""
    blocks: list[Block] = []
    for emotion, path in (results.samples.attention if results.samples else {}).items():
        full, rel = _resolve(out_dir, path)
        if full.suffix.lower() == ".png" and full.is_file():  # only PNGs are inlined, as only audio is above
            caption = (f"Top: a generated {emotion} clip's mel. Below: per denoising step (rows) and attention block "
                       "(columns), the attention each time-frequency position receives, in multiples of uniform "
                       "attention (1 = no preference).")
            blocks.append(Plot(f"Diffusion attention: {emotion}", caption, rel, full))
    return [Heading("Diffusion attention"), *blocks] if blocks else []


def _reproduce_section(results: ExperimentResults) -> list[Block]:
    blocks: list[Block] = []
    if results.command:
        blocks += [Heading("Reproduce"), Code(results.command)]
    mlflow = results.mlflow
    if mlflow is not None:
        rows: list[list[Cell]] = [
            ["tracking URI", mlflow.tracking_uri or NA],
            ["experiment id", mlflow.experiment_id or NA],
            ["parent run id", mlflow.parent_run_id or NA],
        ]
        blocks += [Heading("MLflow"), Table(["field", "value"], rows)]
    return blocks


# --------------------------------------------------------------------------- plots
# The object-oriented Figure API with an explicit Agg canvas: no pyplot, so no global
# backend switch in the caller's process and no figure registry to leak into.


def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    fig.clear()  # frees the artists now rather than at garbage collection
    return path


def _color(name: str, index: int) -> str:
    from matplotlib import colormaps

    return _COLORS.get(name) or colormaps["tab10"](index % 10)


def _plot_ser_scores(results: ExperimentResults, path: Path) -> Path | None:
    conds = [c for c in results.conditions if any(_metric_stat(results, c, m) for m, _ in SER_METRICS)]
    if not conds:
        return None
    fig = _figure((7.0, 4.0))
    ax = fig.subplots()
    width = 0.8 / len(conds)
    x = np.arange(len(SER_METRICS))
    for i, cond in enumerate(conds):
        stats = [_metric_stat(results, cond, m) for m, _ in SER_METRICS]
        means = [s.mean * 100 if s else 0.0 for s in stats]
        stds = [(s.std or 0.0) * 100 if s else 0.0 for s in stats]
        bars = ax.bar(x + (i - (len(conds) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=_label(cond), color=_color(cond, i))
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(x, [label for _, label in SER_METRICS])
    ax.set_ylabel("% on held-out speakers")
    ax.set_ylim(0, 105)
    ax.set_title(f"SER scores (mean ± std over {_over(results)})")
    # below the axes: inside, it would hide bars that sit anywhere from 0 to 100
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=len(conds), fontsize=8, frameon=False)
    return _save(fig, path)


def _plot_per_speaker(results: ExperimentResults, path: Path) -> Path | None:
    per_speaker = _per_speaker(results)
    if not per_speaker:
        return None
    speakers = sorted({s for values in per_speaker.values() for s in values})
    fig = _figure((max(4.8, 0.5 * len(speakers) + 3.0), 3.6))
    ax = fig.subplots()
    x = np.arange(len(speakers))
    for i, (name, values) in enumerate(per_speaker.items()):
        ys = [values[s] * 100 if s in values else np.nan for s in speakers]
        ax.plot(x, ys, marker="o", color=_color(name, i), linestyle="--" if name == PROBE else "-", label=_label(name))
    ax.set_xticks(x, speakers, rotation=45 if len(speakers) > 8 else 0)
    ax.set_xlabel("held-out speaker")
    ax.set_ylabel("UA (%)")
    ax.set_ylim(0, 105)
    ax.set_title("UA per held-out speaker (mean over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _summed_confusion(results: ExperimentResults, condition: str) -> tuple[np.ndarray, int] | None:
    mats = []
    for run in _runs(results, condition):
        m = np.asarray(run.metrics.confusion, dtype=np.float64)
        if m.ndim == 2 and m.shape[0] == m.shape[1] and m.size and (not mats or m.shape == mats[0].shape):
            mats.append(m)
    return (np.sum(mats, axis=0), len(mats)) if mats else None


def _plot_confusion(results: ExperimentResults, condition: str, path: Path) -> Path | None:
    summed = _summed_confusion(results, condition)
    if summed is None:
        return None
    counts, n_runs = summed
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = counts.shape[0]
    labels = list(EMOTIONS) if k == len(EMOTIONS) else [str(i) for i in range(k)]
    fig = _figure((5.6, 4.8))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{_label(condition)}: {_plural(n_runs, _run_noun(results))} summed", fontsize=10)
    fig.colorbar(im, ax=ax, label="share of true class")
    return _save(fig, path)


def _load_mels(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {key: np.asarray(z[key]) for key in z.files}


def _plot_mel_grid(mels: dict[str, np.ndarray], path: Path) -> tuple[Path, int, int]:
    """Returns (path, blank cells, total cells)."""
    found = {key.split("/", 1)[0] for key in mels if "/" in key}
    sources = [*MEL_SOURCES, *sorted(found - set(MEL_SOURCES))]
    fig = _figure((2.6 * len(sources) + 0.8, 1.45 * len(EMOTIONS) + 0.6))
    axes = fig.subplots(len(EMOTIONS), len(sources), squeeze=False)
    image, blank = None, 0
    for r, emotion in enumerate(EMOTIONS):
        for c, source in enumerate(sources):
            ax = axes[r, c]
            mel = mels.get(f"{source}/{emotion}")
            if mel is not None and mel.ndim == 2 and mel.size:
                image = ax.imshow(mel, origin="lower", aspect="auto", vmin=-1, vmax=1, cmap="magma", interpolation="nearest")
            else:
                blank += 1
                ax.text(0.5, 0.5, "no sample", ha="center", va="center", color="gray", fontsize=8, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(_label(source), fontsize=10)
            if c == 0:
                ax.set_ylabel(emotion, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.5, label="scaled log-mel")
    return _save(fig, path), blank, len(EMOTIONS) * len(sources)


def _history_series(history: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    points = [(entry.get("epoch", i + 1), entry[key]) for i, entry in enumerate(history) if key in entry]
    return [x for x, _ in points], [y for _, y in points]


def _plot_training_curves(results: ExperimentResults, path: Path) -> Path | None:
    from matplotlib.ticker import MaxNLocator

    ser_lines = []
    for i, cond in enumerate(results.conditions):
        for j, run in enumerate(_runs(results, cond)):
            xs, ys = _history_series(run.history, "val_uar")
            if xs:
                ser_lines.append((cond, i, j, xs, [y * 100 for y in ys]))
    gen_panels = []
    for name, gen in _in_generator_order(results.generators).items():
        series = [(key, *_history_series(gen.history, key)) for key in ("train_loss", "val_loss")]
        if any(xs for _, xs, _ in series):
            gen_panels.append((name, series))
    n_panels = bool(ser_lines) + len(gen_panels)
    if not n_panels:
        return None
    fig = _figure((4.6 * n_panels, 3.6))
    axes = list(fig.subplots(1, n_panels, squeeze=False)[0])
    if ser_lines:
        ax = axes.pop(0)
        labelled = set()
        for cond, i, j, xs, ys in ser_lines:
            label = None if cond in labelled else _label(cond)
            labelled.add(cond)
            ax.plot(xs, ys, color=_color(cond, i), linestyle=("-", "--", ":", "-.")[j % 4], marker=".", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation UA (%)")
        ax.set_title(f"SER (one line per {_run_noun(results)})", fontsize=10)
        ax.legend(fontsize=8)
    for ax, (name, series) in zip(axes, gen_panels):
        for key, xs, ys in series:
            if xs:
                ax.plot(xs, ys, marker=".", label=key.replace("_", " "))
        ys_all = [y for _, _, ys in series for y in ys]
        # VAE losses fall by orders of magnitude in the first epochs; a log axis keeps the tail readable
        if min(ys_all) > 0 and max(ys_all) / min(ys_all) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax.set_title(f"{_label(name)} loss", fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_clarity(results: ExperimentResults, path: Path) -> Path | None:
    clarity = _reported_clarity(results)
    overall, per_emotion = list(clarity.overall.items()), clarity.per_emotion
    if not overall and not per_emotion:
        return None
    n_panels = bool(overall) + bool(per_emotion)
    fig = _figure((3.2 + 4.8 * bool(per_emotion), 3.6) if n_panels == 2 else (4.8, 3.6))
    axes = list(fig.subplots(1, n_panels, squeeze=False, width_ratios=[1, 2.2] if n_panels == 2 else None)[0])
    judge = "by the SER judge" if clarity.by_ser_judge else "by the filter"

    def references(ax, with_judge_ua: bool) -> None:
        # clarity means something only against chance and the judge's own UA on real clips (a
        # mean over emotions, so it is no reference for one emotion's clarity)
        ax.axhline(CHANCE * 100, color="gray", linestyle=":", linewidth=1)
        if with_judge_ua and clarity.judge_ua is not None:
            ax.axhline(clarity.judge_ua.mean * 100, color="#222222", linestyle="--", linewidth=1)

    if overall:
        ax = axes.pop(0)
        colors = [_color(g, i) for i, (g, _) in enumerate(overall)]
        bars = ax.bar(
            [_label(g) for g, _ in overall],
            [s.mean * 100 for _, s in overall],
            yerr=[(s.std or 0.0) * 100 for _, s in overall],
            capsize=4,
            color=colors,
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
        references(ax, with_judge_ua=True)
        ax.set_ylim(0, 105)
        ax.set_ylabel("clarity (%)")
        ax.set_title(f"all clips {judge} (mean ± std)", fontsize=10)
    if per_emotion:
        ax = axes.pop(0)
        gens = list(per_emotion)
        emotions = [e for e in EMOTIONS if any(e in per_emotion[g] for g in gens)]
        x = np.arange(len(emotions))
        width = 0.8 / len(gens)
        for i, gen in enumerate(gens):
            ys = [per_emotion[gen].get(e, 0.0) * 100 for e in emotions]
            ax.bar(x + (i - (len(gens) - 1) / 2) * width, ys, width, label=_label(gen), color=_color(gen, i))
        references(ax, with_judge_ua=False)
        ax.set_xticks(x, emotions, rotation=30, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel("clarity (%)")
        ax.set_title(f"per emotion {judge}", fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _clarity_caption(results: ExperimentResults) -> str:
    lines = "dotted line: chance; dashed line (overall): the judge's own UA on the real held-out clips."
    if _reported_clarity(results).by_ser_judge:
        return ("Clarity by the SER judge (an SER trained on each fold's real training and validation clips with its "
                "own seed, which chose no clips): share of all generated clips it classifies as the requested emotion, "
                f"overall (mean ± std over {_over_sets(results)}) and per emotion; {lines}")
    return ("Accuracy of the real-trained SER on generated clips against the requested emotion: overall (mean ± std "
            f"over {_over_sets(results)}) and per emotion; {lines}")


def _mel_grid(results: ExperimentResults, out_dir: Path, path: Path) -> tuple[Plot | None, str | None]:
    mel_rel = results.samples.mels if results.samples else None
    if not mel_rel:
        return None, "Mel grid skipped: the results name no mel samples file."
    mel_path, rel = _resolve(out_dir, mel_rel)
    if not mel_path.is_file():
        return None, f"Mel grid skipped: {rel} not found."
    try:
        mels = _load_mels(mel_path)
    except (OSError, ValueError):  # a truncated or foreign file must not sink the report
        return None, f"Mel grid skipped: {rel} is not a readable .npz file."
    path, blank, cells = _plot_mel_grid(mels, path)
    caption = "Scaled log-mel spectrograms (low frequencies at the bottom), one example per emotion (rows) and source (columns)."
    if blank:
        caption += f" Blank cells (no sample): {blank} of {cells}."
    return Plot("Mel spectrograms", caption, path.relative_to(out_dir).as_posix(), path), None


def _make_plots(results: ExperimentResults, out_dir: Path) -> tuple[list[Plot], list[str]]:
    """Every plot the data allows, plus a note for each one that had to be skipped."""
    plot_dir = out_dir / "plots"
    plots: list[Plot] = []
    notes: list[str] = []

    def add(path: Path | None, title: str, caption: str, missing: str) -> None:
        if path is None:
            notes.append(missing)
        else:
            plots.append(Plot(title, caption, path.relative_to(out_dir).as_posix(), path))

    add(
        _plot_ser_scores(results, plot_dir / "ser_scores.png"),
        "SER scores",
        f"WA, UA and macro F1 per condition on the held-out test speakers; bars are means over {_over(results)}, "
        "error bars their std.",
        "SER scores plot skipped: no SER metrics in the results.",
    )
    for cond in results.conditions:
        add(
            _plot_confusion(results, cond, plot_dir / f"confusion_{_slug(cond)}.png"),
            f"Confusion matrix: {_label(cond)}",
            f"Test-set confusion of {_label(cond)}, summed over {_over(results)}: colour is the share of the true class "
            "(rows sum to 1), numbers are clip counts.",
            f"Confusion matrix of {_label(cond)} skipped: no confusion matrix in its runs.",
        )
    add(
        _plot_per_speaker(results, plot_dir / "per_speaker_ua.png"),
        "UA per held-out speaker",
        "UA of each held-out speaker's clips, one line per condition (mean over seeds), the linear probe dashed: "
        "how much of a difference between conditions is one speaker.",
        "Per-speaker plot skipped: no per-speaker UA in the results.",
    )
    mel_plot, mel_note = _mel_grid(results, out_dir, plot_dir / "mel_grid.png")
    if mel_plot is not None:
        plots.append(mel_plot)
    if mel_note:
        notes.append(mel_note)
    add(
        _plot_training_curves(results, plot_dir / "training_curves.png"),
        "Training curves",
        f"SER validation UA per epoch (colour = condition, one line per {_run_noun(results)}) and the generators' "
        "train/validation loss per epoch.",
        "Training curves skipped: no training history in the results.",
    )
    add(
        _plot_clarity(results, plot_dir / "clarity.png"),
        "Emotional clarity",
        _clarity_caption(results),
        "Clarity plot skipped: no clarity in the results.",
    )
    return plots, notes


# --------------------------------------------------------------------------- rendering


def _md_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, AudioClip):
        return f"[{_md_text(cell.rel)}]({quote(cell.rel)})"
    return _md_text(str(cell))


def _md_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(_md_text(h) for h in table.headers) + " |",
        "|" + "|".join("---" for _ in table.headers) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _render_md(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Para):
            parts.append(block.text)
        elif isinstance(block, Table):
            parts.append(_md_table(block))
        elif isinstance(block, Code):
            parts.append("```bash\n" + block.text + "\n```")
        elif isinstance(block, Plot):
            parts.append(f"![{block.title}]({quote(block.rel)})\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: middle; }
th { background: #f3f3f3; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
audio { height: 2em; vertical-align: middle; }
"""


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_cell(cell: Cell) -> str:
    esc = html.escape
    if isinstance(cell, AudioClip):
        mime = _AUDIO_MIME.get(cell.path.suffix.lower(), "audio/wav")
        return (
            f'<audio controls src="{_data_uri(cell.path, mime)}"></audio> '
            f'<a href="{esc(quote(cell.rel))}">{esc(cell.rel)}</a>'
        )
    return esc(str(cell))


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>\n" for row in table.rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _render_html(blocks: list[Block], title: str) -> str:
    esc = html.escape
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            parts.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(_html_table(block))
        elif isinstance(block, Code):
            parts.append(f"<pre><code>{esc(block.text)}</code></pre>")
        elif isinstance(block, Plot):
            parts.append(
                f'<figure><img src="{_data_uri(block.path, "image/png")}" alt="{esc(block.title)}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"
            )
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- entry point


def write_report(results: ExperimentResults | Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write report.md, report.html and plots/ (PNG) into out_dir; returns {"md":..., "html":..., "plots": {name: path}}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = as_results(results)
    plots, notes = _make_plots(results, out_dir)
    blocks: list[Block] = [
        *_title_section(results),
        *_findings_section(results),
        *_ser_section(results),
        *_quality_section(results),
        *_generators_section(results),
        *_timing_section(results),
        *_plots_section(plots, notes),
        *_samples_section(results, out_dir),
        *_attention_section(results, out_dir),
        *_reproduce_section(results),
        *_data_section(results),
    ]
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text(_render_md(blocks), encoding="utf-8")
    title = f"EmoGen experiment: {results.name or 'unnamed'}"
    html_path.write_text(_render_html(blocks, title), encoding="utf-8")
    return {"md": md_path, "html": html_path, "plots": {p.path.stem: p.path for p in plots}}
