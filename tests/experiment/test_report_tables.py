"""The report's tables: SER scores (the CLI's table too), per fold and seed, paired
comparisons, the probe row, UA per speaker, generated-data quality, clarity by judge,
realism, the folds, timing."""

from __future__ import annotations

import numpy as np

from emogen.config import EMOTIONS
from emogen.experiment.report import results_table, write_report
from tests.experiment.report_builders import (
    CLARITY,
    FOLD_SPLITS,
    FOLD_TEST,
    FOLD_VAL,
    SER_JUDGE_UA,
    SILENT,
    TWO_SAMPLE,
    paired,
    pm,
    section,
    signed_points,
    table_row,
    table_rows,
    with_comparison,
    with_probe_and_speakers,
)

FILTER = "filter (each fold and seed's baseline SER; chose the kept clips)"


def test_results_table_numbers(full_report):
    results, _, md, _ = full_report
    assert results_table(results) in md
    runs = results["runs"]
    ua = {c: [r["metrics"]["unweighted_accuracy"] for r in runs[c]] for c in runs}
    for cond, label in (("real", "real"), ("real+vae", "real+VAE"), ("real+diffusion", "real+diffusion")):
        row = table_row(results_table(results), label)
        wa = [r["metrics"]["weighted_accuracy"] for r in runs[cond]]
        f1 = [r["metrics"]["macro_f1"] for r in runs[cond]]
        assert row[1:4] == [pm(wa), pm(ua[cond]), pm(f1)]
        assert row[5] == "2"
    assert table_row(results_table(results), "real")[4] == "—"
    diffusion_gain = (np.mean(ua["real+diffusion"]) - np.mean(ua["real"])) * 100
    assert table_row(results_table(results), "real+diffusion")[4] == f"+{diffusion_gain:.1f}" == "+1.7"
    vae_gain = (np.mean(ua["real+vae"]) - np.mean(ua["real"])) * 100
    assert table_row(results_table(results), "real+VAE")[4] == f"\u2212{abs(vae_gain):.1f}" == "\u22121.7"


def test_results_table_recomputed_from_runs_without_summary(full_report):
    results = full_report[0]
    bare = {k: v for k, v in results.items() if k not in ("summary", "gains")}
    assert results_table(bare) == results_table(results)


def test_per_run_generated_and_timing_tables(full_report):
    results, _, md, _ = full_report
    seed1 = results["runs"]["real+diffusion"][1]["metrics"]
    expected = ["0", "1", "real+diffusion", *(f"{seed1[m] * 100:.1f}" for m in ("weighted_accuracy", "unweighted_accuracy", "macro_f1")),
                "284", "120", "3", "54"]
    assert any(line.strip("| ").split(" | ") == expected for line in md.splitlines())
    # FID, IS and counts in the quality table; the filter's clarity in the clarity-by-judge table
    real_ua = pm([r["metrics"]["unweighted_accuracy"] for r in results["runs"]["real"]])
    assert table_rows(section(md, "Generated data quality"), "diffusion") == [["diffusion", "12.3 ± 0.4", "3.10 ± 0.14", "300", "280"],
                                                                              ["diffusion", FILTER, "60.0 ± 1.4", "n/a (it chose them)", real_ua, "16.7"]]
    timing = section(md, "Time per stage")
    assert table_row(timing, "total")[1] == "900.0" and table_row(timing, "train_vae")[1] == "290.0"
    assert "| report |" not in timing  # the caller measures report time; it is not invented here
    assert "abc123" in section(md, "MLflow") and "emogen experiment --preset demo" in section(md, "Reproduce")


def test_comparison_table_rows(tmp_path):
    results = with_comparison(paired(0.05, 6, 0.0004, 0.031, (0.01, 0.09)),
                              {"n": 3, "mean": 0.04, "ci_low": -0.01, "ci_high": 0.07})
    md = write_report(results, tmp_path)["md"].read_text(encoding="utf-8")
    assert table_row(md, "real+diffusion vs real")[1:] == ["+5.0", "+1.0 to +9.0", "< 0.001", "0.031", "6", "+4.0",
                                                           "−1.0 to +7.0", "3"]


def test_probe_reference_row_of_one_fit():
    for probe_ua in (0.80, 0.40):
        results = with_probe_and_speakers(probe_ua)
        real_ua = np.mean([r["metrics"]["unweighted_accuracy"] for r in results["runs"]["real"]])
        assert table_row(results_table(results), "linear probe (reference)")[1:] == [
            "55.0", f"{probe_ua * 100:.1f}", "50.0", signed_points(probe_ua - real_ua), "1 fit"]


def test_per_speaker_table(tmp_path):
    md = write_report(with_probe_and_speakers(0.6), tmp_path)["md"].read_text(encoding="utf-8")
    table = section(md, "Speech-emotion recognition").split("### UA per held-out speaker (%)")[1]
    assert table_row(table, "speaker")[1:] == ["real", "real+VAE", "real+diffusion", "linear probe (reference)"]
    assert table_row(table, "emodb:03")[1:] == ["60.0", "60.0", "70.0", "30.0"]  # mean over the seeds' 50 and 70
    assert table_row(table, "ravdess:12")[1:] == ["45.0", "45.0", "55.0", "60.0"]


def test_fold_x_seed_table(fold_report):
    results, _, md = fold_report
    table = section(md, "Speech-emotion recognition").split("### Per fold and seed")[1]
    assert table_row(table, "fold")[:3] == ["fold", "seed", "condition"]
    for cond, label in (("real", "real"), ("real+vae", "real+VAE"), ("real+diffusion", "real+diffusion")):
        rows = [row for row in table_rows(table, "0") + table_rows(table, "1") if row[2] == label]
        assert len(rows) == 4
        by_pair = {(r["fold"], r["seed"]): r["metrics"]["unweighted_accuracy"] for r in results["runs"][cond]}
        assert [(int(r[0]), int(r[1])) for r in rows] == sorted(by_pair)  # condition by condition, by (fold, seed)
        assert [r[4] for r in rows] == [f"{by_pair[k] * 100:.1f}" for k in sorted(by_pair)]
    assert "### Per seed" not in md


def test_probe_row_says_two_fits_with_a_spread_over_folds(fold_report):
    results, _, md = fold_report
    probes = results["probes"]
    real_ua = np.mean([r["metrics"]["unweighted_accuracy"] for r in results["runs"]["real"]])
    probe_ua = [p["metrics"]["unweighted_accuracy"] for p in probes]
    table = results_table(results)
    assert table_row(table, "condition")[-1] == "n runs (fold × seed)"
    assert table_row(table, "real")[-1] == "4"
    assert table_row(table, "linear probe (reference)")[1:] == [
        *(pm([p["metrics"][m] for p in probes]) for m in ("weighted_accuracy", "unweighted_accuracy", "macro_f1")),
        signed_points(np.mean(probe_ua) - real_ua), "2 fits, one per fold"]


def test_clarity_by_judge_table(fold_report):
    results, _, md = fold_report
    quality = section(md, "Generated data quality")
    fid_table, judges = quality.split("### Clarity by judge")
    assert table_row(fid_table, "generator") == ["generator", "FID", "IS", "n clips", "kept after filtering"]
    real_ua = pm([r["metrics"]["unweighted_accuracy"] for r in results["runs"]["real"]])
    probe_ua = pm([p["metrics"]["unweighted_accuracy"] for p in results["probes"]])
    for gen, label in (("vae", "VAE"), ("diffusion", "diffusion")):
        clarity = CLARITY[gen]
        assert table_rows(judges.split("### Clarity per emotion")[0], label) == [
            [label, FILTER, pm(clarity["filter"]), "n/a (it chose them)", real_ua, "16.7"],
            [label, "SER judge (train+val, own seed)", pm(clarity["ser-judge"]), pm(clarity["ser-judge kept"]),
             pm(SER_JUDGE_UA), "16.7"],
            [label, "linear probe", pm(clarity["probe"]), pm(clarity["probe kept"]), probe_ua, "16.7"],
        ]
    assert ("The SER judge scores UA 53.0% on the real held-out clips (+36.3 points from chance) and classifies "
            "30.0% of the VAE clips (between chance and its own UA) and 40.0% of the diffusion clips (between chance "
            "and its own UA) as the requested emotion.") in judges
    assert "only meaningful relative to the judge's own UA on the real held-out clips and to chance (16.7% with 6 emotions)" in judges
    assert "its clarity of those is high by construction and is not evidence" in judges


def test_clarity_by_judge_without_judges_shows_the_filter(full_report):
    """Results whose clips no judge scored: the filter's row and sentence, named as the one
    that chose the clips."""
    results, _, md, _ = full_report
    real_ua = np.mean([r["metrics"]["unweighted_accuracy"] for r in results["runs"]["real"]]) * 100
    judges = section(md, "Generated data quality").split("### Clarity by judge")[1]
    assert [r[1] for r in table_rows(judges, "VAE")] == [FILTER]
    assert (f"The filter (UA {real_ua:.1f}%) classifies 70.0% of the VAE clips and 60.0% of the diffusion clips as "
            "requested; it chose the kept clips") in judges


def test_clarity_per_emotion_by_the_ser_judge(fold_report):
    md = fold_report[2]
    table = section(md, "Generated data quality").split("### Clarity per emotion by the SER judge (%)")[1]
    assert table_row(table, "emotion")[1:] == ["VAE, all", "VAE, kept", "diffusion, all", "diffusion, kept"]
    assert table_row(table, EMOTIONS[1])[1:] == ["31.0", "40.0", "41.0", "50.0"]
    assert table_row(table, EMOTIONS[5])[1:] == ["35.0", "n/a", "45.0", "n/a"]  # kept nothing of that emotion


def test_folds_table_lists_each_folds_speakers(fold_report):
    data = section(fold_report[2], "Data")
    for fold in (0, 1):
        assert table_row(data, str(fold))[1:] == [", ".join(FOLD_TEST[fold]), ", ".join(FOLD_VAL[fold]),
                                                  *(str(FOLD_SPLITS[fold][s]) for s in ("train", "val", "test"))]
    assert "every speaker is tested once (4 speakers over 2 folds)" in data
    assert "Test speakers (held out of every training set)" not in data
    assert table_row(data, "all")[1:] == ["120"]


def test_realism_table_shows_references_not_targets(fold_report):
    _, _, md = fold_report
    quality = section(md, "Generated data quality").split("### Realism")[1]
    assert table_row(quality, "generator") == ["generator", "two-sample accuracy", "real vs real", "clips per side",
                                               "near-silent frames", "real clips'"]
    assert table_rows(quality, "VAE") == [["VAE", pm(TWO_SAMPLE["vae"], 1, 2), "0.74", "60", pm(SILENT["vae"]), "20.0"]]
    assert table_rows(quality, "diffusion") == [["diffusion", pm(TWO_SAMPLE["diffusion"], 1, 2), "0.74", "60",
                                                 pm(SILENT["diffusion"]), "20.0"]]
    assert "target" not in quality and " met" not in quality
