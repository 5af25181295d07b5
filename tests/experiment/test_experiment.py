"""The augmentation experiment end to end: one tiny job in the session's Ray, run once by
the module fixture, then its numbers, folds, report, WAVs and MLflow runs checked one
aspect per test, and a resume that retrains nothing (last: it reruns the same folder)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emogen.config import EMOTIONS
from emogen.data.features import read_features
from emogen.experiment.config import experiment_config
from emogen.experiment.results import CONDITIONS, GENERATED_FROM, GENERATORS, SCORES
from emogen.experiment.run import run_experiment

NAME = "tiny-e2e"
PER_EMOTION = 3
FOLDS = 2  # the tiny preset's
# emogen.experiment's progress stages, each timed in results["seconds"]
STAGES = {"train_ser_real", "train_vae", "train_diffusion", "generate", "train_ser_augmented", "evaluate", "samples", "report"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _run(features, out, tracking_uri):
    config = experiment_config("tiny", {"seeds": [0], "per_emotion": PER_EMOTION})
    results = run_experiment(features, out, preset="tiny", config=config, name=NAME, tracking_uri=tracking_uri)
    return {**results.to_json(), "report": results.report}  # results.json's dict, and where the report went


@pytest.fixture(scope="module")
def tiny_experiment(tiny_features, tracking_uri, tmp_path_factory):
    """One tiny experiment (2 folds, 1 seed, 3 clips per emotion) in the session's 2-CPU Ray, shared by this module."""
    out = tmp_path_factory.mktemp("experiment") / "exp"
    return out, _run(tiny_features, out, tracking_uri)


@pytest.fixture(scope="module")
def stages(tiny_experiment):
    """stages.json as the first run left it."""
    out, _ = tiny_experiment
    return json.loads((out / "stages.json").read_text())


@pytest.fixture(scope="module")
def fold_of(tiny_experiment):
    """results["data"]["folds"] by fold."""
    _, results = tiny_experiment
    return {f["fold"]: f for f in results["data"]["folds"]}


def _jsonable(data):
    return json.loads(json.dumps(data, default=float))


def _accepted(tiny_features):
    return json.loads((tiny_features / "summary.json").read_text())["accepted"]


def _tested(results):
    """Every fold's test speakers, in fold order."""
    return [s for f in results["data"]["folds"] for s in f["test_speakers"]]


def _by_pair(results):
    """{condition: {(fold, seed): run}}."""
    return {c: {(r["fold"], r["seed"]): r for r in results["runs"][c]} for c in CONDITIONS}


# ------------------------------------------------------------------ the tiny job


def test_results_json_holds_the_returned_numbers(tiny_experiment):
    out, results = tiny_experiment

    # results.json holds exactly the returned numbers (the report paths are added after)
    saved = json.loads((out / "results.json").read_text())
    assert saved == _jsonable({k: v for k, v in results.items() if k != "report"})
    assert results["seeds"] == [0] and results["preset"] == "tiny" and results["conditions"] == list(CONDITIONS)
    assert results["n_folds"] == FOLDS


def test_folds_test_every_speaker_once(tiny_experiment, tiny_features):
    _, results = tiny_experiment

    # the folds: test speakers disjoint, every speaker tested exactly once, validation
    # speakers never a fold's own test speakers, and each fold's clips all assigned
    table = read_features(tiny_features)
    accepted = _accepted(tiny_features)
    folds = results["data"]["folds"]
    assert [f["fold"] for f in folds] == list(range(FOLDS))
    tested = _tested(results)
    assert sorted(tested) == sorted(set(tested)) == sorted(table["speaker"].astype(str).unique())
    assert results["data"]["test_speakers"] == sorted(tested)
    for f in folds:
        assert not set(f["val_speakers"]) & set(f["test_speakers"]) and f["val_speakers"]
        assert sum(f["split_counts"].values()) == accepted and min(f["split_counts"].values()) > 0
        assert {s: sum(f["class_counts"][s].values()) for s in f["split_counts"]} == f["split_counts"]
    assert results["data"]["split_counts"] == {"test": accepted}


def test_generators_train_on_their_fold_only(tiny_experiment, stages, fold_of):
    _, results = tiny_experiment

    # no leakage: each fold's generators trained on that fold's training (and validation)
    # speakers only: their split is the fold's, and a training never reads the test split
    for fold in range(FOLDS):
        for gen in GENERATORS:
            assert stages[f"fold{fold}/{gen}"]["split_counts"] == {**fold_of[fold]["split_counts"], "extra_train": 0}
    per_fold = results["generators_per_fold"]
    assert [r["fold"] for r in per_fold["vae"]] == list(range(FOLDS))
    assert len({r["checkpoint"] for g in GENERATORS for r in per_fold[g]}) == FOLDS * len(GENERATORS)


def test_every_ser_is_scored_on_its_folds_held_out_speakers(tiny_experiment, stages, fold_of):
    _, results = tiny_experiment

    # every SER: one per fold and seed, scores in [0, 1] and consistent with its confusion
    # matrix on its fold's held-out speakers
    for condition in CONDITIONS:
        runs = results["runs"][condition]
        assert [(r["fold"], r["seed"]) for r in runs] == [(f, 0) for f in range(FOLDS)]
        for run in runs:
            fold = fold_of[run["fold"]]
            counts, class_counts = fold["split_counts"], fold["class_counts"]
            m = run["metrics"]
            assert all(0.0 <= m[s] <= 1.0 for s in SCORES), m
            cm = np.asarray(m["confusion"])
            assert cm.shape == (6, 6) and cm.sum() == m["count"] == counts["test"]
            assert cm.sum(axis=1).tolist() == [class_counts["test"][e] for e in EMOTIONS]
            assert m["weighted_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
            present = cm.sum(axis=1) > 0
            assert m["unweighted_accuracy"] == pytest.approx((np.diag(cm)[present] / cm.sum(axis=1)[present]).mean())
            assert run["epochs"] >= 1 and len(run["history"]) == run["epochs"] and Path(run["checkpoint"]).is_dir()
            # UA of every held-out speaker of the fold, and of no other
            assert set(run["per_speaker"]) == set(fold["test_speakers"])
            assert all(0.0 <= ua <= 1.0 for ua in run["per_speaker"].values())
            assert run["train_steps"] == run["history"][-1]["steps"] >= run["epochs"]
            if condition in ("real", "real-matched"):
                assert run["n_generated"] == 0 and run["n_train"] == counts["train"]
            else:
                gen = stages[f"fold{run['fold']}/generated/{GENERATED_FROM[condition]}/{run['seed']}"]
                # the augmented SER trained on the fold's real split plus the generated clips that were kept
                assert run["n_generated"] == gen["n_kept"] == len(read_features(gen["dir"])) > 0
                assert run["n_train"] == counts["train"] + gen["n_kept"]
        for score in SCORES:
            values = [r["metrics"][score] for r in runs]
            assert results["summary"][condition][score]["values"] == values
            assert results["summary"][condition][score]["mean"] == pytest.approx(np.mean(values))


def test_the_control_trains_for_real_diffusions_steps(tiny_experiment):
    _, results = tiny_experiment

    # the control: real clips only, epochs scaled to real+diffusion's clips per epoch (tiny: 2 epochs, no early stop)
    by_pair = _by_pair(results)
    for pair, real in by_pair["real"].items():
        matched, diffused = by_pair["real-matched"][pair], by_pair["real+diffusion"][pair]
        assert matched["epochs"] == round(real["epochs"] * diffused["n_train"] / real["n_train"]) > real["epochs"]
        assert matched["train_steps"] > real["train_steps"]
    control = [by_pair["real+diffusion"][p]["metrics"]["unweighted_accuracy"] - by_pair["real-matched"][p]["metrics"]["unweighted_accuracy"]
               for p in sorted(by_pair["real"])]
    assert results["gains_over_matched"]["real+diffusion"]["unweighted_accuracy"]["values"] == pytest.approx(control)


def test_gains_pair_each_run_with_its_baseline(tiny_experiment):
    _, results = tiny_experiment
    by_pair = _by_pair(results)

    # gains are per fold and seed against that pair's real-only baseline
    for condition in CONDITIONS[1:]:
        expected = [r["metrics"]["unweighted_accuracy"] - by_pair["real"][(r["fold"], r["seed"])]["metrics"]["unweighted_accuracy"]
                    for r in results["runs"][condition]]
        assert results["gains"][condition]["unweighted_accuracy"]["values"] == pytest.approx(expected)


def test_the_linear_probe_per_fold_and_pooled(tiny_experiment, tiny_features, fold_of):
    _, results = tiny_experiment
    accepted, tested = _accepted(tiny_features), _tested(results)

    # the linear probe: per fold, fit on train+val and scored on the fold's held-out
    # speakers; pooled: UA averaged over folds, every speaker's UA from its fold
    probes = results["probes"]
    assert [p["fold"] for p in probes] == list(range(FOLDS))
    for probe in probes:
        counts = fold_of[probe["fold"]]["split_counts"]
        assert probe["n_train"] == counts["train"] + counts["val"] and probe["metrics"]["count"] == counts["test"]
        assert set(probe["per_speaker"]) == set(fold_of[probe["fold"]]["test_speakers"])
    pooled = results["probe"]
    assert pooled["metrics"]["unweighted_accuracy"] == pytest.approx(np.mean([p["metrics"]["unweighted_accuracy"] for p in probes]))
    assert pooled["metrics"]["count"] == accepted and set(pooled["per_speaker"]) == set(tested)
    assert pooled["fold_ua"]["values"] == [p["metrics"]["unweighted_accuracy"] for p in probes]


def test_the_judge_ser_of_each_fold(tiny_experiment, stages, fold_of):
    _, results = tiny_experiment

    # the judge SER of each fold: trained on train+val (no validation split) with its own seed
    judges = results["judges"]
    assert [(j["fold"], j["seed"]) for j in judges] == [(f, 1000) for f in range(FOLDS)]
    for judge in judges:
        assert judge["metrics"]["count"] == fold_of[judge["fold"]]["split_counts"]["test"]
        history = stages[f"fold{judge['fold']}/judge"]["history"]
        assert history and not any(k.startswith("val_") for k in history[-1])
        assert judge["checkpoint"] not in {r["checkpoint"] for r in results["runs"]["real"]}


def test_paired_statistics_over_fold_and_seed_pairs(tiny_experiment):
    out, results = tiny_experiment
    by_pair, tested = _by_pair(results), _tested(results)

    # paired statistics over fold x seed pairs: every condition against real, the generated ones against the control
    comparisons = results["comparisons"]
    assert set(comparisons["real"]) == set(CONDITIONS[1:]) and set(comparisons["real-matched"]) == set(GENERATED_FROM)
    for reference, per_condition in comparisons.items():
        for condition, comparison in per_condition.items():
            paired = comparison["paired"]
            pairs = sorted(by_pair["real"])
            assert paired["n"] == FOLDS and paired["pairs"] == [f"fold {f} seed {s}" for f, s in pairs]
            assert paired["differences"] == pytest.approx([
                by_pair[condition][p]["metrics"]["unweighted_accuracy"] - by_pair[reference][p]["metrics"]["unweighted_accuracy"]
                for p in pairs])
            assert comparison["speakers"]["n"] == len(tested)
    report_md = (out / "report.md").read_text()
    assert "| linear probe (reference) |" in report_md


def test_generated_sets_sizes_clarity_realism(tiny_experiment, fold_of):
    _, results = tiny_experiment
    judges, pooled = results["judges"], results["probe"]

    # generated sets: sizes, the filter's clarity, the judges' clarity of all and kept clips, FID, IS
    for gen in GENERATORS:
        info = results["generated"][gen]
        assert info["n_per_emotion"] == PER_EMOTION and info["n_clips"] == PER_EMOTION * len(EMOTIONS)
        assert 0 < info["n_kept"] <= info["n_clips"]
        assert 0.0 <= info["clarity"]["mean"] <= 1.0 and set(info["clarity_per_emotion"]) == set(EMOTIONS)
        for judge, judged in info["judged"].items():
            assert len(judged["all"]["values"]) == len(judged["kept"]["values"]) == FOLDS
            assert all(0.0 <= v <= 1.0 for v in judged["all"]["values"] + judged["kept"]["values"])
            assert set(judged["all_per_emotion"]) == set(EMOTIONS)
            own = [j["metrics"]["unweighted_accuracy"] for j in judges] if judge == "ser-judge" else pooled["fold_ua"]["values"]
            assert judged["judge_ua"]["values"] == pytest.approx(own)
        assert set(info["judged"]) == {"ser-judge", "probe"}
        # realism against the fold's held-out real clips: equal sides (fewer generated clips than real here)
        realism = info["realism"]
        assert realism["n_per_side"] == min(info["n_clips"], fold_of[0]["split_counts"]["test"])
        assert len(realism["two_sample_accuracy"]["values"]) == FOLDS
        assert all(0.0 <= v <= 1.0 for v in realism["two_sample_accuracy"]["values"] + realism["silent_frames"]["values"])
        assert 0.0 < realism["real_silent_frames"] < 1.0  # the tiny corpus's clips have padding and pauses
        assert 0.0 <= realism["real_two_sample_accuracy"] <= 1.0
        assert math.isfinite(info["fid"]["mean"]) and info["fid"]["mean"] >= -1e-6
        assert 1.0 - 1e-6 <= info["inception_score"]["mean"] <= len(EMOTIONS) + 1e-6
        assert Path(results["generators"][gen]["checkpoint"]).exists() and results["generators"][gen]["epochs"] >= 1
    assert results["generators"]["diffusion"]["space"] == "mel"  # the tiny preset


def test_report_plots_and_samples(tiny_experiment, fold_of):
    out, results = tiny_experiment

    # report, plots, samples
    assert results["report"] == {"md": str(out / "report.md"), "html": str(out / "report.html")}
    html = (out / "report.html").read_text()
    assert "real+diffusion" in html and "real+diffusion" in (out / "report.md").read_text()
    plots = {p.stem for p in (out / "plots").glob("*.png")}
    assert {"ser_scores", "mel_grid", "confusion_real", "confusion_real_diffusion", "per_speaker_ua"} <= plots
    wavs = results["samples"]["wavs"]
    real_emotions = {e for e in EMOTIONS if fold_of[0]["class_counts"]["test"][e] > 0}
    assert {(w["source"], w["emotion"]) for w in wavs} == {("real", e) for e in real_emotions} | {
        (g, e) for g in GENERATORS for e in EMOTIONS
    }
    for wav in wavs:
        data, rate = sf.read(out / wav["path"])
        assert rate == 22050 and data.ndim == 1 and len(data) == 4 * 22050
        assert np.isfinite(data).all() and np.abs(data).max() > 0
    assert len(np.load(out / results["samples"]["mels"]).files) == len(wavs)
    # the first fold's diffusion attention while generating each emotion, shown in the report
    attention = results["samples"]["attention"]
    assert set(attention) == set(EMOTIONS)
    assert all((out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in attention.values())
    assert "Diffusion attention: fear" in (out / "report.md").read_text()


def test_seconds_per_stage_and_total(tiny_experiment):
    _, results = tiny_experiment
    per_fold = results["generators_per_fold"]

    # seconds per stage and the total
    seconds = results["seconds"]
    assert set(seconds) == STAGES | {"total"} and all(v >= 0 for v in seconds.values())
    for gen in GENERATORS:  # a generator's stage includes its folds' Ray Train runs
        assert seconds[f"train_{gen}"] >= sum(r["seconds"] for r in per_fold[gen]) - 0.1
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"), abs=0.2)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_experiment_mlflow_parent_and_children(tiny_experiment):
    from mlflow.tracking import MlflowClient

    _, results = tiny_experiment
    client = MlflowClient(tracking_uri=results["mlflow"]["tracking_uri"])
    parent_id = results["mlflow"]["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.data.tags["emogen.run_name"] == f"experiment-{NAME}"
    assert parent.data.params["preset"] == "tiny" and parent.data.params["per_emotion"] == str(PER_EMOTION)
    assert parent.data.metrics["real.unweighted_accuracy.mean"] == pytest.approx(
        results["summary"]["real"]["unweighted_accuracy"]["mean"])
    assert parent.data.metrics["real_diffusion.ua_gain.mean"] == pytest.approx(
        results["gains"]["real+diffusion"]["unweighted_accuracy"]["mean"])
    assert parent.data.metrics["real_diffusion.ua_gain_over_matched.mean"] == pytest.approx(
        results["gains_over_matched"]["real+diffusion"]["unweighted_accuracy"]["mean"])
    assert "vae.clarity" in parent.data.metrics and "seconds.total" in parent.data.metrics
    assert parent.data.metrics["probe.unweighted_accuracy"] == pytest.approx(results["probe"]["metrics"]["unweighted_accuracy"])
    report = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/results.json", "report/report.html", "report/report.md"} <= report

    children = client.search_runs([results["mlflow"]["experiment_id"]], f"tags.mlflow.parentRunId = '{parent_id}'")
    by_name = {r.data.tags["emogen.run_name"]: r for r in children}
    assert set(by_name) == {
        name for f in range(FOLDS) for name in (
            f"vae-f{f}-{NAME}", f"diffusion-f{f}-{NAME}", f"ser-judge-f{f}-s1000-{NAME}",
            *(f"ser-{c}-f{f}-s0-{NAME}" for c in ("real", "real-matched", "real_vae", "real_diffusion")))
    }
    for name, run in by_name.items():
        # per-epoch metrics reached the child run (the judge has no validation split)
        assert ("train_loss" if "judge" in name else "val_loss") in run.data.metrics, name
    assert by_name[f"vae-f0-{NAME}"].info.run_id == results["generators"]["vae"]["mlflow_run_id"]

    # each fold's generators and baseline SER registered, tagged with where they came from
    versions = {name: client.search_model_versions(f"name = '{name}'") for name in ("emogen-vae", "emogen-diffusion", "emogen-ser")}
    for name, found in versions.items():
        assert sorted(v.tags["emogen.fold"] for v in found) == [str(f) for f in range(FOLDS)], name
        assert all(v.tags["emogen.experiment"] == NAME for v in found)
    assert {v.run_id for v in versions["emogen-ser"]} == {by_name[f"ser-real-f{f}-s0-{NAME}"].info.run_id for f in range(FOLDS)}
    assert all(0 <= float(v.tags["emogen.ua"]) <= 1 and v.tags["emogen.seed"] == "0" for v in versions["emogen-ser"])
    assert all(0 <= float(v.tags["emogen.clarity_by_ser_judge"]) <= 1 for v in versions["emogen-diffusion"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rerun_resumes_without_training(tiny_experiment, tiny_features, tracking_uri, monkeypatch):
    """A second run on the same folder retrains and regenerates nothing and gives the same numbers."""
    from mlflow.tracking import MlflowClient

    out, first = tiny_experiment
    stages_before = json.loads((out / "stages.json").read_text())
    checkpoints = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    assert len(checkpoints) >= 7 * FOLDS  # per fold a VAE, a diffusion U-Net, 4 SERs and the judge

    def retrained(*args, **kwargs):
        raise AssertionError("the resumed experiment trained or generated again")

    monkeypatch.setattr("emogen.training.fit", retrained)
    monkeypatch.setattr("emogen.training.start_child_run", retrained)
    monkeypatch.setattr("emogen.experiment.tasks.train_ser_task", retrained)
    monkeypatch.setattr("emogen.experiment.tasks.generate_task", retrained)

    again = _run(tiny_features, out, tracking_uri)

    assert json.loads((out / "stages.json").read_text()) == stages_before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == checkpoints
    assert again["summary"] == first["summary"] and again["gains"] == first["gains"]
    assert again["generated"] == first["generated"]
    assert again["probe"] == first["probe"] and again["comparisons"] == first["comparisons"]
    assert again["judges"] == first["judges"] and again["data"] == first["data"]
    for condition in CONDITIONS:
        assert [r["metrics"]["confusion"] for r in again["runs"][condition]] == [
            r["metrics"]["confusion"] for r in first["runs"][condition]]
    assert again["mlflow"]["parent_run_id"] == first["mlflow"]["parent_run_id"]
    assert set(again["seconds"]) == STAGES | {"total"}  # every stage ran, the trainings as no-ops
    assert all(again["seconds"][s] < 5 for s in ("train_vae", "train_diffusion", "generate", "train_ser_augmented"))
    assert json.loads((out / "results.json").read_text())["summary"] == _jsonable(first["summary"])

    client = MlflowClient(tracking_uri=first["mlflow"]["tracking_uri"])
    children = client.search_runs([first["mlflow"]["experiment_id"]],
                                  f"tags.mlflow.parentRunId = '{first['mlflow']['parent_run_id']}'")
    assert len(children) == 7 * FOLDS  # no duplicate child runs
    for name in ("emogen-vae", "emogen-diffusion", "emogen-ser"):  # nor registered versions
        assert len(client.search_model_versions(f"name = '{name}'")) == FOLDS, name
