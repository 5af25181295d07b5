"""The report answers first: a short lead before any table, with the answer against the
matched-steps control (interval and paired p), the instrument against the linear probe,
and the generated clips' clarity and realism; "no effect" when the interval covers 0."""

from __future__ import annotations

import re

import pytest

from emogen.experiment.report import write_report
from emogen.experiment.results import ExperimentResults, comparisons
from tests.experiment.report_builders import (
    MET,
    PER_CLASS,
    REAL_HITS,
    confusion,
    make_fold_results,
    make_results,
    metrics,
    paired,
    section,
    with_probe_and_speakers,
)

CONTROL_NAMED = "Against the matched-steps control (real clips only, as many optimizer steps as real+diffusion), "
NO_EFFECT = ", not significant: the interval covers 0, no effect shown"


def with_control(results: dict) -> dict:
    """Fold results with the matched-steps control and every comparison computed from the
    runs: real+diffusion (+3 hits over real) clears the control, which gains one hit on seed
    0 only, in every fold; real+VAE (+1 hit on seed 1) does not."""
    results["runs"]["real-matched"] = [
        {**run, "checkpoint": run["checkpoint"].replace("/real/", "/real-matched/"), "train_steps": 72,
         "metrics": metrics(confusion([min(PER_CLASS, max(0, h + (1 if run["seed"] == 0 and k == 0 else 0) - run["fold"]))
                                       for k, h in enumerate(REAL_HITS[run["seed"]])]))}
        for run in results["runs"]["real"]
    ]
    results["conditions"] = ["real", "real-matched", "real+vae", "real+diffusion"]
    found = comparisons(ExperimentResults.model_validate(results).runs)
    results["comparisons"] = {ref: {c: comparison.model_dump(mode="json") for c, comparison in by.items()}
                              for ref, by in found.items()}
    return results


def lead_of(results: dict, tmp_path) -> tuple[str, str, dict]:
    paths = write_report(results, tmp_path)
    md = paths["md"].read_text(encoding="utf-8")
    return md, section(md, "In short"), paths


def interval_text(comparison: dict) -> str:
    def points(x: float) -> str:
        text = f"{abs(x) * 100:.1f}"
        return text if float(text) == 0 else ("+" if x > 0 else "\u2212") + text

    return f"95 % CI {points(comparison['ci_low'])} to {points(comparison['ci_high'])}"


@pytest.fixture(scope="module")
def control_report(tmp_path_factory):
    results = with_control(make_fold_results())
    md, lead, paths = lead_of(results, tmp_path_factory.mktemp("lead"))
    return results, md, lead, paths["html"].read_text(encoding="utf-8")


def test_the_lead_comes_first_and_is_short(control_report):
    _, md, lead, _ = control_report
    headings = re.findall(r"^## (.+)$", md, flags=re.M)
    assert headings[0] == "In short" and headings[1] == "Speech-emotion recognition"
    assert md.index("## In short") < md.index("|")  # before any table
    assert len(lead.split()) < 170  # every answer the brief asks for, in well under 200 words
    assert lead.lstrip().startswith("Question: do generated clips improve speech-emotion recognition (SER) beyond "
                                    "what the extra training steps give?")


def test_the_answer_is_against_the_control_with_interval_and_p(control_report):
    results, _, lead, _ = control_report
    against = results["comparisons"]["real-matched"]
    diffusion, vae = against["real+diffusion"]["paired"], against["real+vae"]["paired"]
    assert diffusion["ci_low"] > 0 and vae["ci_low"] <= 0 <= vae["ci_high"]  # the case this test is about
    assert CONTROL_NAMED in lead
    assert (f"real+diffusion: UA +{diffusion['mean'] * 100:.1f} points ({interval_text(diffusion)}, paired t "
            f"p = {diffusion['t_p']:.3f}, 4 pairs), significant at 5 %, a gain") in lead
    assert (f"real+VAE: UA +{vae['mean'] * 100:.1f} points ({interval_text(vae)}, paired t "
            f"p = {vae['t_p']:.3f}, 4 pairs){NO_EFFECT}") in lead
    # the gain over plain real is in the tables and findings, not the lead's answer
    assert "over real" not in lead and "target" not in lead and not re.search(r"\bmet\b", lead)


@pytest.mark.parametrize(
    ("comparison", "verdict"),
    [
        (paired(0.012, 4, 0.41, 0.5, (-0.03, 0.054)), NO_EFFECT),
        (paired(-0.004, 4, 0.8, 0.9, (-0.05, 0.042)), NO_EFFECT),
        (paired(0.05, 4, 0.004, 0.06, (0.02, 0.08)), ", significant at 5 %, a gain"),
        (paired(-0.05, 4, 0.004, 0.06, (-0.08, -0.02)), ", significant at 5 %, a loss"),
    ],
    ids=["covers-0-up", "covers-0-down", "gain", "loss"],
)
def test_no_effect_when_the_interval_covers_zero(tmp_path, comparison, verdict):
    results = make_results(**MET)
    results["comparisons"] = {"real": {"real+diffusion": {"paired": paired(0.05, 4, 0.001, 0.06, (0.03, 0.07))}},
                              "real-matched": {"real+diffusion": {"paired": comparison}}}
    _, lead, _ = lead_of(results, tmp_path)
    shown = interval_text(comparison)
    assert f"{CONTROL_NAMED}real+diffusion: UA " in lead and f"({shown}, paired t p = " in lead
    assert lead.count(verdict) == 1
    if verdict == NO_EFFECT:
        assert "significant at 5 %" not in lead  # not the real comparison's verdict either


def test_too_few_pairs_claim_no_effect(tmp_path):
    results = make_results(**MET)
    results["comparisons"] = {"real-matched": {"real+diffusion": {"paired": paired(0.03, 1)}}}
    _, lead, _ = lead_of(results, tmp_path)
    assert "real+diffusion: UA +3.0 points over 1 pair, too few for an interval, so no effect is claimed" in lead


def test_without_a_control_the_lead_says_it_cannot_answer(tmp_path):
    results = make_results(**MET)
    results["comparisons"] = {"real": {"real+diffusion": {"paired": paired(0.05, 4, 0.004, 0.06, (0.02, 0.08))}}}
    _, lead, _ = lead_of(results, tmp_path)
    assert ("This run has no matched-steps control (real clips only, as many optimizer steps as real+diffusion), so it "
            "cannot tell what the generated clips add from what the extra steps give; against real alone, "
            "real+diffusion: UA +5.0 points (95 % CI +2.0 to +8.0, paired t p = 0.004, 4 pairs), "
            "significant at 5 %, a gain.") in lead


def test_a_control_without_a_stored_test_gives_no_verdict(tmp_path):
    results = with_control(make_fold_results())
    del results["comparisons"]
    _, lead, _ = lead_of(results, tmp_path)
    assert "The results hold no paired test against the matched-steps control" in lead
    assert "significant" not in lead


@pytest.mark.parametrize(("probe_ua", "phrase"), [
    (0.80, ", {gap} points below the linear probe (80.0%), so its gains measure little."),
    (0.40, ", beating the linear probe (40.0%) by {gap} points."),
])
def test_the_lead_says_whether_the_ser_beats_the_probe(tmp_path, probe_ua, phrase):
    results = with_probe_and_speakers(probe_ua)
    real_ua = sum(r["metrics"]["unweighted_accuracy"] for r in results["runs"]["real"]) / len(results["runs"]["real"])
    _, lead, _ = lead_of(results, tmp_path)
    assert f"The instrument: the SER trained on real clips scores UA {real_ua * 100:.1f}%" in lead
    assert phrase.format(gap=f"{abs(real_ua - probe_ua) * 100:.1f}") in lead


def test_the_lead_judges_the_generated_clips(control_report):
    _, _, lead, _ = control_report
    # by the SER judge, which chose no clips, against its own UA on real speech (the filter says 60 / 70 %)
    assert ("Generated clips: the SER judge (UA 53.0% on real speech, chance 16.7%) recognises the requested emotion "
            "in 40.0% of diffusion and 30.0% of VAE clips.") in lead
    assert ("A classifier tells them from real clips with accuracy 0.66 (diffusion) and 0.95 (VAE); 0.50 is "
            "indistinguishable, real clips of other speakers score 0.74.") in lead


def test_the_html_report_opens_with_the_same_lead(control_report):
    _, _, lead, page = control_report
    headings = re.findall(r"<h([12])>(.*?)</h\1>", page)
    assert headings[0][0] == "1" and headings[1] == ("2", "In short") and headings[2] == ("2", "Speech-emotion recognition")
    body = page.split("<h2>In short</h2>")[1].split("<h2>")[0]
    paragraphs = [p for p in lead.strip().split("\n\n")]
    assert re.findall(r"<p>(.*?)</p>", body, flags=re.S) == [p.replace("&", "&amp;").replace("'", "&#x27;") for p in paragraphs]
    assert "<table>" not in body


def test_without_judges_the_lead_names_the_filter_as_biased(full_report):
    results, _, md, _ = full_report
    real_ua = sum(r["metrics"]["unweighted_accuracy"] for r in results["runs"]["real"]) / len(results["runs"]["real"])
    assert (f"Generated clips: the filter (UA {real_ua * 100:.1f}% on real speech, chance 16.7%, it chose the kept "
            "clips) recognises the requested emotion in 60.0% of diffusion and 70.0% of VAE clips.") in section(md, "In short")
