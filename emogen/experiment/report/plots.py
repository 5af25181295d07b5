"""The report's figures as PNG files: SER scores, one confusion matrix per condition, UA
per held-out speaker, the mel grid, training curves and clarity. Each returns None (or a
note) when the results lack its data, so a partial experiment still gets the rest.

The object-oriented Figure API with an explicit Agg canvas: no pyplot, so no global
backend switch in the caller's process and no figure registry to leak into.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from emogen.config import EMOTIONS
import emogen.experiment.report.facts as facts
from emogen.experiment.report.document import Plot, resolve
from emogen.experiment.report.facts import OVER_RUNS, OVER_SETS, RUN_NOUN, SER_METRICS, label
from emogen.experiment.report.numbers import CHANCE, plural
from emogen.experiment.results import AUGMENTED_BY, CONTROL, DIFFUSION, GENERATORS, PROBE, REAL, VAE, ExperimentResults

MEL_SOURCES: tuple[str, ...] = (REAL, *GENERATORS)
_GENERATOR_COLORS = {VAE: "#DD8452", DIFFUSION: "#55A868"}
# a condition with generated clips takes its generator's colour
_COLORS = {PROBE: "#222222", REAL: "#4C72B0", CONTROL: "#8C8C8C", **{AUGMENTED_BY[g]: c for g, c in _GENERATOR_COLORS.items()},
           **_GENERATOR_COLORS}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "unnamed"


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    fig.clear()  # frees the artists now rather than at garbage collection
    return path


def _color(name: str, index: int) -> str:
    return _COLORS.get(name) or colormaps["tab10"](index % 10)


def _plot_ser_scores(results: ExperimentResults, path: Path) -> Path | None:
    conds = [c for c in results.conditions if any(facts.metric_stat(results, c, m) for m, _ in SER_METRICS)]
    if not conds:
        return None
    fig = _figure((7.0, 4.0))
    ax = fig.subplots()
    width = 0.8 / len(conds)
    x = np.arange(len(SER_METRICS))
    for i, cond in enumerate(conds):
        stats = [facts.metric_stat(results, cond, m) for m, _ in SER_METRICS]
        means = [s.mean * 100 if s else 0.0 for s in stats]
        stds = [(s.std or 0.0) * 100 if s else 0.0 for s in stats]
        bars = ax.bar(x + (i - (len(conds) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=label(cond), color=_color(cond, i))
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(x, [label for _, label in SER_METRICS])
    ax.set_ylabel("% on held-out speakers")
    ax.set_ylim(0, 105)
    ax.set_title(f"SER scores (mean ± std over {OVER_RUNS})")
    # below the axes: inside, it would hide bars that sit anywhere from 0 to 100
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=len(conds), fontsize=8, frameon=False)
    return _save(fig, path)


def _plot_per_speaker(results: ExperimentResults, path: Path) -> Path | None:
    per_speaker = facts.per_speaker(results)
    if not per_speaker:
        return None
    speakers = sorted({s for values in per_speaker.values() for s in values})
    fig = _figure((max(4.8, 0.5 * len(speakers) + 3.0), 3.6))
    ax = fig.subplots()
    x = np.arange(len(speakers))
    for i, (name, values) in enumerate(per_speaker.items()):
        ys = [values[s] * 100 if s in values else np.nan for s in speakers]
        ax.plot(x, ys, marker="o", color=_color(name, i), linestyle="--" if name == PROBE else "-", label=label(name))
    ax.set_xticks(x, speakers, rotation=45 if len(speakers) > 8 else 0)
    ax.set_xlabel("held-out speaker")
    ax.set_ylabel("UA (%)")
    ax.set_ylim(0, 105)
    ax.set_title("UA per held-out speaker (mean over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _summed_confusion(results: ExperimentResults, condition: str) -> tuple[np.ndarray, int] | None:
    mats = []
    for run in facts.runs(results, condition):
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
    ax.set_title(f"{label(condition)}: {plural(n_runs, RUN_NOUN)} summed", fontsize=10)
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
                ax.set_title(label(source), fontsize=10)
            if c == 0:
                ax.set_ylabel(emotion, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.5, label="scaled log-mel")
    return _save(fig, path), blank, len(EMOTIONS) * len(sources)


def _history_series(history: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    points = [(entry.get("epoch", i + 1), entry[key]) for i, entry in enumerate(history) if key in entry]
    return [x for x, _ in points], [y for _, y in points]


def _plot_training_curves(results: ExperimentResults, path: Path) -> Path | None:
    ser_lines = []
    for i, cond in enumerate(results.conditions):
        for j, run in enumerate(facts.runs(results, cond)):
            xs, ys = _history_series(run.history, "val_uar")
            if xs:
                ser_lines.append((cond, i, j, xs, [y * 100 for y in ys]))
    gen_panels = []
    for name, gen in facts.in_generator_order(results.generators).items():
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
            legend = None if cond in labelled else label(cond)
            labelled.add(cond)
            ax.plot(xs, ys, color=_color(cond, i), linestyle=("-", "--", ":", "-.")[j % 4], marker=".", label=legend)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation UA (%)")
        ax.set_title(f"SER (one line per {RUN_NOUN})", fontsize=10)
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
        ax.set_title(f"{label(name)} loss", fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_clarity(results: ExperimentResults, path: Path) -> Path | None:
    clarity = facts.reported_clarity(results)
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
            [label(g) for g, _ in overall],
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
            ax.bar(x + (i - (len(gens) - 1) / 2) * width, ys, width, label=label(gen), color=_color(gen, i))
        references(ax, with_judge_ua=False)
        ax.set_xticks(x, emotions, rotation=30, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel("clarity (%)")
        ax.set_title(f"per emotion {judge}", fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _clarity_caption(results: ExperimentResults) -> str:
    lines = "dotted line: chance; dashed line (overall): the judge's own UA on the real held-out clips."
    if facts.reported_clarity(results).by_ser_judge:
        return ("Clarity by the SER judge (an SER trained on each fold's real training and validation clips with its "
                "own seed, which chose no clips): share of all generated clips it classifies as the requested emotion, "
                f"overall (mean ± std over {OVER_SETS}) and per emotion; {lines}")
    return ("Accuracy of the real-trained SER on generated clips against the requested emotion: overall (mean ± std "
            f"over {OVER_SETS}) and per emotion; {lines}")


def _mel_grid(results: ExperimentResults, out_dir: Path, path: Path) -> tuple[Plot | None, str | None]:
    mel_rel = results.samples.mels if results.samples else None
    if not mel_rel:
        return None, "Mel grid skipped: the results name no mel samples file."
    mel_path, rel = resolve(out_dir, mel_rel)
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


def make_plots(results: ExperimentResults, out_dir: Path) -> tuple[list[Plot], list[str]]:
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
        f"WA, UA and macro F1 per condition on the held-out test speakers; bars are means over {OVER_RUNS}, "
        "error bars their std.",
        "SER scores plot skipped: no SER metrics in the results.",
    )
    for cond in results.conditions:
        add(
            _plot_confusion(results, cond, plot_dir / f"confusion_{_slug(cond)}.png"),
            f"Confusion matrix: {label(cond)}",
            f"Test-set confusion of {label(cond)}, summed over {OVER_RUNS}: colour is the share of the true class "
            "(rows sum to 1), numbers are clip counts.",
            f"Confusion matrix of {label(cond)} skipped: no confusion matrix in its runs.",
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
        f"SER validation UA per epoch (colour = condition, one line per {RUN_NOUN}) and the generators' "
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

