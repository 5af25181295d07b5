"""The experiment report: does generated speech improve speech-emotion recognition?

`write_report(results, out_dir)` turns an experiment's `results.json` dict (written by
`emogen.experiment`) and the sample files beside it into:

- `report.md`: readable as text, with plots and WAVs linked by relative path;
- `report.html`: the same content, self-contained (no external CSS, JS or fonts): plots
  embedded as base64 PNG, WAVs embedded as `<audio>` data URIs and also linked;
- `plots/`: the PNGs.

Sections, in order: title (name, preset, date, total time); "What this run shows", a
paragraph generated from the numbers (UA gains in points, whether the two targets are met,
seeds and test size, never a significance claim); the SER table (`results_table`, also
printed by the CLI) and the per-seed table; generated-data quality (clarity, FID, IS, clip
counts); generator training; data and configuration; time per stage; plots (SER scores,
one confusion matrix per condition, mel grid, training curves, clarity); audio samples;
how to reproduce; MLflow.

Every key of `results` except the SER runs is optional: a missing section is skipped or
shown as "n/a", never a crash, because a partial experiment still deserves a report.
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
from typing import Any, NamedTuple, Union
from urllib.parse import quote

import numpy as np

from emogen.config import EMOTIONS

DEFAULT_CONDITIONS: tuple[str, ...] = ("real", "real+vae", "real+diffusion")
GENERATORS: tuple[str, ...] = ("vae", "diffusion")
MEL_SOURCES: tuple[str, ...] = ("real", "vae", "diffusion")
SER_METRICS: tuple[tuple[str, str], ...] = (
    ("weighted_accuracy", "WA"),
    ("unweighted_accuracy", "UA"),
    ("macro_f1", "macro F1"),
)
_LABELS = {"real": "real", "real-matched": "real, matched steps", "real+vae": "real+VAE", "real+diffusion": "real+diffusion", "vae": "VAE", "diffusion": "diffusion"}
_COLORS = {"real": "#4C72B0", "real-matched": "#8C8C8C", "real+vae": "#DD8452", "real+diffusion": "#55A868", "vae": "#DD8452", "diffusion": "#55A868"}
_MINUS = "\u2212"  # a typographic minus lines up with "+" in tables
NA = "n/a"
_AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}


# --------------------------------------------------------------------------- numbers


class Stat(NamedTuple):
    mean: float
    std: float | None
    n: int
    values: tuple[float, ...] = ()


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _num(x: Any) -> float | None:
    # bool is an int subclass; a True where a number belongs is a producer bug, not 1.0
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _stat_from_values(values: list[float]) -> Stat | None:
    vals = [v for v in (_num(x) for x in values) if v is not None]
    if not vals:
        return None
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0  # sample std, as emogen.metrics
    return Stat(float(np.mean(vals)), std, len(vals), tuple(vals))


def _stat_from_dict(d: Any, n_default: int = 0) -> Stat | None:
    """{"mean", "std", "values"} as written by the experiment; a bare number is accepted too."""
    if _num(d) is not None:
        return Stat(float(d), None, 1, (float(d),))
    mean = _num(_get(d, "mean"))
    if mean is None:
        return _stat_from_values(_get(d, "values", default=[]) or [])
    values = tuple(v for v in (_num(x) for x in (_get(d, "values", default=[]) or [])) if v is not None)
    return Stat(mean, _num(_get(d, "std")), len(values) or n_default, values)


def _conditions(results: dict) -> list[str]:
    conds = results.get("conditions")
    return list(conds) if isinstance(conds, list) and conds else list(DEFAULT_CONDITIONS)


def _runs(results: dict, condition: str) -> list[dict]:
    runs = _get(results, "runs", condition, default=[])
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def _metric_stat(results: dict, condition: str, metric: str) -> Stat | None:
    """Mean/std over seeds: the experiment's summary when present, else recomputed from runs."""
    n_runs = len(_runs(results, condition))
    stat = _stat_from_dict(_get(results, "summary", condition, metric), n_default=n_runs)
    if stat is not None:
        return stat
    return _stat_from_values([_get(r, "metrics", metric) for r in _runs(results, condition)])


def _ua_gain(results: dict, condition: str) -> Stat | None:
    """UA of `condition` minus UA of real, as a fraction: per-seed (paired) when possible."""
    stat = _stat_from_dict(_get(results, "gains", condition, "unweighted_accuracy"))
    if stat is not None:
        return stat
    base = {r.get("seed"): _num(_get(r, "metrics", "unweighted_accuracy")) for r in _runs(results, "real")}
    paired = []
    for run in _runs(results, condition):
        ua, ref = _num(_get(run, "metrics", "unweighted_accuracy")), base.get(run.get("seed"))
        if ua is not None and ref is not None:
            paired.append(ua - ref)
    if paired:
        return _stat_from_values(paired)
    real, cond = _metric_stat(results, "real", "unweighted_accuracy"), _metric_stat(results, condition, "unweighted_accuracy")
    if real is None or cond is None:
        return None
    return Stat(cond.mean - real.mean, None, min(real.n, cond.n))


# --------------------------------------------------------------------------- formatting


def _label(name: str) -> str:
    return _LABELS.get(name, name)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "unnamed"


def _pct(x: Any) -> str:
    v = _num(x)
    return NA if v is None else f"{v * 100:.1f}"


def _mean_std(stat: Stat | None, scale: float = 1.0, digits: int = 1) -> str:
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


def _count(x: Any) -> str:
    v = _num(x)
    return NA if v is None else f"{v:,.0f}"


def _duration(seconds: Any) -> str:
    s = _num(seconds)
    if s is None:
        return NA
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60)):02d} s"
    return f"{int(s // 3600)} h {int(round(s % 3600 / 60)):02d} min"


def _date(created: Any) -> str:
    if not isinstance(created, str) or not created:
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


def _results_rows(results: dict) -> tuple[list[str], list[list[Cell]]]:
    headers = ["condition", *(label for _, label in SER_METRICS), "ΔUA vs real", "n seeds"]
    rows: list[list[Cell]] = []
    for cond in _conditions(results):
        stats = [_metric_stat(results, cond, metric) for metric, _ in SER_METRICS]
        if cond == "real":
            delta = "—"
        else:
            gain = _ua_gain(results, cond)
            delta = NA if gain is None else _signed(gain.mean * 100)
        n = max((s.n for s in stats if s is not None), default=0) or len(_runs(results, cond))
        rows.append([_label(cond), *(_mean_std(s, scale=100) for s in stats), delta, str(n) if n else NA])
    return headers, rows


def results_table(results: dict) -> str:
    """The headline markdown table (also printed by the CLI): rows real, real+VAE,
    real+diffusion; columns WA, UA, macro F1 as 'mean ± std' in percent with 1 decimal
    (e.g. '61.4 ± 2.1'), 'ΔUA vs real' in points ('+3.2' / '−1.0', '—' for real), n seeds."""
    headers, rows = _results_rows(results)
    return _md_table(Table(headers, rows))


def _seed_order(run: dict) -> float:
    seed = _num(run.get("seed"))
    return math.inf if seed is None else seed


def _per_seed_rows(results: dict) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for cond in _conditions(results):
        for run in sorted(_runs(results, cond), key=_seed_order):
            metrics = [_pct(_get(run, "metrics", m)) for m, _ in SER_METRICS]
            rows.append([str(run.get("seed", NA)), _label(cond), *metrics, _count(run.get("n_train")), _count(run.get("n_generated")),
                         _count(run.get("epochs")), _count(run.get("train_steps"))])
    return rows


def _quality_rows(results: dict) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for gen in _generator_names(results, "generated"):
        g = _get(results, "generated", gen, default={})
        rows.append(
            [
                _label(gen),
                _mean_std(_stat_from_dict(g.get("clarity")), scale=100),
                _mean_std(_stat_from_dict(g.get("fid")), digits=1),
                _mean_std(_stat_from_dict(g.get("inception_score")), digits=2),
                _count(g.get("n_clips")),
                _count(g.get("n_kept")),
            ]
        )
    return rows


def _generator_names(results: dict, key: str) -> list[str]:
    section = results.get(key)
    if not isinstance(section, dict):
        return []
    extra = sorted(k for k in section if k not in GENERATORS)
    return [g for g in (*GENERATORS, *extra) if isinstance(section.get(g), dict)]


def _clarity_per_emotion(results: dict) -> dict[str, dict[str, float]]:
    """{generator: {emotion: clarity}} for generators that report it."""
    out = {}
    for gen in _generator_names(results, "generated"):
        per = _get(results, "generated", gen, "clarity_per_emotion")
        if isinstance(per, dict):
            # a plain number or a {"mean", "std", "values"} stat over seeds
            stats = {e: _stat_from_dict(x) for e, x in per.items()}
            vals = {e: s.mean for e, s in stats.items() if s is not None}
            if vals:
                out[gen] = vals
    return out


def _final_val_metrics(gen: dict) -> str:
    metrics = gen.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        history = gen.get("history")
        last = history[-1] if isinstance(history, list) and history and isinstance(history[-1], dict) else {}
        metrics = {k: v for k, v in last.items() if k.startswith("val_")}
    parts = [f"{k} {v:.4g}" for k, v in ((k, _num(v)) for k, v in metrics.items()) if v is not None]
    return ", ".join(parts) or NA


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


def _title_section(results: dict) -> list[Block]:
    name = str(results.get("name") or "unnamed")
    total = _get(results, "seconds", "total")
    meta = [
        f"Preset: {results.get('preset') or NA}",
        f"Date: {_date(results.get('created'))}",
        f"Total time: {_duration(total)}",
    ]
    return [Heading(f"EmoGen experiment: {name}", 1), Para(" · ".join(meta))]


def _scope_sentence(results: dict) -> str:
    seeds = results.get("seeds")
    n_seeds = len(seeds) if isinstance(seeds, list) and seeds else max((len(_runs(results, c)) for c in _conditions(results)), default=0)
    n_clips = _num(_get(results, "data", "split_counts", "test"))
    if n_clips is None:
        n_clips = next((_num(_get(r, "metrics", "count")) for c in _conditions(results) for r in _runs(results, c)), None)
    speakers = _get(results, "data", "test_speakers")
    seeds_text = f"Each condition was run with {_plural(n_seeds, 'seed')}" if n_seeds else "The number of seeds is unknown"
    clips_text = f"{_plural(int(n_clips), 'real test clip')}" if n_clips is not None else "real test clips"
    if isinstance(speakers, list) and speakers:
        clips_text += f" from {_plural(len(speakers), 'held-out speaker')}"
    return f"{seeds_text}; every SER is tested on {clips_text}."


def _gain_sentences(results: dict, threshold: float) -> list[str]:
    sentences = []
    real = _metric_stat(results, "real", "unweighted_accuracy")
    for cond, what in (("real+diffusion", "diffusion-generated"), ("real+vae", "VAE-generated")):
        gain, stat = _ua_gain(results, cond), _metric_stat(results, cond, "unweighted_accuracy")
        if gain is None:
            sentences.append(f"There is no {_label(cond)} result to compare with real.")
            continue
        text = f"Adding {what} clips changed unweighted accuracy (UA) by {_gain_text(gain.mean * 100, threshold)} points"
        if real is not None and stat is not None:
            text += f" ({real.mean * 100:.1f}% → {stat.mean * 100:.1f}%)"
        if len(gain.values) > 1:
            text += "; per-seed gains " + ", ".join(_signed(v * 100) for v in gain.values)
        sentences.append(text + ".")
        if gain.std is not None and gain.n > 1 and abs(gain.mean) < gain.std:
            sentences.append(
                f"That change is smaller than its seed-to-seed spread ({gain.std * 100:.1f} points), so it may be noise."
            )
    return sentences


def _ua_target_sentence(results: dict, threshold: float) -> str:
    target = f"real+diffusion ≥ +{threshold:.1f} UA points over real"
    gain = _ua_gain(results, "real+diffusion")
    if gain is None:
        return f"The target {target} cannot be judged: the real or real+diffusion results are missing."
    points = gain.mean * 100
    if points >= threshold:
        return f"The target {target} is met ({_gain_text(points, threshold)} points)."
    return (
        f"The target {target} is not met: the gain is {_gain_text(points, threshold)} points, "
        f"{threshold - points:.1f} points short."
    )


def _clarity_target_sentence(results: dict) -> str:
    vae = _stat_from_dict(_get(results, "generated", "vae", "clarity"))
    diff = _stat_from_dict(_get(results, "generated", "diffusion", "clarity"))
    target = "diffusion clarity > VAE clarity"
    if vae is None or diff is None:
        return f"The target {target} cannot be judged: clarity was not measured for both generators."
    verdict = "met" if diff.mean > vae.mean else "not met"
    return (
        f"Emotional clarity (the real-trained SER's accuracy on generated clips against the requested emotion) "
        f"is {diff.mean * 100:.1f}% for diffusion and {vae.mean * 100:.1f}% for the VAE, "
        f"so the target {target} is {verdict}."
    )


def _findings_section(results: dict) -> list[Block]:
    threshold = _num(_get(results, "targets", "ua_gain_points"))
    threshold = 3.0 if threshold is None else threshold
    sentences = [
        _scope_sentence(results),
        *_gain_sentences(results, threshold),
        _ua_target_sentence(results, threshold),
        _clarity_target_sentence(results),
        *_steps_sentence(results),
        "These are means and spreads over seeds, not significance tests.",
    ]
    return [Heading("What this run shows"), Para(" ".join(sentences))]


def _steps_sentence(results: dict) -> list[str]:
    """Equal epochs on more clips means more optimizer steps, and an undertrained baseline
    gains from extra steps whatever the extra clips contain: report the matched-steps
    control when the run has one, else say how many more steps the augmented SERs took."""
    control = _stat_from_dict(_get(results, "gains_over_matched", "real+diffusion", "unweighted_accuracy"))
    if control is not None:
        matched = _ua_gain(results, "real-matched")
        text = "The real-only control, trained for as many optimizer steps as real+diffusion"
        if matched is not None:
            text += f", changed UA by {_signed(matched.mean * 100)} points over real"
        text += f"; real+diffusion changes UA by {_signed(control.mean * 100)} points over that control"
        if len(control.values) > 1:
            text += f" (per seed {', '.join(_signed(v * 100) for v in control.values)})"
        return [text + ", which is what the generated clips add beyond the extra steps."]
    runs = results.get("runs")
    if not isinstance(runs, dict):
        return []
    base = [_num(r.get("n_train")) for r in runs.get("real") or [] if isinstance(r, dict)]
    more = [_num(r.get("n_train")) for c, rs in runs.items() if c != "real" and isinstance(rs, list) for r in rs if isinstance(r, dict)]
    base, more = [b for b in base if b], [m for m in more if m]
    if not base or not more or max(more) <= max(base):
        return []
    ratio = max(more) / max(base)
    return [
        f"Every SER trains for the same number of epochs, so the augmented ones take up to {ratio:.2f}x the "
        "baseline's optimizer steps; part of a gain can come from the extra steps rather than from what the "
        "generated clips contain (compare the clarity per emotion of the kept clips)."
    ]


def _ser_section(results: dict) -> list[Block]:
    headers, rows = _results_rows(results)
    blocks: list[Block] = [
        Heading("Speech-emotion recognition"),
        Para(
            "Mean ± std over seeds, in percent, on the held-out test speakers. WA = overall accuracy, "
            "UA = mean per-class recall, ΔUA in points."
        ),
        Table(headers, rows),
    ]
    per_seed = _per_seed_rows(results)
    if per_seed:
        blocks += [
            Heading("Per seed", 3),
            Table(["seed", "condition", "WA", "UA", "macro F1", "n_train", "n_generated", "epochs", "steps"], per_seed),
        ]
    return blocks


def _quality_section(results: dict) -> list[Block]:
    rows = _quality_rows(results)
    if not rows:
        return []
    blocks: list[Block] = [
        Heading("Generated data quality"),
        Para(
            "Clarity = accuracy (%) of the real-trained SER on generated clips against the requested emotion; "
            "FID and IS are computed on that SER's embeddings and probabilities; mean ± std over seeds."
        ),
        Table(["generator", "clarity", "FID", "IS", "n clips", "kept after filtering"], rows),
    ]
    reference = _num(_get(results, "generated", "vae", "real_fid_reference"))
    if reference is None:
        reference = _num(_get(results, "generated", "diffusion", "real_fid_reference"))
    if reference is not None:
        blocks.append(Para(f"For scale: FID of held-out real clips against training real clips is {reference:.1f}."))
    fid = _get(results, "generated", "diffusion", "fid")
    if isinstance(fid, dict) and _num(fid.get("n_real")) is not None and _num(fid.get("n_generated")) is not None:
        # FID is biased upward for small sets: the counts say how comparable values are
        blocks.append(Para(f"FID sample sizes: {int(fid['n_real'])} held-out real clips vs {int(fid['n_generated'])} generated clips per seed."))
    per_emotion = _clarity_per_emotion(results)
    if per_emotion:
        gens = list(per_emotion)
        emotions = [e for e in EMOTIONS if any(e in per_emotion[g] for g in gens)]
        emotions += sorted({e for g in gens for e in per_emotion[g]} - set(emotions))
        rows_e: list[list[Cell]] = [[e, *(_pct(per_emotion[g].get(e)) for g in gens)] for e in emotions]
        blocks += [Heading("Clarity per emotion (%)", 3), Table(["emotion", *(_label(g) for g in gens)], rows_e)]
    return blocks


def _generators_section(results: dict) -> list[Block]:
    rows: list[list[Cell]] = []
    for name in _generator_names(results, "generators"):
        gen = results["generators"][name]
        label = _label(name) + (f" ({gen['space']} space)" if isinstance(gen.get("space"), str) else "")
        rows.append([label, _count(gen.get("epochs")), _final_val_metrics(gen), _duration(gen.get("seconds")), str(gen.get("checkpoint") or NA)])
    if not rows:
        return []
    return [Heading("Generator training"), Table(["generator", "epochs", "final validation metrics", "time", "checkpoint"], rows)]


def _data_section(results: dict) -> list[Block]:
    data, config = results.get("data"), results.get("config")
    blocks: list[Block] = []
    if isinstance(data, dict) and data:
        blocks.append(Heading("Data"))
        if isinstance(data.get("features"), str):
            blocks.append(Para(f"Features: {data['features']}"))
        speakers = data.get("test_speakers")
        if isinstance(speakers, list) and speakers:
            blocks.append(Para("Test speakers (held out of every training set): " + ", ".join(map(str, speakers))))
        splits = data.get("split_counts") if isinstance(data.get("split_counts"), dict) else {}
        classes = data.get("class_counts") if isinstance(data.get("class_counts"), dict) else {}
        columns = list(dict.fromkeys([*splits, *classes]))
        if columns:
            rows: list[list[Cell]] = []
            emotions = [e for e in EMOTIONS if any(isinstance(classes.get(c), dict) and e in classes[c] for c in columns)]
            for emotion in emotions:
                rows.append([emotion, *(_count(_get(classes, c, emotion)) for c in columns)])
            rows.append(["all", *(_count(splits.get(c)) for c in columns)])
            blocks.append(Table(["emotion", *columns], rows))
    if isinstance(config, dict) and config:
        blocks += [Heading("Configuration"), Table(["setting", "value"], [[k, v] for k, v in _flatten(config)])]
    return blocks


def _timing_section(results: dict) -> list[Block]:
    seconds = results.get("seconds")
    if not isinstance(seconds, dict):
        return []
    stages = [(k, _num(v)) for k, v in seconds.items() if k != "total" and _num(v) is not None]
    total = _num(seconds.get("total"))
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


def _samples_section(results: dict, out_dir: Path) -> list[Block]:
    wavs = _get(results, "samples", "wavs")
    if not isinstance(wavs, list) or not wavs:
        return []
    rows: list[list[Cell]] = []
    for item in wavs:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            continue
        full, rel = _resolve(out_dir, item["path"])
        cell: Cell
        if full.suffix.lower() not in _AUDIO_MIME:
            # only audio is inlined: a stray path must not pull any other file into the page
            cell = f"not an audio file: {rel}"
        elif not full.is_file():
            cell = f"missing: {rel}"
        else:
            cell = AudioClip(rel, full)
        rows.append([_label(str(item.get("source", NA))), str(item.get("emotion", NA)), cell])
    if not rows:
        return []
    return [
        Heading("Audio samples"),
        Para("Generated mels are turned into audio with Griffin-Lim, so some phasiness is expected in generated clips."),
        Table(["source", "emotion", "listen"], rows),
    ]


def _reproduce_section(results: dict) -> list[Block]:
    blocks: list[Block] = []
    if isinstance(results.get("command"), str) and results["command"]:
        blocks += [Heading("Reproduce"), Code(results["command"])]
    mlflow = results.get("mlflow")
    if isinstance(mlflow, dict) and mlflow:
        rows: list[list[Cell]] = [
            ["tracking URI", str(mlflow.get("tracking_uri", NA))],
            ["experiment id", str(mlflow.get("experiment_id", NA))],
            ["parent run id", str(mlflow.get("parent_run_id", NA))],
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


def _plot_ser_scores(results: dict, path: Path) -> Path | None:
    conds = [c for c in _conditions(results) if any(_metric_stat(results, c, m) for m, _ in SER_METRICS)]
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
    ax.set_title("SER scores (mean ± std over seeds)")
    # below the axes: inside, it would hide bars that sit anywhere from 0 to 100
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=len(conds), fontsize=8, frameon=False)
    return _save(fig, path)


def _summed_confusion(results: dict, condition: str) -> tuple[np.ndarray, int] | None:
    mats = []
    for run in _runs(results, condition):
        try:
            m = np.asarray(_get(run, "metrics", "confusion"), dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if m.ndim == 2 and m.shape[0] == m.shape[1] and m.size and (not mats or m.shape == mats[0].shape):
            mats.append(m)
    return (np.sum(mats, axis=0), len(mats)) if mats else None


def _plot_confusion(results: dict, condition: str, path: Path) -> Path | None:
    summed = _summed_confusion(results, condition)
    if summed is None:
        return None
    counts, n_seeds = summed
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
    ax.set_title(f"{_label(condition)}: {_plural(n_seeds, 'seed')} summed", fontsize=10)
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


def _history_series(history: Any, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    if isinstance(history, list):
        for i, entry in enumerate(history):
            y = _num(_get(entry, key))
            if y is not None:
                x = _num(_get(entry, "epoch"))
                xs.append(x if x is not None else i + 1)
                ys.append(y)
    return xs, ys


def _plot_training_curves(results: dict, path: Path) -> Path | None:
    from matplotlib.ticker import MaxNLocator

    ser_lines = []
    for i, cond in enumerate(_conditions(results)):
        for j, run in enumerate(_runs(results, cond)):
            xs, ys = _history_series(run.get("history"), "val_uar")
            if xs:
                ser_lines.append((cond, i, j, run.get("seed", j), xs, [y * 100 for y in ys]))
    gen_panels = []
    for name in _generator_names(results, "generators"):
        history = results["generators"][name].get("history")
        series = [(key, *_history_series(history, key)) for key in ("train_loss", "val_loss")]
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
        for cond, i, j, seed, xs, ys in ser_lines:
            label = None if cond in labelled else _label(cond)
            labelled.add(cond)
            ax.plot(xs, ys, color=_color(cond, i), linestyle=("-", "--", ":", "-.")[j % 4], marker=".", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation UA (%)")
        ax.set_title("SER (one line per seed)", fontsize=10)
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


def _plot_clarity(results: dict, path: Path) -> Path | None:
    overall = [(g, _stat_from_dict(_get(results, "generated", g, "clarity"))) for g in _generator_names(results, "generated")]
    overall = [(g, s) for g, s in overall if s is not None]
    per_emotion = _clarity_per_emotion(results)
    if not overall and not per_emotion:
        return None
    n_panels = bool(overall) + bool(per_emotion)
    fig = _figure((3.2 + 4.8 * bool(per_emotion), 3.6) if n_panels == 2 else (4.8, 3.6))
    axes = list(fig.subplots(1, n_panels, squeeze=False, width_ratios=[1, 2.2] if n_panels == 2 else None)[0])
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
        ax.set_ylim(0, 105)
        ax.set_ylabel("clarity (%)")
        ax.set_title("overall (mean ± std)", fontsize=10)
    if per_emotion:
        ax = axes.pop(0)
        gens = list(per_emotion)
        emotions = [e for e in EMOTIONS if any(e in per_emotion[g] for g in gens)]
        x = np.arange(len(emotions))
        width = 0.8 / len(gens)
        for i, gen in enumerate(gens):
            ys = [per_emotion[gen].get(e, 0.0) * 100 for e in emotions]
            ax.bar(x + (i - (len(gens) - 1) / 2) * width, ys, width, label=_label(gen), color=_color(gen, i))
        ax.set_xticks(x, emotions, rotation=30, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel("clarity (%)")
        ax.set_title("per emotion", fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _mel_grid(results: dict, out_dir: Path, path: Path) -> tuple[Plot | None, str | None]:
    mel_rel = _get(results, "samples", "mels")
    if not isinstance(mel_rel, str) or not mel_rel:
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


def _make_plots(results: dict, out_dir: Path) -> tuple[list[Plot], list[str]]:
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
        "WA, UA and macro F1 per condition on the held-out test speakers; bars are means over seeds, error bars the seed-to-seed std.",
        "SER scores plot skipped: no SER metrics in the results.",
    )
    for cond in _conditions(results):
        add(
            _plot_confusion(results, cond, plot_dir / f"confusion_{_slug(cond)}.png"),
            f"Confusion matrix: {_label(cond)}",
            f"Test-set confusion of {_label(cond)}, summed over seeds: colour is the share of the true class (rows sum to 1), numbers are clip counts.",
            f"Confusion matrix of {_label(cond)} skipped: no confusion matrix in its runs.",
        )
    mel_plot, mel_note = _mel_grid(results, out_dir, plot_dir / "mel_grid.png")
    if mel_plot is not None:
        plots.append(mel_plot)
    if mel_note:
        notes.append(mel_note)
    add(
        _plot_training_curves(results, plot_dir / "training_curves.png"),
        "Training curves",
        "SER validation UA per epoch (colour = condition, one line per seed) and the generators' train/validation loss per epoch.",
        "Training curves skipped: no training history in the results.",
    )
    add(
        _plot_clarity(results, plot_dir / "clarity.png"),
        "Emotional clarity",
        "Accuracy of the real-trained SER on generated clips against the requested emotion: overall (mean ± std over seeds) and per emotion.",
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


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and plots/ (PNG) into out_dir; returns {"md":..., "html":..., "plots": {name: path}}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = results if isinstance(results, dict) else {}
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
        *_reproduce_section(results),
        *_data_section(results),
    ]
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text(_render_md(blocks), encoding="utf-8")
    title = f"EmoGen experiment: {results.get('name') or 'unnamed'}"
    html_path.write_text(_render_html(blocks, title), encoding="utf-8")
    return {"md": md_path, "html": html_path, "plots": {p.path.stem: p.path for p in plots}}
