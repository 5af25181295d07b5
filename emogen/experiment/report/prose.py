"""The findings in words ("What this run shows", and the judges beside the clarity tables),
generated from the numbers: the design, the gains over real and over the matched-steps
control, the stored paired tests, the instrument against the linear probe, the clarity and
realism of the generated clips. A verdict ("significant at 5 %", "not significant") comes
only from a stored paired test; without one the text says why there is none."""

from __future__ import annotations

from emogen.config import EMOTIONS
from emogen.evaluation.stats import MIN_PAIRS, significant
import emogen.experiment.report.facts as facts
from emogen.experiment.report.document import Block, Heading, Para
from emogen.experiment.report.facts import FILTER_WHO, JUDGE_LABELS, OVER_RUNS, PER_RUN, label
from emogen.experiment.report.numbers import CHANCE, interval, p_text, plural, signed
from emogen.experiment.results import (AUGMENTED_BY, CONTROL, CONTROL_MATCHES, DIFFUSION, JUDGES, REAL, SER_JUDGE, UA,
                                       VAE, Comparison, ExperimentResults)


def findings_section(results: ExperimentResults) -> list[Block]:
    paragraphs = [
        [design_sentence(results)],
        [*_gain_sentences(results), *_steps_sentences(results)],
        _significance_sentences(results),
        _probe_sentences(results),
        [*_clarity_sentences(results), *_realism_sentences(results)],
    ]
    return [Heading("What this run shows"), *(Para(" ".join(p)) for p in paragraphs if p)]


def design_sentence(results: ExperimentResults) -> str:
    """The speaker-fold design from the numbers: folds x seeds = paired runs, and every
    speaker tested once (by the fold that holds it out)."""
    n_folds, n_seeds = facts.n_folds(results), facts.n_seeds(results)
    if not n_folds or not n_seeds:
        return "The results do not say how many speaker folds and seeds the design has."
    design = f"{plural(n_folds, 'speaker fold')} × {plural(n_seeds, 'seed')} = {plural(n_folds * n_seeds, 'paired run')}"
    text = f"The design is {design} per condition"
    finished = max((len(facts.runs(results, c)) for c in results.conditions), default=0)
    if finished and finished != n_folds * n_seeds:  # a partial run: say what the numbers below rest on
        text += f" ({finished} with results)"
    speakers = facts.tested_speakers(results)
    text += f"; every one of the {plural(len(speakers), 'speaker')}" if speakers else "; every speaker"
    text += " is tested once, by the SERs of the fold that holds it out"
    n_clips = results.data.split_counts.get("test") if results.data else None
    if n_clips is not None:
        text += f" ({plural(n_clips, 'real test clip')} in all)"
    return text + "."


def _gain_sentences(results: ExperimentResults) -> list[str]:
    sentences = []
    real = facts.metric_stat(results, REAL, UA)
    for generator in (DIFFUSION, VAE):
        cond = AUGMENTED_BY[generator]
        gain, stat = facts.ua_gain(results, cond), facts.metric_stat(results, cond, UA)
        if gain is None:
            sentences.append(f"There is no {label(cond)} result to compare with real.")
            continue
        text = f"Adding {label(generator)}-generated clips changed unweighted accuracy (UA) by {signed(gain.mean * 100)} points"
        if real is not None and stat is not None:
            text += f" ({real.mean * 100:.1f}% → {stat.mean * 100:.1f}%)"
        if len(gain.values) > 1:
            text += "; gains per fold and seed " + ", ".join(signed(v * 100) for v in gain.values)
        sentences.append(text + ".")
        if gain.std is not None and gain.count > 1 and abs(gain.mean) < gain.std:
            sentences.append(f"That change is smaller than its spread over folds and seeds ({gain.std * 100:.1f} points), "
                             "so it may be noise.")
    return sentences


def _steps_sentences(results: ExperimentResults) -> list[str]:
    """Equal epochs on more clips means more optimizer steps, and an undertrained baseline
    gains from extra steps whatever the extra clips contain: report the matched-steps
    control when the run has one, else say how many more steps the augmented SERs took."""
    control = results.gains_over_matched.get(CONTROL_MATCHES, {}).get(UA)
    if control is not None:
        matched = facts.ua_gain(results, CONTROL)
        text = f"The real-only control, trained for as many optimizer steps as {label(CONTROL_MATCHES)}"
        if matched is not None:
            text += f", changed UA by {signed(matched.mean * 100)} points over real"
        text += f"; {label(CONTROL_MATCHES)} changes UA by {signed(control.mean * 100)} points over that control"
        if len(control.values) > 1:
            text += f" ({PER_RUN} {', '.join(signed(v * 100) for v in control.values)})"
        return [text + ", which is what the generated clips add beyond the extra steps."]
    base = [r.n_train for r in facts.runs(results, REAL) if r.n_train]
    more = [r.n_train for c, cond_runs in results.runs.items() if c != REAL for r in cond_runs if r.n_train]
    if not base or not more or max(more) <= max(base):
        return []
    ratio = max(more) / max(base)
    return [
        f"Every SER trains for the same number of epochs, so the augmented ones take up to {ratio:.2f}x the "
        "baseline's optimizer steps; part of a gain can come from the extra steps rather than from what the "
        "generated clips contain (compare the clarity per emotion of the kept clips)."
    ]


def _significance_sentence(condition: str, reference: str, comparison: Comparison) -> str:
    paired, name = comparison.paired, f"{label(condition)} vs {label(reference)}"
    if paired.mean is None:
        return f"{name}: no shared fold and seed to pair, so no test."
    text = f"{name}: UA {signed(paired.mean * 100)} points"
    if paired.n < MIN_PAIRS:
        text += (f" from n = {paired.n} pair; the test needs more: a paired test needs at least {MIN_PAIRS} pairs "
                 "(run more seeds), so no significance is claimed")
    elif paired.t_p is None:
        text += f" over n = {paired.n} pairs; no paired t-test ({paired.note}), so no significance is claimed"
    else:
        t_says = significant(paired.t_p)
        verdict = "significant at 5 %" if t_says else "not significant"
        text += (f" (95 % CI {interval(paired.ci_low, paired.ci_high)}; paired t {p_text(paired.t_p)}, "
                 f"Wilcoxon {p_text(paired.wilcoxon_p)}; n = {paired.n} pairs): {verdict} by the paired t-test")
        wilcoxon_says = significant(paired.wilcoxon_p)
        if wilcoxon_says is not None and wilcoxon_says != t_says:
            text += ", though the Wilcoxon test disagrees"
    speakers = comparison.speakers
    if speakers is not None and speakers.mean is not None:
        text += f"; over {plural(speakers.n, 'held-out speaker')} {signed(speakers.mean * 100)} points"
        if speakers.ci_low is not None:
            text += f" (bootstrap 95 % CI {interval(speakers.ci_low, speakers.ci_high)})"
    return text + "."


def _significance_sentences(results: ExperimentResults) -> list[str]:
    """From the stored paired tests only; results without them say so."""
    comparisons = facts.comparisons(results)
    if not comparisons:
        return [f"These are means and spreads over {OVER_RUNS}, not significance tests."]
    return [_significance_sentence(cond, ref, comparison) for cond, ref, comparison in comparisons]


def _probe_sentences(results: ExperimentResults) -> list[str]:
    """Whether the baseline SER beats the linear probe: below it, the SER is a weaker
    instrument than a linear model on the same mels."""
    probe, real = results.probe, facts.metric_stat(results, REAL, UA)
    if probe is None or real is None:
        return []
    probe_ua, gap = probe.metrics.unweighted_accuracy * 100, (real.mean - probe.metrics.unweighted_accuracy) * 100
    over_folds = facts.probe_spread(results, UA)
    spread_text = f" (± {over_folds.std * 100:.1f} over folds)" if over_folds and over_folds.std is not None else ""
    text = (f"The linear probe (logistic regression on per-band mel statistics, fit on each fold's real training "
            f"and validation clips: {plural(facts.probe_fits(results), 'fit')}) reaches UA {probe_ua:.1f}%{spread_text} "
            "on the same folds' held-out speakers; the baseline SER (real) ")
    if round(gap, 1) > 0:
        return [text + f"beats it by {gap:.1f} points, so the SER learns more from the mels than a linear model does."]
    if round(gap, 1) < 0:
        return [text + f"is {-gap:.1f} points below it, so the SER is a weaker instrument than a linear model here "
                "and its gains measure little."]
    return [text + "ties with it, so the SER learns no more than a linear model here."]


def _clarity_sentences(results: ExperimentResults) -> list[str]:
    """Clarity of all generated clips by the SER judge when every generator has it (it
    chose no clips), else by the filter, which chose the kept clips."""
    clarity = facts.reported_clarity(results)
    if not clarity.overall:
        return []
    if clarity.by_ser_judge:
        judge = "Emotional clarity by the SER judge (an SER trained on each fold's real training and validation clips "
        judge += "with its own seed, which chose no clips"
        if clarity.judge_ua is not None:
            judge += f"; UA {clarity.judge_ua.mean * 100:.1f}% on the real held-out clips"
        judge += f", chance {CHANCE * 100:.1f}%), the share of all generated clips it classifies as the requested emotion,"
    else:
        judge = (f"Emotional clarity by the filter ({FILTER_WHO}, which chose the kept clips), the share of all generated "
                 "clips it classifies as the requested emotion,")
    parts = [f"{s.mean * 100:.1f}% for {'the VAE' if gen == VAE else label(gen)}"
             for gen, s in sorted(clarity.overall.items(), key=lambda item: item[0] != DIFFUSION)]
    return [f"{judge} is {' and '.join(parts)}."]


def _realism_sentences(results: ExperimentResults) -> list[str]:
    """Whether the generated mels look like speech, beside the real clips' own numbers."""
    parts, silent = [], []
    real_silent = real_two_sample = None
    for gen, generated in facts.in_generator_order(results.generated).items():
        r = generated.realism
        if r is None:
            continue
        parts.append(f"{r.two_sample_accuracy.mean:.2f} for {label(gen)}")
        silent.append(f"{r.silent_frames.mean * 100:.1f}% for {label(gen)}")
        real_silent, real_two_sample = r.real_silent_frames, r.real_two_sample_accuracy
    if not parts:
        return []
    reference = "" if real_two_sample is None else f", against {real_two_sample:.2f} for the training speakers' real clips"
    return [f"A simple classifier tells generated mels from held-out real ones with accuracy {', '.join(parts)} "
            f"(0.50 = indistinguishable{reference}); near-silent frames are {', '.join(silent)} against "
            f"{real_silent * 100:.1f}% in real speech."]


def relative_to_judge(clarity: float, judge_ua: float) -> str:
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


def judge_sentences(results: ExperimentResults) -> list[str]:
    """Clarity is relative to its judge: a judge near chance on real speech cannot tell the
    emotion of generated speech either. Names each judge's UA on real held-out clips, its
    clarity of every generator's clips, and chance; then the filter's, which is no evidence."""
    generated = facts.in_generator_order(results.generated)
    if not generated:
        return []
    sentences = [
        f"Clarity is only meaningful relative to the judge's own UA on the real held-out clips and to chance "
        f"({CHANCE * 100:.1f}% with {len(EMOTIONS)} emotions): clarity near chance says the judge cannot tell the "
        "requested emotion, clarity near the judge's own UA says the clips are about as recognisable to it as real ones."
    ]
    judges = [*JUDGES, *sorted({k for g in generated.values() for k in g.judged} - set(JUDGES))]
    for judge in judges:
        by_generator = {gen: g.judged[judge] for gen, g in generated.items() if judge in g.judged}
        if not by_generator:
            continue
        judge_ua = next(iter(by_generator.values())).judge_ua.mean  # the same judges scored every generator
        parts = [f"{j.all.mean * 100:.1f}% of the {label(gen)} clips ({relative_to_judge(j.all.mean, judge_ua)})"
                 for gen, j in by_generator.items()]
        name = "SER judge" if judge == SER_JUDGE else JUDGE_LABELS.get(judge, judge)
        sentences.append(f"The {name} scores UA {judge_ua * 100:.1f}% on the real held-out clips "
                         f"({signed((judge_ua - CHANCE) * 100)} points from chance) and classifies "
                         f"{' and '.join(parts)} as the requested emotion.")
    real = facts.metric_stat(results, REAL, UA)
    if real is not None:
        parts = [f"{g.clarity.mean * 100:.1f}% of the {label(gen)} clips" for gen, g in generated.items()]
        sentences.append(f"The filter (UA {real.mean * 100:.1f}%) classifies {' and '.join(parts)} as requested; it "
                         "chose the kept clips, so its clarity of those is high by construction and is not evidence.")
    return sentences
