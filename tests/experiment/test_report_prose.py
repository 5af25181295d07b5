""""What this run shows": the design, gains over real and over the matched-steps control,
verdicts only from stored paired tests, the instrument against the probe, clarity and
realism in words, and no pass/fail against stale targets."""

from __future__ import annotations

import numpy as np
import pytest

from emogen.experiment.report import results_table, write_report
from emogen.experiment.report.prose import findings_section
from emogen.experiment.results import ExperimentResults
from tests.experiment.report_builders import (
    MET,
    NOT_MET,
    UA,
    make_fold_results,
    make_results,
    paired,
    pm,
    section,
    stat,
    table_row,
    table_rows,
    with_comparison,
    with_matched_control,
    with_probe_and_speakers,
    without,
)


def findings(results: dict) -> str:
    return " ".join(b.text for b in findings_section(ExperimentResults.model_validate(results)) if hasattr(b, "text"))


@pytest.mark.parametrize(
    ("case", "ua_phrase", "clarity_phrase"),
    [
        (NOT_MET, "Adding diffusion-generated clips changed unweighted accuracy (UA) by +1.7 points",
         "is 60.0% for diffusion and 70.0% for the VAE."),
        (MET, "Adding diffusion-generated clips changed unweighted accuracy (UA) by +5.0 points",
         "is 75.0% for diffusion and 60.0% for the VAE."),
    ],
)
def test_what_this_run_shows(tmp_path, case, ua_phrase, clarity_phrase):
    md = write_report(make_results(**case), tmp_path)["md"].read_text(encoding="utf-8")
    text = section(md, "What this run shows")
    assert ua_phrase in text and clarity_phrase in text
    assert ("The design is 1 speaker fold × 2 seeds = 2 paired runs per condition; every one of the 3 speakers is "
            "tested once, by the SERs of the fold that holds it out (60 real test clips in all).") in text
    assert "not significance" in text and "significant" not in text
    # no pass/fail against the SPEC's aims: the matched-steps control is the reference
    assert "target" not in text and " met" not in text


def test_a_gain_is_shown_as_it_is_without_a_threshold(tmp_path):
    results = make_results(**NOT_MET)
    results["gains"]["real+diffusion"]["unweighted_accuracy"] = {"mean": 0.0296, "std": 0.001, "values": [0.0286, 0.0306]}
    text = section(write_report(results, tmp_path)["md"].read_text(encoding="utf-8"), "What this run shows")
    assert "changed unweighted accuracy (UA) by +3.0 points" in text and "gains per fold and seed +2.9, +3.1" in text
    assert "short" not in text and "met" not in text


def test_what_this_run_shows_names_the_extra_optimizer_steps():
    results = make_results([1] * 6, [0] * 6, (0.6, 0.3))
    for cond in results["runs"]:
        for run in results["runs"][cond]:
            run["n_train"] = 284 if cond == "real" else 374
    text = findings(results)
    assert "1.32x the baseline's optimizer steps" in text
    for cond in results["runs"]:
        for run in results["runs"][cond]:
            run["n_train"] = 284
    assert "optimizer steps" not in findings(results)


def test_matched_steps_control_is_a_row_and_a_finding(tmp_path):
    """With the real-only control trained for real+diffusion's steps, the report shows it
    as a row, and says what real+diffusion adds over it, per fold and seed, instead of the hedge."""
    results = with_matched_control(make_results([2] * 6, [0] * 6, (0.6, 0.3)))
    matched, diffused = results["runs"]["real-matched"], results["runs"]["real+diffusion"]
    over = [d["metrics"][UA] - c["metrics"][UA] for d, c in zip(diffused, matched)]
    results["gains_over_matched"] = {"real+diffusion": {UA: stat(over)}}

    row = table_row(results_table(results), "real, matched steps")
    assert row[2] == pm([r["metrics"][UA] for r in matched])
    text = findings(results)
    assert f"changes UA by +{np.mean(over) * 100:.1f} points over that control" in text
    assert "per fold and seed " + ", ".join(f"+{v * 100:.1f}" for v in over) in text
    assert "1.32x" not in text and "Every SER trains for the same number of epochs" not in text
    md = write_report(results, tmp_path)["md"].read_text()
    assert "Confusion matrix: real, matched steps" in md


@pytest.mark.parametrize(
    ("comparison", "phrase", "absent"),
    [
        (paired(0.05, 6, 0.012, 0.031, (0.01, 0.09)),
         "real+diffusion vs real: UA +5.0 points (95 % CI +1.0 to +9.0; paired t p = 0.012, Wilcoxon p = 0.031; "
         "n = 6 pairs): significant at 5 % by the paired t-test.", "not significant"),
        (paired(0.021, 3, 0.41, 0.75, (-0.03, 0.072)),
         "real+diffusion vs real: UA +2.1 points (95 % CI −3.0 to +7.2; paired t p = 0.410, Wilcoxon p = 0.750; "
         "n = 3 pairs): not significant by the paired t-test.", "significant at 5 %"),
        (paired(0.021, 1),
         "real+diffusion vs real: UA +2.1 points from n = 1 pair; the test needs more: a paired test needs at least "
         "2 pairs (run more seeds), so no significance is claimed.", "significant at 5 %"),
    ],
    ids=["significant", "not-significant", "too-few-pairs"],
)
def test_findings_state_significance_from_the_stored_tests(comparison, phrase, absent):
    text = findings(with_comparison(comparison))
    assert phrase in text and absent not in text
    assert "not significance tests" not in text  # the hedge is for results without tests


def test_findings_name_a_disagreeing_wilcoxon_and_the_speaker_bootstrap():
    speakers = {"n": 3, "units": ["emodb:03", "emodb:08", "ravdess:12"], "values": [0.01, 0.04, 0.07], "mean": 0.04,
                "ci_low": 0.01, "ci_high": 0.07}
    text = findings(with_comparison(paired(0.04, 4, 0.03, 0.125, (0.005, 0.075)), speakers))
    assert "significant at 5 % by the paired t-test, though the Wilcoxon test disagrees" in text
    assert "over 3 held-out speakers +4.0 points (bootstrap 95 % CI +1.0 to +7.0)." in text


def test_findings_without_a_t_test_say_why():
    comparison = {"n": 3, "pairs": ["fold 0 seed 0", "fold 0 seed 1", "fold 0 seed 2"], "differences": [0.0167] * 3,
                  "mean": 0.0167, "wilcoxon_p": 0.25, "note": "all differences are equal: the t-test has no spread to test against"}
    text = findings(with_comparison(comparison))
    assert ("real+diffusion vs real: UA +1.7 points over n = 3 pairs; no paired t-test (all differences are equal: "
            "the t-test has no spread to test against), so no significance is claimed.") in text
    assert "significant at 5 %" not in text and "not significant" not in text


@pytest.mark.parametrize(("probe_ua", "phrase"), [(0.80, "is {gap} points below it"), (0.40, "beats it by {gap} points")])
def test_probe_is_a_finding(tmp_path, probe_ua, phrase):
    results = with_probe_and_speakers(probe_ua)
    real_ua = np.mean([r["metrics"]["unweighted_accuracy"] for r in results["runs"]["real"]])
    md = write_report(results, tmp_path)["md"].read_text(encoding="utf-8")
    text = section(md, "What this run shows")
    assert (f"fit on each fold's real training and validation clips: 1 fit) reaches UA {probe_ua * 100:.1f}% on the "
            "same folds' held-out speakers") in text
    assert phrase.format(gap=f"{abs(real_ua - probe_ua) * 100:.1f}") in text


def test_folds_design_sentence(fold_report):
    text = section(fold_report[2], "What this run shows")
    assert ("The design is 2 speaker folds × 2 seeds = 4 paired runs per condition; every one of the 4 speakers is "
            "tested once, by the SERs of the fold that holds it out (120 real test clips in all).") in text
    assert "Each condition was run with" not in text  # no single-split wording
    assert "gains per fold and seed" in text and "per-seed gains" not in text


def test_probe_finding_over_folds(fold_report):
    results, _, md = fold_report
    probe_ua = [p["metrics"]["unweighted_accuracy"] for p in results["probes"]]
    assert (f"fit on each fold's real training and validation clips: 2 fits) reaches UA {np.mean(probe_ua) * 100:.1f}% "
            f"(± {np.std(probe_ua, ddof=1) * 100:.1f} over folds) on the same folds' held-out speakers") in section(md, "What this run shows")


def test_findings_clarity_goes_by_the_ser_judge(fold_report):
    text = section(fold_report[2], "What this run shows")
    assert "Emotional clarity by the SER judge" in text
    # the filter would rank the VAE first (70.0% vs 60.0%): the numbers are the SER judge's
    assert "is 40.0% for diffusion and 30.0% for the VAE." in text
    assert "UA 53.0% on the real held-out clips, chance 16.7%" in text


def test_clarity_never_mixes_judges(tmp_path):
    """One generator without the SER judge: findings, per-emotion table and plot all go by
    the filter (a comparison across judges would mean nothing); the judge table still shows
    what there is."""
    results = without(make_fold_results(), "generated.vae.judged")
    md = write_report(results, tmp_path)["md"].read_text(encoding="utf-8")
    assert "Emotional clarity by the filter (each fold and seed's baseline SER, which chose the kept clips)" in md
    assert "is 60.0% for diffusion and 70.0% for the VAE." in md and "clarity > VAE clarity" not in md
    assert "### Clarity per emotion (%)" in md and "by the SER judge (%)" not in md
    assert "*Accuracy of the real-trained SER on generated clips" in md
    judge_rows = section(md, "Generated data quality").split("### Clarity by judge")[1].split("###")[0]
    assert len(table_rows(judge_rows, "VAE")) >= 1 and [r[1] for r in table_rows(judge_rows, "diffusion")][-3:] == [
        "filter (each fold and seed's baseline SER; chose the kept clips)", "SER judge (train+val, own seed)", "linear probe"]


def test_realism_sentence_gives_references_not_targets(fold_report):
    text = section(fold_report[2], "What this run shows")
    assert ("tells generated mels from held-out real ones with accuracy 0.95 for VAE, 0.66 for diffusion (0.50 = "
            "indistinguishable, against 0.74 for the training speakers' real clips); near-silent frames are 0.5% for "
            "VAE, 18.0% for diffusion against 20.0% in real speech.") in text
    assert "target" not in text and " met" not in text
