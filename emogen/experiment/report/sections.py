"""The report's sections after the lead and the findings, as document blocks: the SER
tables, generated-data quality, generator training, time per stage, plots, audio samples,
the diffusion attention figures, how to reproduce, MLflow, the data and the configuration.
A section without its data is left out, never a crash."""

from __future__ import annotations

import math
from pathlib import Path

from emogen.config import AudioConfig
import emogen.experiment.report.facts as facts
import emogen.experiment.report.prose as prose
import emogen.experiment.report.tables as tables
from emogen.experiment.report.document import AudioClip, Block, Cell, Code, Heading, Para, Plot, Table, resolve
from emogen.experiment.report.facts import FILTER_WHO, OVER_RUNS, OVER_SETS, PER_RUN, label
from emogen.experiment.report.numbers import NA, date, duration, plural
from emogen.experiment.report.render import AUDIO_MIME
from emogen.experiment.results import DIFFUSION, ExperimentResults


def title_section(results: ExperimentResults) -> list[Block]:
    meta = [
        f"Preset: {results.preset or NA}",
        f"Date: {date(results.created)}",
        f"Total time: {duration(results.seconds.get('total'))}",
    ]
    return [Heading(f"EmoGen experiment: {results.name or 'unnamed'}", 1), Para(" · ".join(meta))]


def ser_section(results: ExperimentResults) -> list[Block]:
    blocks: list[Block] = [
        Heading("Speech-emotion recognition"),
        Para("Mean ± std over fold × seed runs, in percent, each run scored on its fold's held-out test speakers; "
             "the linear probe's ± is over folds. WA = overall accuracy, UA = mean per-class recall, ΔUA in points."),
        tables.ser_table(results),
    ]
    comparisons = facts.comparisons(results)
    if comparisons:
        blocks += [
            Heading("Paired comparisons", 3),
            Para("UA difference in points, paired by fold and seed: mean, 95 % confidence interval from the paired t "
                 "distribution, two-sided p-values of the paired t-test and the Wilcoxon signed-rank test; and the "
                 "per-speaker UA difference (averaged over the seeds of its fold) with a percentile bootstrap interval "
                 "over the held-out speakers. n/a: too few pairs or speakers for the statistic."),
            tables.comparison_table(comparisons),
        ]
    per_speaker = facts.per_speaker(results)
    if per_speaker:
        blocks += [Heading("UA per held-out speaker (%)", 3), tables.per_speaker_table(per_speaker)]
    per_run = tables.per_run_table(results)
    if per_run is not None:
        blocks += [Heading("Per fold and seed", 3), per_run]
    return blocks


def quality_section(results: ExperimentResults) -> list[Block]:
    quality = tables.quality_table(results)
    if quality is None:
        return []
    blocks: list[Block] = [
        Heading("Generated data quality"),
        Para(f"FID and IS are computed on the filter's embeddings and probabilities ({FILTER_WHO}, which also chose "
             f"the kept clips); mean ± std over {OVER_SETS}; clip counts are per set."),
        quality,
        Heading("Clarity by judge", 3),
        Para(f"Clarity = share (%) of generated clips a judge classifies as the requested emotion, of all clips and of "
             f"the clips kept after filtering; mean ± std over {OVER_SETS}. Judge's UA = its own UA (%) on the real "
             f"held-out clips: over {OVER_RUNS} for the filter, over folds for the others."),
        tables.clarity_by_judge_table(results),
        Para(" ".join(prose.judge_sentences(results))),
    ]
    generated = facts.in_generator_order(results.generated)
    reference = next((g.real_fid_reference for g in generated.values() if g.real_fid_reference is not None), None)
    if reference is not None:
        blocks.append(Para(f"For scale: FID of held-out real clips against training real clips is {reference:.1f}."))
    fid = results.generated[DIFFUSION].fid if DIFFUSION in results.generated else None
    if fid is not None and fid.n_real is not None and fid.n_generated is not None:
        # FID is biased upward for small sets: the counts say how comparable values are; they
        # are the first set's, as the folds' test sets differ a little in size
        blocks.append(Para(f"FID sample sizes (the first fold and seed's): {fid.n_real} held-out real clips vs "
                           f"{fid.n_generated} generated clips {PER_RUN}."))
    per_emotion = tables.clarity_per_emotion_table(results)
    if per_emotion is not None:
        title, table = per_emotion
        blocks += [Heading(title, 3), table]
    return blocks + _realism_blocks(results)


def _realism_blocks(results: ExperimentResults) -> list[Block]:
    """Does it look like speech: the two-sample test and near-silent frames beside the real clips'."""
    table = tables.realism_table(results)
    if table is None:
        return []
    return [
        Heading("Realism", 3),
        Para(f"Two-sample accuracy: how well a logistic regression on 8 × 8-pooled mels tells generated clips from the "
             f"fold's held-out real ones (5-fold cross-validated, equal numbers per side): 0.50 = indistinguishable, "
             f"1.00 = every clip told apart. The test tells speakers apart too: the real reference is the same test "
             f"between the held-out clips and the fold's training clips (other speakers), the best a generator of the "
             f"training speakers can expect. Near-silent frames: share (%) of frames whose loudest band is below "
             f"{AudioConfig().silent_frame_db:.0f} dB (pauses and the silence around an utterance), beside the real "
             f"clips' share. Mean ± std over {OVER_SETS}."),
        table,
    ]


def generators_section(results: ExperimentResults) -> list[Block]:
    table = tables.generators_table(results)
    return [] if table is None else [Heading("Generator training"), table]


def data_section(results: ExperimentResults) -> list[Block]:
    data = results.data
    blocks: list[Block] = []
    if data is not None:
        blocks.append(Heading("Data"))
        if data.features:
            blocks.append(Para(f"Features: {data.features}"))
        if data.folds:
            speakers = facts.tested_speakers(results)
            blocks += [
                Para(f"Speaker folds: every speaker is tested once ({plural(len(speakers), 'speaker')} over "
                     f"{plural(len(data.folds), 'fold')}), by the SERs of the fold that holds it out; a fold neither "
                     "trains nor validates on its test speakers. Clip counts per fold:"),
                tables.folds_table(results),
            ]
        clips = tables.clips_table(results)
        if clips is not None:
            blocks += [Para("Clips per emotion, each counted once (in the test set of the fold that holds out its "
                            "speaker):"), clips]
    if results.config:
        blocks += [Heading("Configuration"), tables.config_table(results.config)]
    return blocks


def timing_section(results: ExperimentResults) -> list[Block]:
    stages = [(k, v) for k, v in results.seconds.items() if k != "total" and math.isfinite(v)]
    total = results.seconds.get("total")
    # the caller measures the total; summing stages is a fallback, labelled as such
    total_label = "total"
    if total is None and stages:
        total, total_label = sum(v for _, v in stages), "total (sum of stages)"
    if not stages and total is None:
        return []
    rows: list[list[Cell]] = [
        [stage, f"{s:.1f}", duration(s), f"{100 * s / total:.0f}%" if total else NA] for stage, s in stages
    ]
    rows.append([total_label, f"{total:.1f}", duration(total), "100%" if total else NA])
    return [Heading("Time per stage"), Table(["stage", "seconds", "time", "share"], rows)]


def plots_section(plots: list[Plot], notes: list[str]) -> list[Block]:
    if not plots and not notes:
        return []
    return [Heading("Plots"), *plots, *(Para(n) for n in notes)]


def samples_section(results: ExperimentResults, out_dir: Path) -> list[Block]:
    rows: list[list[Cell]] = []
    for clip in results.samples.wavs if results.samples else []:
        full, rel = resolve(out_dir, clip.path)
        cell: Cell
        if full.suffix.lower() not in AUDIO_MIME:
            # only audio is inlined: a stray path must not pull any other file into the page
            cell = f"not an audio file: {rel}"
        elif not full.is_file():
            cell = f"missing: {rel}"
        else:
            cell = AudioClip(rel, full)
        rows.append([label(clip.source), clip.emotion, cell])
    if not rows:
        return []
    return [
        Heading("Audio samples"),
        Para("Generated mels are turned into audio with Griffin-Lim, so some phasiness is expected in generated clips."),
        Table(["source", "emotion", "listen"], rows),
    ]


def attention_section(results: ExperimentResults, out_dir: Path) -> list[Block]:
    """The diffusion U-Net's attention while generating one clip per emotion (emogen.inference.attention)."""
    blocks: list[Block] = []
    for emotion, path in (results.samples.attention if results.samples else {}).items():
        full, rel = resolve(out_dir, path)
        if full.suffix.lower() == ".png" and full.is_file():  # only PNGs are inlined, as only audio is above
            caption = (f"Top: a generated {emotion} clip's mel. Below: per denoising step (rows) and attention block "
                       "(columns), the attention each time-frequency position receives, in multiples of uniform "
                       "attention (1 = no preference).")
            blocks.append(Plot(f"Diffusion attention: {emotion}", caption, rel, full))
    return [Heading("Diffusion attention"), *blocks] if blocks else []


def reproduce_section(results: ExperimentResults) -> list[Block]:
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
