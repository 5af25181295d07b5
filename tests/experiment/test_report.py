"""The experiment report on a synthetic results.json: files, numbers, verdicts, robustness."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import soundfile as sf

from emogen.config import EMOTIONS
from emogen.evaluation.metrics import classification_report
from emogen.experiment.report import results_table, write_report
from emogen.experiment.results import RESULTS_VERSION, ExperimentResults, load_results

SEEDS = (0, 1)
PER_CLASS = 10  # test clips per emotion, so one more hit in one class is +1/60 UA
# correct predictions per class on the real-only SER, per seed
REAL_HITS = {0: [7, 6, 5, 8, 4, 6], 1: [8, 6, 6, 7, 5, 5]}
EXPECTED_PLOTS = {
    "ser_scores",
    "confusion_real",
    "confusion_real_vae",
    "confusion_real_diffusion",
    "mel_grid",
    "training_curves",
    "clarity",
}


def _confusion(hits: list[int]) -> np.ndarray:
    """Hits on the diagonal, every miss predicted as the next emotion."""
    cm = np.zeros((6, 6), dtype=np.int64)
    for i, h in enumerate(hits):
        cm[i, i] = h
        cm[i, (i + 1) % 6] = PER_CLASS - h
    return cm


def _metrics(cm: np.ndarray) -> dict:
    labels = np.concatenate([np.full(cm[i, j], i) for i in range(6) for j in range(6)])
    preds = np.concatenate([np.full(cm[i, j], j) for i in range(6) for j in range(6)])
    return classification_report(labels, preds)


def _stat(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "values": list(values)}


def make_results(diffusion_extra: list[int], vae_extra: list[int], clarity: tuple[float, float], name: str = "demo") -> dict:
    """A results.json dict whose metrics are consistent with its confusion matrices."""
    extras = {"real": [0] * 6, "real+vae": vae_extra, "real+diffusion": diffusion_extra}
    runs: dict[str, list] = {}
    for cond, extra in extras.items():
        runs[cond] = []
        for seed in SEEDS:
            hits = [min(PER_CLASS, max(0, h + e)) for h, e in zip(REAL_HITS[seed], extra)]
            m = _metrics(_confusion(hits))
            history = [
                {"epoch": e, "train_loss": 1.8 - 0.2 * e, "val_loss": 1.7 - 0.15 * e, "val_accuracy": 0.2 * e, "val_uar": 0.18 * e + 0.01 * seed}
                for e in (1, 2, 3)
            ]
            runs[cond].append(
                {"seed": seed, "checkpoint": f"runs/x/{cond}/{seed}", "n_train": 284, "n_generated": 0 if cond == "real" else 120,
                 "train_seconds": 40.0, "epochs": 3, "train_steps": 54, "metrics": m, "history": history}
            )
    metric_names = ("weighted_accuracy", "unweighted_accuracy", "macro_f1")
    summary = {c: {m: _stat([r["metrics"][m] for r in rs]) for m in metric_names} for c, rs in runs.items()}
    gains = {
        c: {m: _stat([r["metrics"][m] - b["metrics"][m] for r, b in zip(runs[c], runs["real"])]) for m in metric_names}
        for c in ("real+vae", "real+diffusion")
    }
    vae_clarity, diffusion_clarity = clarity

    def generated(c: float) -> dict:
        return {
            "n_per_emotion": 50, "n_clips": 300, "n_kept": 280,
            "clarity": _stat([c - 0.01, c + 0.01]),
            "clarity_per_emotion": {e: c for e in EMOTIONS},
            "fid": _stat([12.0, 12.6]), "inception_score": _stat([3.0, 3.2]), "real_fid_reference": 3.2,
        }

    return {
        "name": name, "preset": "demo", "created": "2026-11-25T15:30:00Z",
        "command": "emogen experiment --preset demo --out runs/demo",
        "config": {"preset": "demo", "ser": {"epochs": 3, "lr": 0.001}, "seeds": [0, 1]},
        "data": {"features": "runs/demo/data", "split_counts": {"train": 284, "val": 80, "test": 60},
                 "test_speakers": ["emodb:03", "emodb:08", "ravdess:12"],
                 "class_counts": {"train": {e: 47 for e in EMOTIONS}, "test": {e: PER_CLASS for e in EMOTIONS}}},
        "seeds": list(SEEDS),
        "conditions": ["real", "real+vae", "real+diffusion"],
        "runs": runs, "summary": summary, "gains": gains,
        "generated": {"vae": generated(vae_clarity), "diffusion": generated(diffusion_clarity)},
        "generators": {
            "vae": {"checkpoint": "runs/x/vae", "epochs": 3, "seconds": 290.0,
                    "metrics": {"val_loss": 0.5, "val_recon": 0.4, "val_kl": 1.0},
                    "history": [{"epoch": e, "train_loss": 10.0 / e, "val_loss": 11.0 / e} for e in (1, 2, 3)]},
            "diffusion": {"checkpoint": "runs/x/diffusion", "epochs": 3, "seconds": 220.0, "space": "latent",
                          "metrics": {"val_loss": 0.2},
                          "history": [{"epoch": e, "train_loss": 0.5 / e, "val_loss": 0.6 / e} for e in (1, 2, 3)]},
        },
        "samples": {"mels": "samples/mels.npz", "wavs": [
            {"source": "real", "emotion": "anger", "path": "samples/real_anger_0.wav"},
            {"source": "diffusion", "emotion": "anger", "path": "samples/diffusion_anger_0.wav"},
        ]},
        "seconds": {"corpus": 20.0, "preprocess": 15.0, "train_vae": 290.0, "train_diffusion": 220.0,
                    "train_ser": 300.0, "generate": 40.0, "evaluate": 10.0, "total": 900.0},
        "targets": {"ua_gain_points": 3.0, "diffusion_ua_gain_met": False, "clarity_met": True},
        "mlflow": {"tracking_uri": "sqlite:///runs/mlflow.db", "experiment_id": "1", "parent_run_id": "abc123"},
    }


def write_samples(out_dir, missing: str = "diffusion/fear") -> None:
    samples = out_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    mels = {f"{s}/{e}": rng.uniform(-1, 1, (16, 20)).astype(np.float32) for s in ("real", "vae", "diffusion") for e in EMOTIONS}
    del mels[missing]
    np.savez(samples / "mels.npz", **mels)
    t = np.arange(int(0.2 * 22050)) / 22050
    for name in ("real_anger_0", "diffusion_anger_0"):
        sf.write(samples / f"{name}.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 22050)


def section(md: str, title: str) -> str:
    """The text of one '## title' section of the markdown."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, flags=re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def table_row(md: str, first_cell: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def pm(values: list[float], scale: float = 100, digits: int = 1) -> str:
    return f"{np.mean(values) * scale:.{digits}f} ± {np.std(values, ddof=1) * scale:.{digits}f}"


NOT_MET = dict(diffusion_extra=[1, 0, 0, 0, 0, 0], vae_extra=[-1, 0, 0, 0, 0, 0], clarity=(0.70, 0.60))  # +1.7 UA points
MET = dict(diffusion_extra=[1, 1, 1, 0, 0, 0], vae_extra=[0, 1, 0, 0, 0, 0], clarity=(0.60, 0.75))  # +5.0 UA points


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_samples(out)
    results = make_results(**NOT_MET)
    paths = write_report(results, out)
    return results, paths, paths["md"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")


def test_files_and_plots_exist(full_report):
    _, paths, _, _ = full_report
    assert paths["md"].is_file() and paths["html"].is_file()
    assert set(paths["plots"]) == EXPECTED_PLOTS
    for name, path in paths["plots"].items():
        assert path.parent.name == "plots" and path.name == f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained(full_report):
    _, paths, _, page = full_report
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", page, flags=re.I)
    assert not re.search(r"<(?:link|script)\b", page, flags=re.I)
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(paths["plots"]) == len(EXPECTED_PLOTS)
    assert all(base64.b64decode(img)[:4] == b"\x89PNG" for img in images)
    audio = re.findall(r'<audio controls src="data:audio/wav;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(audio) == 2 and base64.b64decode(audio[0])[:4] == b"RIFF"
    assert 'href="samples/real_anger_0.wav"' in page


def test_markdown_links_plots_and_wavs_relatively(full_report):
    _, paths, md, _ = full_report
    for name in EXPECTED_PLOTS:
        assert f"](plots/{name}.png)" in md
    assert "](samples/real_anger_0.wav)" in md and "](samples/diffusion_anger_0.wav)" in md
    assert "base64" not in md


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


def test_per_seed_generated_and_timing_tables(full_report):
    results, _, md, _ = full_report
    seed1 = results["runs"]["real+diffusion"][1]["metrics"]
    expected = ["1", "real+diffusion", *(f"{seed1[m] * 100:.1f}" for m in ("weighted_accuracy", "unweighted_accuracy", "macro_f1")), "284", "120", "3", "54"]
    assert any(line.strip("| ").split(" | ") == expected for line in md.splitlines())
    assert table_row(md, "diffusion")[1:] == ["60.0 ± 1.4", "12.3 ± 0.4", "3.10 ± 0.14", "300", "280"]
    timing = section(md, "Time per stage")
    assert table_row(timing, "total")[1] == "900.0" and table_row(timing, "train_vae")[1] == "290.0"
    assert "| report |" not in timing  # the caller measures report time; it is not invented here
    assert "abc123" in section(md, "MLflow") and "emogen experiment --preset demo" in section(md, "Reproduce")


@pytest.mark.parametrize(
    ("case", "ua_phrase", "clarity_phrase"),
    [
        (NOT_MET, "≥ +3.0 UA points over real is not met: the gain is +1.7 points", "diffusion clarity > VAE clarity is not met"),
        (MET, "≥ +3.0 UA points over real is met (+5.0 points)", "diffusion clarity > VAE clarity is met"),
    ],
)
def test_what_this_run_shows(tmp_path, case, ua_phrase, clarity_phrase):
    md = write_report(make_results(**case), tmp_path)["md"].read_text(encoding="utf-8")
    text = section(md, "What this run shows")
    assert ua_phrase in text and clarity_phrase in text
    assert "2 seeds" in text and "60 real test clips from 3 held-out speakers" in text
    assert "not significance" in text and "significant" not in text


def test_gain_just_below_target_is_not_rounded_up(tmp_path):
    results = make_results(**NOT_MET)
    results["gains"]["real+diffusion"]["unweighted_accuracy"] = {"mean": 0.0296, "std": 0.001, "values": [0.0286, 0.0306]}
    text = section(write_report(results, tmp_path)["md"].read_text(encoding="utf-8"), "What this run shows")
    assert "is not met: the gain is +2.96 points" in text


def test_mel_grid_notes_blank_cells(full_report):
    _, _, md, _ = full_report
    assert "Blank cells (no sample): 1 of 18." in section(md, "Plots")


def test_missing_optional_sections(tmp_path):
    results = make_results(**MET)
    for key in ("generated", "samples", "generators"):
        del results[key]
    paths = write_report(results, tmp_path)
    md, page = paths["md"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")
    assert results_table(results) in md
    assert set(paths["plots"]) == EXPECTED_PLOTS - {"mel_grid", "clarity"}
    assert page.count("data:image/png;base64,") == len(paths["plots"])
    assert "## Generated data quality" not in md and "## Audio samples" not in md
    assert "Mel grid skipped" in md and "clarity > VAE clarity cannot be judged" in md


def test_missing_mels_file_skips_grid_with_a_note(tmp_path):
    results = make_results(**MET)
    paths = write_report(results, tmp_path)  # no samples written
    md = paths["md"].read_text(encoding="utf-8")
    assert "mel_grid" not in paths["plots"]
    assert "Mel grid skipped: samples/mels.npz not found." in md
    assert "missing: samples/real_anger_0.wav" in md


def test_nearly_empty_results_still_give_a_report(tmp_path):
    paths = write_report({"name": "empty"}, tmp_path)
    md = paths["md"].read_text(encoding="utf-8")
    assert paths["plots"] == {} and paths["html"].is_file()
    assert md.startswith("# EmoGen experiment: empty") and "| real | n/a | n/a | n/a | — | n/a |" in md


def test_html_escapes_names_and_values(tmp_path):
    results = make_results(**NOT_MET, name="<script>alert(1)</script>")
    results["config"]["note"] = 'a <b>bold</b> & "quoted" value'
    page = write_report(results, tmp_path)["html"].read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot; value" in page


def test_only_audio_files_are_inlined(tmp_path):
    results = make_results(**MET)
    (tmp_path / "secret.txt").write_text("not for the page")
    results["samples"] = {"wavs": [{"source": "real", "emotion": "anger", "path": "secret.txt"}]}
    page = write_report(results, tmp_path)["html"].read_text(encoding="utf-8")
    assert "not an audio file: secret.txt" in page
    assert base64.b64encode(b"not for the page").decode() not in page and "<audio" not in page


def test_what_this_run_shows_names_the_extra_optimizer_steps():
    from emogen.experiment.report import _findings_section

    results = make_results([1] * 6, [0] * 6, (0.6, 0.3))
    for cond in results["runs"]:
        for run in results["runs"][cond]:
            run["n_train"] = 284 if cond == "real" else 374
    text = " ".join(block.text for block in _findings_section(ExperimentResults.model_validate(results)) if hasattr(block, "text"))
    assert "1.32x the baseline's optimizer steps" in text
    for cond in results["runs"]:
        for run in results["runs"][cond]:
            run["n_train"] = 284
    text = " ".join(block.text for block in _findings_section(ExperimentResults.model_validate(results)) if hasattr(block, "text"))
    assert "optimizer steps" not in text


def test_matched_steps_control_is_a_row_and_a_finding(tmp_path):
    """With the real-only control trained for real+diffusion's steps, the report shows it
    as a row, and says what real+diffusion adds over it, per seed, instead of the hedge."""
    from emogen.experiment.report import _findings_section, results_table

    results = make_results([2] * 6, [0] * 6, (0.6, 0.3))
    metric_names = ("weighted_accuracy", "unweighted_accuracy", "macro_f1")
    results["runs"]["real-matched"] = [
        {**run, "checkpoint": f"runs/x/real-matched/{run['seed']}", "epochs": 4, "train_steps": 72,
         "metrics": _metrics(_confusion([min(PER_CLASS, h + 1) for h in REAL_HITS[run["seed"]]]))}
        for run in results["runs"]["real"]
    ]
    results["conditions"] = ["real", "real-matched", "real+vae", "real+diffusion"]
    real, matched, diffused = (results["runs"][c] for c in ("real", "real-matched", "real+diffusion"))
    ua = "unweighted_accuracy"
    results["gains"]["real-matched"] = {m: _stat([r["metrics"][m] - b["metrics"][m] for r, b in zip(matched, real)]) for m in metric_names}
    results["summary"]["real-matched"] = {m: _stat([r["metrics"][m] for r in matched]) for m in metric_names}
    over = [d["metrics"][ua] - c["metrics"][ua] for d, c in zip(diffused, matched)]
    results["gains_over_matched"] = {"real+diffusion": {ua: _stat(over)}}

    row = table_row(results_table(results), "real, matched steps")
    assert row[2] == pm([r["metrics"][ua] for r in matched])
    text = " ".join(block.text for block in _findings_section(ExperimentResults.model_validate(results)) if hasattr(block, "text"))
    assert f"changes UA by +{np.mean(over) * 100:.1f} points over that control" in text
    assert "per seed " + ", ".join(f"+{v * 100:.1f}" for v in over) in text
    assert "1.32x" not in text and "Every SER trains for the same number of epochs" not in text
    md = write_report(results, tmp_path)["md"].read_text()
    assert "Confusion matrix: real, matched steps" in md


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(42.25, "42.2 s"), (59.96, "1 min 0 s"), (1619.6, "27 min 0 s"), (1565.0, "26 min 5 s"), (3599.7, "1 h 0 min"), (5430.0, "1 h 30 min")],
)
def test_duration_rounds_once_to_the_shown_unit(seconds, text):
    from emogen.experiment.report import _duration

    assert _duration(seconds) == text


def test_total_time_never_shows_60_seconds(tmp_path):
    results = make_results(**MET)
    results["seconds"]["total"] = 1619.6
    md = write_report(results, tmp_path)["md"].read_text(encoding="utf-8")
    assert "Total time: 27 min 0 s" in md and "60 s" not in md


def test_results_json_round_trip_and_versions(tmp_path):
    """results.json written before the version field existed loads as version 1, with the
    same keys; a file of another version fails with one message naming both versions."""
    old = make_results(**MET)
    assert "version" not in old
    (tmp_path / "results.json").write_text(json.dumps(old))
    results = load_results(tmp_path)
    assert results.version == RESULTS_VERSION == 1
    assert results.runs["real+diffusion"][1].metrics.unweighted_accuracy == old["runs"]["real+diffusion"][1]["metrics"]["unweighted_accuracy"]
    saved = results.to_json()
    assert set(old) <= set(saved) and saved["version"] == 1  # the keys stay; the version is written from now on
    for condition, gains in old["gains"].items():
        assert saved["gains"][condition]["unweighted_accuracy"]["values"] == gains["unweighted_accuracy"]["values"]
    assert results_table(ExperimentResults.model_validate(saved)) == results_table(old)

    (tmp_path / "results.json").write_text(json.dumps({**old, "version": 2}))
    with pytest.raises(ValueError, match="results.json version 2 is not readable here: this emogen reads version 1"):
        load_results(tmp_path / "results.json")


# ------------------------------------------------------------------ statistics, probe, per-speaker UA


def _paired(mean: float, n: int, t_p: float | None = None, wilcoxon_p: float | None = None,
            ci: tuple[float, float] | None = None) -> dict:
    paired = {"n": n, "pairs": [f"seed {k}" for k in range(n)], "differences": [mean] * n, "mean": mean}
    if n < 2:
        return {**paired, "note": f"{n} pair: a paired test needs at least 2 pairs"}
    return {**paired, "t_p": t_p, "wilcoxon_p": wilcoxon_p, "ci_low": ci[0], "ci_high": ci[1]}


def _with_comparison(paired: dict, speakers: dict | None = None) -> dict:
    results = make_results(**MET)
    results["comparisons"] = {"real": {"real+diffusion": {"paired": paired, **({"speakers": speakers} if speakers else {})}}}
    return results


def _findings(results: dict) -> str:
    from emogen.experiment.report import _findings_section

    return " ".join(b.text for b in _findings_section(ExperimentResults.model_validate(results)) if hasattr(b, "text"))


@pytest.mark.parametrize(
    ("paired", "phrase", "absent"),
    [
        (_paired(0.05, 6, 0.012, 0.031, (0.01, 0.09)),
         "real+diffusion vs real: UA +5.0 points (95 % CI +1.0 to +9.0; paired t p = 0.012, Wilcoxon p = 0.031; "
         "n = 6 pairs): significant at 5 % by the paired t-test.", "not significant"),
        (_paired(0.021, 3, 0.41, 0.75, (-0.03, 0.072)),
         "real+diffusion vs real: UA +2.1 points (95 % CI −3.0 to +7.2; paired t p = 0.410, Wilcoxon p = 0.750; "
         "n = 3 pairs): not significant by the paired t-test.", "significant at 5 %"),
        (_paired(0.021, 1),
         "real+diffusion vs real: UA +2.1 points from n = 1 pair; the test needs more: a paired test needs at least "
         "2 pairs (run more seeds), so no significance is claimed.", "significant at 5 %"),
    ],
    ids=["significant", "not-significant", "too-few-pairs"],
)
def test_findings_state_significance_from_the_stored_tests(paired, phrase, absent):
    text = _findings(_with_comparison(paired))
    assert phrase in text and absent not in text
    assert "not significance tests" not in text  # the hedge is for results without tests


def test_findings_name_a_disagreeing_wilcoxon_and_the_speaker_bootstrap():
    speakers = {"n": 3, "units": ["emodb:03", "emodb:08", "ravdess:12"], "values": [0.01, 0.04, 0.07], "mean": 0.04,
                "ci_low": 0.01, "ci_high": 0.07}
    text = _findings(_with_comparison(_paired(0.04, 4, 0.03, 0.125, (0.005, 0.075)), speakers))
    assert "significant at 5 % by the paired t-test, though the Wilcoxon test disagrees" in text
    assert "over 3 held-out speakers +4.0 points (bootstrap 95 % CI +1.0 to +7.0)." in text


def test_comparison_table_rows(tmp_path):
    results = _with_comparison(_paired(0.05, 6, 0.0004, 0.031, (0.01, 0.09)),
                               {"n": 3, "mean": 0.04, "ci_low": -0.01, "ci_high": 0.07})
    md = write_report(results, tmp_path)["md"].read_text(encoding="utf-8")
    assert table_row(md, "real+diffusion vs real")[1:] == ["+5.0", "+1.0 to +9.0", "< 0.001", "0.031", "6", "+4.0",
                                                           "−1.0 to +7.0", "3"]


def _with_probe_and_speakers(probe_ua: float) -> dict:
    results = make_results(**MET)
    per_speaker = {0: {"emodb:03": 0.5, "emodb:08": 0.6, "ravdess:12": 0.4}, 1: {"emodb:03": 0.7, "emodb:08": 0.4, "ravdess:12": 0.5}}
    for cond, runs in results["runs"].items():
        for run in runs:
            run["per_speaker"] = {s: ua + (0.1 if cond == "real+diffusion" else 0.0) for s, ua in per_speaker[run["seed"]].items()}
    probe_metrics = dict(results["runs"]["real"][0]["metrics"], unweighted_accuracy=probe_ua, weighted_accuracy=0.55, macro_f1=0.5)
    results["probe"] = {"n_train": 364, "metrics": probe_metrics, "per_speaker": {"emodb:03": 0.3, "emodb:08": 0.9, "ravdess:12": 0.6}}
    return results


@pytest.mark.parametrize(("probe_ua", "phrase"), [(0.80, "is {gap} points below it"), (0.40, "beats it by {gap} points")])
def test_probe_is_a_reference_row_and_a_finding(tmp_path, probe_ua, phrase):
    results = _with_probe_and_speakers(probe_ua)
    real_ua = np.mean([r["metrics"]["unweighted_accuracy"] for r in results["runs"]["real"]])
    md = write_report(results, tmp_path)["md"].read_text(encoding="utf-8")
    assert table_row(results_table(results), "linear probe (reference)")[1:] == [
        "55.0", f"{probe_ua * 100:.1f}", "50.0", _signed_points(probe_ua - real_ua), "1 fit"]
    text = section(md, "What this run shows")
    assert f"reaches UA {probe_ua * 100:.1f}% on the same held-out speakers" in text
    assert phrase.format(gap=f"{abs(real_ua - probe_ua) * 100:.1f}") in text
    quality = section(md, "Generated data quality")
    assert f"scores UA {real_ua * 100:.1f}% on the real held-out clips; the linear probe {probe_ua * 100:.1f}%" in quality


def _signed_points(fraction: float) -> str:
    return ("+" if fraction > 0 else "\u2212") + f"{abs(fraction) * 100:.1f}"


def test_per_speaker_table_and_plot(tmp_path):
    results = _with_probe_and_speakers(0.6)
    paths = write_report(results, tmp_path)
    md = paths["md"].read_text(encoding="utf-8")
    assert set(paths["plots"]) == EXPECTED_PLOTS - {"mel_grid"} | {"per_speaker_ua"}  # no samples written
    assert "](plots/per_speaker_ua.png)" in md
    table = section(md, "Speech-emotion recognition").split("### UA per held-out speaker (%)")[1]
    assert table_row(table, "speaker")[1:] == ["real", "real+VAE", "real+diffusion", "linear probe (reference)"]
    assert table_row(table, "emodb:03")[1:] == ["60.0", "60.0", "70.0", "30.0"]  # mean over the seeds' 50 and 70
    assert table_row(table, "ravdess:12")[1:] == ["45.0", "45.0", "55.0", "60.0"]


def test_new_fields_round_trip_as_version_1(tmp_path):
    from emogen.experiment.results import comparisons

    results = ExperimentResults.model_validate(_with_probe_and_speakers(0.6))
    results.comparisons = comparisons(results.runs)
    (tmp_path / "results.json").write_text(json.dumps(results.to_json()))
    loaded = load_results(tmp_path)
    assert loaded.version == 1 and loaded.to_json() == results.to_json()
    assert loaded.probe.per_speaker["emodb:08"] == 0.9 and loaded.runs["real"][0].per_speaker["emodb:03"] == 0.5


def test_comparisons_pair_by_seed_and_average_speakers_over_seeds():
    from emogen.experiment.results import comparisons

    results = ExperimentResults.model_validate(_with_probe_and_speakers(0.6))
    del results.runs["real+vae"][1]  # seed 1 has no real+vae run: one pair
    found = comparisons(results.runs)
    assert set(found) == {"real"}  # no matched-steps control in these results
    vae, diffusion = found["real"]["real+vae"], found["real"]["real+diffusion"]
    assert vae.paired.n == 1 and vae.paired.t_p is None and diffusion.paired.n == 2
    assert diffusion.paired.differences == pytest.approx(
        [d.metrics.unweighted_accuracy - r.metrics.unweighted_accuracy for d, r in zip(results.runs["real+diffusion"], results.runs["real"])])
    assert diffusion.speakers.units == ["emodb:03", "emodb:08", "ravdess:12"]
    assert diffusion.speakers.values == pytest.approx([0.1, 0.1, 0.1])  # +0.1 for every speaker and seed


def test_findings_without_a_t_test_say_why():
    paired = {"n": 3, "pairs": ["seed 0", "seed 1", "seed 2"], "differences": [0.0167] * 3, "mean": 0.0167,
              "wilcoxon_p": 0.25, "note": "all differences are equal: the t-test has no spread to test against"}
    text = _findings(_with_comparison(paired))
    assert ("real+diffusion vs real: UA +1.7 points over n = 3 pairs; no paired t-test (all differences are equal: "
            "the t-test has no spread to test against), so no significance is claimed.") in text
    assert "significant at 5 %" not in text and "not significant" not in text


# ------------------------------------------------------------------ speaker folds and judges

FOLD_TEST = {0: ["emodb:03", "ravdess:12"], 1: ["emodb:08", "ravdess:01"]}
FOLD_VAL = {0: ["emodb:08"], 1: ["ravdess:12"]}
FOLD_SPLITS = {0: {"train": 250, "val": 40, "test": 60}, 1: {"train": 240, "val": 44, "test": 60}}
PROBE_HITS = {0: [8, 7, 6, 8, 5, 6], 1: [7, 6, 6, 7, 6, 5]}
SER_JUDGE_UA = [0.50, 0.56]  # per fold
# over the 4 fold x seed sets: the SER judge ranks diffusion first, the filter the VAE, so the
# findings show which judge they went by
CLARITY = {
    "vae": {"filter": [0.70, 0.72, 0.68, 0.70], "ser-judge": [0.30, 0.34, 0.26, 0.30], "ser-judge kept": [0.40, 0.42, 0.38, 0.40],
            "probe": [0.20, 0.22, 0.18, 0.20], "probe kept": [0.25, 0.27, 0.23, 0.25]},
    "diffusion": {"filter": [0.60, 0.62, 0.58, 0.60], "ser-judge": [0.40, 0.44, 0.36, 0.40], "ser-judge kept": [0.50, 0.54, 0.46, 0.50],
                  "probe": [0.30, 0.32, 0.28, 0.30], "probe kept": [0.35, 0.37, 0.33, 0.35]},
}


TWO_SAMPLE = {"vae": [0.95, 0.97, 0.93, 0.95], "diffusion": [0.66, 0.70, 0.62, 0.66]}  # VAE misses 0.80, diffusion meets 0.70
SILENT = {"vae": [0.0, 0.01, 0.0, 0.01], "diffusion": [0.17, 0.19, 0.18, 0.18]}  # against real 20 %: VAE misses, diffusion within 5


def make_fold_results() -> dict:
    """A results.json dict of 2 speaker folds x 2 seeds, built as emogen.experiment.run builds one:
    summary and gains left to the model (paired by fold and seed), the probe pooled from its
    per-fold fits, and clarity by the filter and by the two judges that chose nothing."""
    from emogen.experiment.results import ProbeRun, pool_probes

    extras = {"real": [0] * 6, "real+vae": [0, 1, 0, 0, 0, 0], "real+diffusion": [1, 1, 1, 0, 0, 0]}
    runs = {cond: [{"fold": fold, "seed": seed, "checkpoint": f"runs/x/f{fold}/{cond}/{seed}", "n_train": 250 - 10 * fold,
                    "n_generated": 0 if cond == "real" else 120, "epochs": 3, "train_steps": 54,
                    "metrics": _metrics(_confusion([min(PER_CLASS, max(0, h + e - fold)) for h, e in zip(REAL_HITS[seed], extra)])),
                    "per_speaker": {s: 0.5 + 0.1 * seed for s in FOLD_TEST[fold]}}
                   # listed out of order: the table sorts by (fold, seed)
                   for fold, seed in ((1, 1), (0, 1), (1, 0), (0, 0))]
            for cond, extra in extras.items()}
    probes = [{"fold": fold, "n_train": 290, "metrics": _metrics(_confusion(PROBE_HITS[fold])),
               "per_speaker": {s: 0.4 for s in FOLD_TEST[fold]}} for fold in (0, 1)]
    probe = pool_probes([ProbeRun.model_validate(p) for p in probes]).model_dump(mode="json", exclude_none=True)
    judges = [{"fold": fold, "seed": 1000, "checkpoint": f"runs/x/f{fold}/judge", "epochs": 3,
               "metrics": {**_metrics(_confusion(REAL_HITS[0])), "unweighted_accuracy": ua}}
              for fold, ua in zip((0, 1), SER_JUDGE_UA)]
    probe_ua = [p["metrics"]["unweighted_accuracy"] for p in probes]

    def judged(gen: str, judge: str, judge_ua: list[float]) -> dict:
        return {"judge_ua": _stat(judge_ua), "all": _stat(CLARITY[gen][judge]), "kept": _stat(CLARITY[gen][f"{judge} kept"]),
                "all_per_emotion": {e: CLARITY[gen][judge][0] + 0.01 * k for k, e in enumerate(EMOTIONS)},
                "kept_per_emotion": {e: CLARITY[gen][f"{judge} kept"][0] for e in EMOTIONS[:4]}}  # two emotions kept nothing

    generated = {gen: {"n_per_emotion": 50, "n_clips": 300, "n_kept": 250, "clarity": _stat(CLARITY[gen]["filter"]),
                       "clarity_per_emotion": {e: CLARITY[gen]["filter"][0] for e in EMOTIONS},
                       "fid": {**_stat([12.0, 12.6, 11.4, 12.0]), "n_real": 60, "n_generated": 300},
                       "inception_score": _stat([3.0, 3.2, 2.8, 3.0]),
                       "judged": {"ser-judge": judged(gen, "ser-judge", SER_JUDGE_UA), "probe": judged(gen, "probe", probe_ua)},
                       "realism": {"two_sample_accuracy": _stat(TWO_SAMPLE[gen]), "n_per_side": 60,
                                   "silent_frames": _stat(SILENT[gen]), "real_silent_frames": 0.2,
                                   "real_two_sample_accuracy": 0.74}}
                 for gen in ("vae", "diffusion")}
    folds = [{"fold": fold, "test_speakers": FOLD_TEST[fold], "val_speakers": FOLD_VAL[fold], "split_counts": FOLD_SPLITS[fold],
              "class_counts": {"test": {e: PER_CLASS // 2 for e in EMOTIONS}}} for fold in (0, 1)]
    return {
        "name": "folds", "preset": "demo", "seeds": [0, 1], "n_folds": 2,
        "conditions": ["real", "real+vae", "real+diffusion"], "runs": runs,
        "probe": probe, "probes": probes, "judges": judges, "generated": generated,
        "data": {"features": "runs/demo/data", "split_counts": {"test": 120}, "class_counts": {"test": {e: 20 for e in EMOTIONS}},
                 "test_speakers": sorted(s for f in FOLD_TEST.values() for s in f), "folds": folds},
        "targets": {"ua_gain_points": 3.0, "clarity_met": True},
    }


@pytest.fixture(scope="module")
def fold_report(tmp_path_factory):
    results = make_fold_results()
    paths = write_report(results, tmp_path_factory.mktemp("folds"))
    return results, paths, paths["md"].read_text(encoding="utf-8")


def table_rows(md: str, first_cell: str) -> list[list[str]]:
    """Every table row starting with first_cell."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines() if line.startswith("|")]
    return [row for row in rows if row[0] == first_cell]


def test_folds_design_sentence(fold_report):
    text = section(fold_report[2], "What this run shows")
    assert ("The design is 2 speaker folds × 2 seeds = 4 paired runs per condition; every one of the 4 speakers is "
            "tested once, by the SERs of the fold that holds it out (120 real test clips in all).") in text
    assert "Each condition was run with" not in text  # the single-split wording
    assert "gains per fold and seed" in text and "per-seed gains" not in text


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
        _signed_points(np.mean(probe_ua) - real_ua), "2 fits, one per fold"]
    text = section(md, "What this run shows")
    assert (f"fit on each fold's real training and validation clips: 2 fits) reaches UA {np.mean(probe_ua) * 100:.1f}% "
            f"(± {np.std(probe_ua, ddof=1) * 100:.1f} over folds) on the same folds' held-out speakers") in text


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
            [label, "filter (each fold and seed's baseline SER; chose the kept clips)", pm(clarity["filter"]),
             "n/a (it chose them)", real_ua, "16.7"],
            [label, "SER judge (train+val, own seed)", pm(clarity["ser-judge"]), pm(clarity["ser-judge kept"]),
             pm(SER_JUDGE_UA), "16.7"],
            [label, "linear probe", pm(clarity["probe"]), pm(clarity["probe kept"]), probe_ua, "16.7"],
        ]
    assert ("The SER judge scores UA 53.0% on the real held-out clips (+36.3 points from chance) and classifies "
            "30.0% of the VAE clips (between chance and its own UA) and 40.0% of the diffusion clips (between chance "
            "and its own UA) as the requested emotion.") in judges
    assert "only meaningful relative to the judge's own UA on the real held-out clips and to chance (16.7% with 6 emotions)" in judges
    assert "its clarity of those is high by construction and is not evidence" in judges


def test_clarity_per_emotion_by_the_ser_judge(fold_report):
    md = fold_report[2]
    table = section(md, "Generated data quality").split("### Clarity per emotion by the SER judge (%)")[1]
    assert table_row(table, "emotion")[1:] == ["VAE, all", "VAE, kept", "diffusion, all", "diffusion, kept"]
    assert table_row(table, EMOTIONS[1])[1:] == ["31.0", "40.0", "41.0", "50.0"]
    assert table_row(table, EMOTIONS[5])[1:] == ["35.0", "n/a", "45.0", "n/a"]  # kept nothing of that emotion


def test_findings_clarity_goes_by_the_ser_judge(fold_report):
    text = section(fold_report[2], "What this run shows")
    assert "Emotional clarity by the SER judge" in text
    # the filter would rank the VAE first (70.0% vs 60.0%): the verdict is the SER judge's
    assert "is 40.0% for diffusion and 30.0% for the VAE, so the target diffusion clarity > VAE clarity is met." in text


def test_folds_table_lists_each_folds_speakers(fold_report):
    data = section(fold_report[2], "Data")
    for fold in (0, 1):
        assert table_row(data, str(fold))[1:] == [", ".join(FOLD_TEST[fold]), ", ".join(FOLD_VAL[fold]),
                                                  *(str(FOLD_SPLITS[fold][s]) for s in ("train", "val", "test"))]
    assert "every speaker is tested once (4 speakers over 2 folds)" in data
    assert "Test speakers (held out of every training set)" not in data
    assert table_row(data, "all")[1:] == ["120"]


def test_fold_report_plots(fold_report):
    _, paths, md = fold_report
    assert {"ser_scores", "clarity", "per_speaker_ua", "confusion_real"} <= set(paths["plots"])
    assert "*Clarity by the SER judge" in md and "summed over fold × seed runs" in md


def test_old_results_keep_the_single_split_report(tmp_path):
    """A results.json from before folds and judges: no fold column, no judge table, the
    filter's clarity beside FID, the seeds wording and the test speakers line."""
    old = _with_probe_and_speakers(0.6)
    md = write_report(old, tmp_path)["md"].read_text(encoding="utf-8")
    assert "Each condition was run with 2 seeds" in section(md, "What this run shows")
    assert "### Per seed" in md and "Per fold and seed" not in md and table_row(md, "seed")[0] == "seed"
    assert table_row(results_table(old), "linear probe (reference)")[-1] == "1 fit"
    assert "### Clarity by judge" not in md and table_row(md, "generator")[1] == "clarity"
    assert "### Clarity per emotion (%)" in md
    assert "Test speakers (held out of every training set): emodb:03, emodb:08, ravdess:12" in section(md, "Data")
    assert "Emotional clarity (the real-trained SER's accuracy" in section(md, "What this run shows")


def _without(results: dict, path: str) -> dict:
    """A copy of results with the key at a dotted path (generator keys: every generator) removed."""
    results = json.loads(json.dumps(results))
    *parents, key = path.split(".")
    nodes = [results]
    for parent in parents:
        nodes = [child for node in nodes for child in ((node[parent],) if parent != "*" else node.values())]
    for node in nodes:
        node.pop(key, None)
    return results


@pytest.mark.parametrize("path", [
    "n_folds", "probes", "probe", "probe.fold_ua", "judges", "data", "data.folds", "seeds",
    "generated.*.judged", "generated.*.judged.ser-judge", "generated.*.judged.probe", "generated.*.judged.ser-judge.kept",
    "generated.*.judged.ser-judge.all_per_emotion", "generated.*.judged.ser-judge.kept_per_emotion",
    "generated.vae.judged", "generated.diffusion", "generated.*.fid.n_real",
])
def test_partial_fold_results_still_report(tmp_path, path):
    results = _without(make_fold_results(), path)
    paths = write_report(results, tmp_path)
    md = paths["md"].read_text(encoding="utf-8")
    assert results_table(results) in md and paths["html"].is_file()


def test_clarity_never_mixes_judges(tmp_path):
    """One generator without the SER judge: findings, per-emotion table and plot all go by
    the filter (a comparison across judges would mean nothing); the judge table still shows
    what there is."""
    results = _without(make_fold_results(), "generated.vae.judged")
    md = write_report(results, tmp_path)["md"].read_text(encoding="utf-8")
    assert "is 60.0% for diffusion and 70.0% for the VAE, so the target diffusion clarity > VAE clarity is not met" in md
    assert "### Clarity per emotion (%)" in md and "by the SER judge (%)" not in md
    assert "*Accuracy of the real-trained SER on generated clips" in md
    judge_rows = section(md, "Generated data quality").split("### Clarity by judge")[1].split("###")[0]
    assert len(table_rows(judge_rows, "VAE")) >= 1 and [r[1] for r in table_rows(judge_rows, "diffusion")][-3:] == [
        "filter (each fold and seed's baseline SER; chose the kept clips)", "SER judge (train+val, own seed)", "linear probe"]


def test_realism_table_and_sentence(fold_report):
    _, _, md = fold_report
    quality = section(md, "Generated data quality").split("### Realism")[1]
    assert table_rows(quality, "VAE") == [["VAE", pm(TWO_SAMPLE["vae"], 1, 2), "0.74", "≤ 0.80 (not met)", "60",
                                           pm(SILENT["vae"]), "20.0", "within 5 points (not met)"]]
    assert table_rows(quality, "diffusion") == [["diffusion", pm(TWO_SAMPLE["diffusion"], 1, 2), "0.74", "≤ 0.70 (met)", "60",
                                                 pm(SILENT["diffusion"]), "20.0", "within 5 points (met)"]]
    assert ("tells generated mels from held-out real ones with accuracy 0.95 for VAE (target ≤ 0.80: not met), "
            "0.66 for diffusion (target ≤ 0.70: met) (0.50 = indistinguishable, against 0.74 for the training speakers' "
            "real clips)") in section(md, "What this run shows")


def test_attention_figures_are_shown_when_their_pngs_exist(tmp_path):
    from matplotlib.figure import Figure

    results = make_fold_results()
    (tmp_path / "samples").mkdir()
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().imshow(np.eye(4))
    fig.savefig(tmp_path / "samples" / "attention_fear.png")
    results["samples"] = {"attention": {"fear": "samples/attention_fear.png", "anger": "samples/attention_anger.png"}}
    paths = write_report(results, tmp_path)
    md, html = paths["md"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")
    attention = section(md, "Diffusion attention")
    assert "Diffusion attention: fear" in attention and "samples/attention_fear.png" in attention
    assert "anger" not in attention  # its PNG is missing: skipped, not a broken link
    assert "Diffusion attention: fear" in html and html.count("data:image/png;base64,") >= 1
