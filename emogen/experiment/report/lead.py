"""The report's lead, before any table: the question, the answer against the matched-steps
control with its interval and paired p-value, whether the SER is a better instrument than
the linear probe, and how good the generated clips are. The control (real clips only,
trained for as many optimizer steps) is the reference for what the generated clips add:
against plain real, a gain can come from the extra steps alone. An interval that covers 0
reads "not significant, no effect shown", whatever the mean's sign."""

from __future__ import annotations

import emogen.experiment.report.facts as facts
from emogen.experiment.report.document import Block, Heading, Para
from emogen.experiment.report.facts import label
from emogen.experiment.report.numbers import CHANCE, interval, p_text, plural, signed
from emogen.experiment.results import (
    AUGMENTED_BY,
    CONTROL,
    CONTROL_MATCHES,
    DIFFUSION,
    REAL,
    UA,
    VAE,
    Comparison,
    ExperimentResults,
)

LEAD_HEADING = "In short"
QUESTION = "Question: do generated clips improve speech-emotion recognition (SER) beyond what the extra training steps give?"
_ANSWERED = (AUGMENTED_BY[DIFFUSION], AUGMENTED_BY[VAE])  # the conditions with generated clips, diffusion first
_CONTROL_IS = f"real clips only, as many optimizer steps as {label(CONTROL_MATCHES)}"


def lead_section(results: ExperimentResults) -> list[Block]:
    paragraphs = [[QUESTION, _answer(results)], _instrument(results), _generated_quality(results)]
    return [Heading(LEAD_HEADING), *(Para(" ".join(p)) for p in paragraphs if p)]


def _effect(condition: str, comparison: Comparison) -> str:
    """One condition's paired UA difference, its interval and p, and what it means."""
    paired = comparison.paired
    if paired.mean is None:
        return f"{label(condition)}: no fold and seed in common, no answer"
    text = f"{label(condition)}: UA {signed(paired.mean * 100)} points"
    if paired.ci_low is None or paired.ci_high is None:
        return text + f" over {plural(paired.n, 'pair')}, too few for an interval, so no effect is claimed"
    text += f" (95 % CI {interval(paired.ci_low, paired.ci_high)}, paired t {p_text(paired.t_p)}, {paired.n} pairs)"
    if paired.ci_low <= 0 <= paired.ci_high:
        return text + ", not significant: the interval covers 0, no effect shown"
    return text + (", significant at 5 %, a gain" if paired.ci_low > 0 else ", significant at 5 %, a loss")


def _answer(results: ExperimentResults) -> str:
    if not any(results.runs.values()):
        return "The results hold no SER runs, so there is no answer yet."
    against = results.comparisons.get(CONTROL, {})
    effects = [_effect(cond, against[cond]) for cond in _ANSWERED if cond in against]
    if effects:
        return f"Against the matched-steps control ({_CONTROL_IS}), " + "; ".join(effects) + "."
    if facts.runs(results, CONTROL):
        text = f"The results hold no paired test against the matched-steps control ({_CONTROL_IS})"
        over = results.gains_over_matched.get(CONTROL_MATCHES, {}).get(UA)
        if over is not None:
            text += (f"; {label(CONTROL_MATCHES)}: UA {signed(over.mean * 100)} points over it, a mean without an "
                     "interval, so no effect is claimed")
        return text + "."
    text = (f"This run has no matched-steps control ({_CONTROL_IS}), so it cannot tell what the generated clips add "
            "from what the extra steps give")
    against_real = results.comparisons.get(REAL, {})
    effects = [_effect(cond, against_real[cond]) for cond in _ANSWERED if cond in against_real]
    return text + ("; against real alone, " + "; ".join(effects) if effects else "") + "."


def _instrument(results: ExperimentResults) -> list[str]:
    """Whether the SER beats a linear model on the same mels: if not, its gains measure little."""
    probe, real = results.probe, facts.metric_stat(results, REAL, UA)
    if probe is None or real is None:
        return []
    probe_ua = probe.metrics.unweighted_accuracy * 100
    gap = real.mean * 100 - probe_ua
    text = f"The instrument: the SER trained on real clips scores UA {real.mean * 100:.1f}%"
    if round(gap, 1) > 0:
        return [text + f", beating the linear probe ({probe_ua:.1f}%) by {gap:.1f} points."]
    if round(gap, 1) < 0:
        return [text + f", {-gap:.1f} points below the linear probe ({probe_ua:.1f}%), so its gains measure little."]
    return [text + f", as the linear probe does ({probe_ua:.1f}%)."]


def _generated_quality(results: ExperimentResults) -> list[str]:
    """Clarity by a judge that chose no clips, against that judge's UA on real speech, and
    realism (two-sample accuracy) against real clips of other speakers."""
    sentences = []
    clarity = facts.reported_clarity(results)
    overall = sorted(clarity.overall.items(), key=lambda item: item[0] != DIFFUSION)
    if overall:
        about = [] if clarity.judge_ua is None else [f"UA {clarity.judge_ua.mean * 100:.1f}% on real speech"]
        about.append(f"chance {CHANCE * 100:.1f}%")
        if not clarity.by_ser_judge:  # no judge scored every generator: the filter's clarity is biased upward
            about.append("it chose the kept clips")
        judge = "the SER judge" if clarity.by_ser_judge else "the filter"
        sentences.append(f"Generated clips: {judge} ({', '.join(about)}) recognises the requested emotion in "
                         + " and ".join(f"{s.mean * 100:.1f}% of {label(gen)}" for gen, s in overall) + " clips.")
    realism = sorted(((gen, g.realism) for gen, g in results.generated.items() if g.realism is not None),
                     key=lambda item: item[0] != DIFFUSION)
    if realism:
        text = "A classifier tells them from real clips with accuracy " + " and ".join(
            f"{r.two_sample_accuracy.mean:.2f} ({label(gen)})" for gen, r in realism) + "; 0.50 is indistinguishable"
        reference = realism[0][1].real_two_sample_accuracy
        sentences.append(text + ("" if reference is None else f", real clips of other speakers score {reference:.2f}") + ".")
    return sentences
