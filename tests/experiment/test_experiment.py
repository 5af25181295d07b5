"""The augmentation experiment end to end: the tiny job in the session's Ray (numbers,
report, WAVs, MLflow), resume without retraining, config errors, and the same job
submitted with `ray job submit` to a separate local Ray head (the cluster path)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from tests.support import free_ports
import soundfile as sf

from emogen.config import EMOTIONS
from emogen.experiment.run import ExperimentConfig, experiment_config
from emogen.experiment.results import CONDITIONS, GENERATED_FROM, GENERATORS, SCORES

ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny-e2e"
PER_EMOTION = 3
FOLDS = 2  # the tiny preset's
# emogen.experiment's progress stages, each timed in results["seconds"]
STAGES = {"train_ser_real", "train_vae", "train_diffusion", "generate", "train_ser_augmented", "evaluate", "samples", "report"}


def _run(features, out, tracking_uri):
    from emogen.experiment.run import run_experiment

    config = experiment_config("tiny", {"seeds": [0], "per_emotion": PER_EMOTION})
    results = run_experiment(features, out, preset="tiny", config=config, name=NAME, tracking_uri=tracking_uri)
    return {**results.to_json(), "report": results.report}  # results.json's dict, and where the report went


@pytest.fixture(scope="module")
def tiny_experiment(tiny_features, tracking_uri, tmp_path_factory):
    """One tiny experiment (2 folds, 1 seed, 3 clips per emotion) in the session's 2-CPU Ray, shared by this module."""
    out = tmp_path_factory.mktemp("experiment") / "exp"
    return out, _run(tiny_features, out, tracking_uri)


def _jsonable(data):
    return json.loads(json.dumps(data, default=float))


# ------------------------------------------------------------------ the tiny job


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_tiny_experiment_end_to_end(tiny_experiment, tiny_features):
    from emogen.data.features import read_features

    out, results = tiny_experiment

    # results.json holds exactly the returned numbers (the report paths are added after)
    saved = json.loads((out / "results.json").read_text())
    assert saved == _jsonable({k: v for k, v in results.items() if k != "report"})
    assert results["seeds"] == [0] and results["preset"] == "tiny" and results["conditions"] == list(CONDITIONS)
    assert results["n_folds"] == FOLDS

    # the folds: test speakers disjoint, every speaker tested exactly once, validation
    # speakers never a fold's own test speakers, and each fold's clips all assigned
    table = read_features(tiny_features)
    accepted = json.loads((tiny_features / "summary.json").read_text())["accepted"]
    folds = results["data"]["folds"]
    assert [f["fold"] for f in folds] == list(range(FOLDS))
    tested = [s for f in folds for s in f["test_speakers"]]
    assert sorted(tested) == sorted(set(tested)) == sorted(table["speaker"].astype(str).unique())
    assert results["data"]["test_speakers"] == sorted(tested)
    for f in folds:
        assert not set(f["val_speakers"]) & set(f["test_speakers"]) and f["val_speakers"]
        assert sum(f["split_counts"].values()) == accepted and min(f["split_counts"].values()) > 0
        assert {s: sum(f["class_counts"][s].values()) for s in f["split_counts"]} == f["split_counts"]
    assert results["data"]["split_counts"] == {"test": accepted}
    fold_of = {f["fold"]: f for f in folds}

    # no leakage: each fold's generators trained on that fold's training (and validation)
    # speakers only: their split is the fold's, and a training never reads the test split
    stages = json.loads((out / "stages.json").read_text())
    for fold in range(FOLDS):
        for gen in GENERATORS:
            assert stages[f"fold{fold}/{gen}"]["split_counts"] == {**fold_of[fold]["split_counts"], "extra_train": 0}
    per_fold = results["generators_per_fold"]
    assert [r["fold"] for r in per_fold["vae"]] == list(range(FOLDS))
    assert len({r["checkpoint"] for g in GENERATORS for r in per_fold[g]}) == FOLDS * len(GENERATORS)

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

    # the control: real clips only, epochs scaled to real+diffusion's clips per epoch (tiny: 2 epochs, no early stop)
    by_pair = {c: {(r["fold"], r["seed"]): r for r in results["runs"][c]} for c in CONDITIONS}
    for pair, real in by_pair["real"].items():
        matched, diffused = by_pair["real-matched"][pair], by_pair["real+diffusion"][pair]
        assert matched["epochs"] == round(real["epochs"] * diffused["n_train"] / real["n_train"]) > real["epochs"]
        assert matched["train_steps"] > real["train_steps"]
    control = [by_pair["real+diffusion"][p]["metrics"]["unweighted_accuracy"] - by_pair["real-matched"][p]["metrics"]["unweighted_accuracy"]
               for p in sorted(by_pair["real"])]
    assert results["gains_over_matched"]["real+diffusion"]["unweighted_accuracy"]["values"] == pytest.approx(control)

    # gains are per fold and seed against that pair's real-only baseline
    for condition in CONDITIONS[1:]:
        expected = [r["metrics"]["unweighted_accuracy"] - by_pair["real"][(r["fold"], r["seed"])]["metrics"]["unweighted_accuracy"]
                    for r in results["runs"][condition]]
        assert results["gains"][condition]["unweighted_accuracy"]["values"] == pytest.approx(expected)
    ua_gain = results["gains"]["real+diffusion"]["unweighted_accuracy"]["mean"]
    assert results["targets"]["diffusion_ua_gain_met"] == (ua_gain * 100 >= 3.0)

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

    # the judge SER of each fold: trained on train+val (no validation split) with its own seed
    judges = results["judges"]
    assert [(j["fold"], j["seed"]) for j in judges] == [(f, 1000) for f in range(FOLDS)]
    for judge in judges:
        assert judge["metrics"]["count"] == fold_of[judge["fold"]]["split_counts"]["test"]
        history = stages[f"fold{judge['fold']}/judge"]["history"]
        assert history and not any(k.startswith("val_") for k in history[-1])
        assert judge["checkpoint"] not in {r["checkpoint"] for r in results["runs"]["real"]}

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
    judged_diffusion, judged_vae = (results["generated"][g]["judged"]["ser-judge"]["all"]["mean"] for g in ("diffusion", "vae"))
    assert results["targets"]["clarity_met"] == (judged_diffusion > judged_vae)

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
    monkeypatch.setattr("emogen.experiment.run._train_ser_task", retrained)
    monkeypatch.setattr("emogen.experiment.run._generate_task", retrained)

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


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seeds": ()}, "seed"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"min_confidence": -0.1}, "min_confidence"),
        ({"ratio": -0.5}, "ratio"),
        ({"per_emotion": -1}, "per_emotion"),
        ({"folds": 1}, "folds"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ExperimentConfig(**kwargs)


def test_preset_defaults_and_overrides():
    assert experiment_config("tiny").seeds == (0,) and experiment_config("tiny").per_emotion == PER_EMOTION
    assert (experiment_config("tiny").folds, experiment_config("demo").folds, experiment_config("paper").folds) == (FOLDS, 3, 5)
    demo = experiment_config("demo", {"seeds": [4, 5], "ratio": None, "min_confidence": 0.4})
    assert demo.seeds == (4, 5) and demo.ratio == 1.0 and demo.min_confidence == 0.4  # None keeps the preset's
    with pytest.raises(ValueError, match="unknown ExperimentConfig field"):
        experiment_config("tiny", {"seed": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        experiment_config("huge")


def test_more_folds_than_speakers_is_a_clear_error(tiny_features, tracking_uri, tmp_path):
    from emogen.errors import InvalidInputError
    from emogen.experiment.run import run_experiment

    with pytest.raises(InvalidInputError, match=r"--folds 50: 50 folds need at least 50 speakers, the table has 6"):
        run_experiment(tiny_features, tmp_path / "exp", "tiny", experiment_config("tiny", {"folds": 50}),
                       tracking_uri=tracking_uri)
    assert not (tmp_path / "exp" / "stages.json").exists()  # nothing started


def test_stage_keys_name_the_fold():
    """stages.json keys: the parent run once, everything else under its fold."""
    from emogen.experiment.run import StageKey

    keys = [StageKey.parent_run(), StageKey.generator(0, "vae"), StageKey.ser(1, "real+diffusion", 2),
            StageKey.generated(0, "diffusion", 0), StageKey.fid_reference(2, 1), StageKey.probe(1), StageKey.judge(0)]
    assert [str(k) for k in keys] == ["parent_run", "fold0/vae", "fold1/ser/real+diffusion/2", "fold0/generated/diffusion/0",
                                      "fold2/fid_reference/1", "fold1/probe", "fold0/judge"]


def test_cli_options_are_the_config_fields(tmp_path):
    """Every ExperimentConfig field is an option of the same name; unset, the preset decides."""
    import dataclasses

    from emogen.cli.main import _experiment_config, build_parser

    for command in ("experiment", "demo"):
        args = build_parser().parse_args([command, "--preset", "tiny"])
        assert all(getattr(args, f.name) is None for f in dataclasses.fields(ExperimentConfig))
        assert _experiment_config(args) == experiment_config("tiny")
    args = build_parser().parse_args(["experiment", "--preset", "tiny", "--seeds", "3", "4", "--use-gpu",
                                      "--wavs-per-emotion", "2", "--sampler", "dpm", "--cpus-per-worker", "1.5"])
    config = _experiment_config(args)
    assert (config.seeds, config.use_gpu, config.wavs_per_emotion, config.sampler, config.cpus_per_worker) == ((3, 4), True, 2, "dpm", 1.5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["experiment", "--sampler", "euler"])


def test_cli_needs_data_or_input(tmp_path):
    from emogen.cli.main import main

    with pytest.raises(SystemExit, match="needs --data .* or --input"):
        main(["experiment", "--out", str(tmp_path / "exp"), "--preset", "tiny"])
    assert not (tmp_path / "exp").exists()
    with pytest.raises(ValueError, match="min_confidence"):
        main(["experiment", "--data", str(tmp_path), "--out", str(tmp_path / "exp"), "--min-confidence", "1.5"])


# ------------------------------------------------------------------ the cluster path


class LocalHead:
    """A separate local Ray head (`ray start --head --block` in its own process group),
    stopped without `ray stop`, which would stop every Ray instance on the machine
    (this test session's and other users'): SIGTERM to the blocking `ray start` makes it
    shut down the processes it started; anything of ours left after that is killed."""

    def __init__(self, ray_exe: Path, env: dict[str, str]):
        import psutil

        self.psutil = psutil
        # short: Ray's unix sockets live under it (107-character limit)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
        ports = free_ports(9)
        self.gcs_port, self.dashboard_port = ports[0], ports[1]
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.command = [
            str(ray_exe), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--num-cpus", "2", "--temp-dir", str(self.temp_dir),
            # every port of its own, so nothing collides with other Ray instances on the machine
            "--ray-client-server-port", str(ports[2]), "--dashboard-agent-listen-port", str(ports[3]),
            "--dashboard-agent-grpc-port", str(ports[4]), "--runtime-env-agent-port", str(ports[5]),
            "--metrics-export-port", str(ports[6]), "--node-manager-port", str(ports[7]),
            "--object-manager-port", str(ports[8]),
        ]
        # Its workers (Ray Train's PlacementGroupCleaner, the train state actor) query the
        # state API of "the local cluster": with several on one machine, RAY_ADDRESS in the
        # head's environment (inherited by every worker) pins it to this one.
        self.env = {**env, "RAY_ADDRESS": self.address}
        self.log = self.temp_dir / "ray-start.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{self.log.read_text()}")
            if "block forever" in self.log.read_text():
                return
            time.sleep(1)
        raise TimeoutError(f"the Ray head did not start in {timeout} s:\n{self.log.read_text()}")

    def ours(self) -> list:
        """The processes of this head: `ray start`'s descendants (raylet, GCS, dashboard,
        workers, job drivers) and anything whose command line names its temp dir."""
        found = {}
        if self.process is not None:
            try:
                root = self.psutil.Process(self.process.pid)
                for p in [root, *root.children(recursive=True)]:
                    found[p.pid] = p
            except self.psutil.NoSuchProcess:
                pass
        for p in self.psutil.process_iter(["cmdline"]):
            try:
                if any(str(self.temp_dir) in arg for arg in (p.info["cmdline"] or [])):
                    found[p.pid] = p
            except self.psutil.Error:
                pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, grace: float = 60) -> list[str]:
        """Stop this head only; returns the processes that had to be killed."""
        processes = self.ours()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _, alive = self.psutil.wait_procs(processes, timeout=10)
        alive = [p for p in {p.pid: p for p in alive + self.ours()}.values() if p.is_running()]
        killed = []
        for p in alive:
            try:
                killed.append(" ".join(p.cmdline())[:120])
                p.kill()
            except self.psutil.Error:
                pass
        self.psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(1800)
def test_augment_job_on_a_separate_ray_head(ray_session, tmp_path):
    """`ray job submit --working-dir .` of jobs/augment.py (tiny preset, 1 seed) to a second
    local Ray head: the job succeeds and writes its report; this session's Ray survives."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from emogen.data.corpus import generate_corpus

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, "tiny", seed=0)
    out = tmp_path / "exp"
    venv_bin = Path(sys.executable).parent
    ray_exe = venv_bin / "ray"  # the venv's, so the job's `python` is the venv's too
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}")
    session_resources = ray_session.cluster_resources()

    head = LocalHead(ray_exe, env)
    submission_id = f"emogen-test-{uuid.uuid4().hex[:8]}"
    client = None
    try:
        head.start()
        submit = subprocess.run(
            [str(ray_exe), "job", "submit", "--address", head.dashboard, "--working-dir", str(ROOT),
             "--submission-id", submission_id, "--no-wait", "--",
             "python", "jobs/augment.py", "--input", str(corpus), "--out", str(out), "--preset", "tiny",
             "--ser-epochs", "1", "--vae-epochs", "1", "--diffusion-epochs", "1",
             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
            env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        upload = re.search(r"Uploading package (gcs://\S+\.zip)", submit.stdout + submit.stderr)
        assert upload, submit.stdout + submit.stderr

        client = JobSubmissionClient(head.dashboard)
        deadline = time.time() + 1200
        status = client.get_job_status(submission_id)
        while not status.is_terminal() and time.time() < deadline:
            time.sleep(10)
            status = client.get_job_status(submission_id)
        logs = client.get_job_logs(submission_id)
        if status != JobStatus.SUCCEEDED:
            print(logs[-20000:])
            pytest.fail(f"job {submission_id} ended {status}: {client.get_job_info(submission_id).message}\n{logs[-5000:]}")

        # the job's last line is the experiment summary; its files exist
        summary = json.loads(logs.strip().splitlines()[-1])
        # each training's epoch line once (Ray Train's print patch doubled them) and no
        # progress bar redrawn into the log (emogen.runtime.init_ray)
        epoch_lines = re.findall(r"\[[^\]\n]+\] epoch \d+/\d+", logs)
        assert epoch_lines and len(epoch_lines) == len(set(epoch_lines)), epoch_lines
        assert "\x1b[A" not in logs and "\r" not in logs
        # nor Ray Train's own lines per report and per checkpoint (emogen.training.loop)
        assert "Checkpoint successfully created" not in logs and "Reporting training result" not in logs
        assert summary["out"] == str(out) and set(summary["unweighted_accuracy"]) == set(CONDITIONS)
        results = json.loads((out / "results.json").read_text())
        assert results["seeds"] == [0] and results["preset"] == "tiny"
        assert results["command"].startswith("emogen experiment --input ")  # the report's "Reproduce" line
        # the CLI's --ser-epochs; the control scales it by real+diffusion's clips per epoch
        runs = results["runs"]
        assert all(r["epochs"] == 1 for c in CONDITIONS if c != "real-matched" for r in runs[c])
        for real, diffused, matched in zip(runs["real"], runs["real+diffusion"], runs["real-matched"]):
            assert matched["epochs"] == max(1, round(diffused["n_train"] / real["n_train"]))
        assert all(r["epochs"] == 1 for g in ("vae", "diffusion") for r in results["generators_per_fold"][g])
        assert (out / "report.html").stat().st_size > 1000 and (out / "report.md").exists()
        assert "preprocess" in results["seconds"] and (out / "data" / "features").is_dir()
        from mlflow.tracking import MlflowClient

        mlflow_client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # the job's own store
        parent_id = results["mlflow"]["parent_run_id"]
        assert "real.unweighted_accuracy.mean" in mlflow_client.get_run(parent_id).data.metrics
        assert len(mlflow_client.search_runs([results["mlflow"]["experiment_id"]],
                                             f"tags.mlflow.parentRunId = '{parent_id}'")) == 7 * results["n_folds"]

        # the uploaded working dir is the project, without .venv or runs/ (.gitignore)
        unpacked = [p for p in (head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files").iterdir()
                    if p.is_dir()]
        assert len(unpacked) == 1 and (unpacked[0] / "jobs" / "augment.py").exists()
        assert not (unpacked[0] / ".venv").exists() and not (unpacked[0] / "runs").exists()
        size = sum(p.stat().st_size for p in unpacked[0].rglob("*") if p.is_file())
        assert size < 20_000_000, f"working dir upload of {size} bytes"
    finally:
        if client is not None:
            try:
                if not client.get_job_status(submission_id).is_terminal():
                    client.stop_job(submission_id)
            except Exception:  # the head may already be gone
                pass
        killed = head.stop()
        print(f"stopped the Ray head in {head.temp_dir}; had to kill: {killed}")

    assert not head.ours(), "processes of the second Ray head are still running"
    # this session's Ray is untouched
    assert ray_session.cluster_resources().get("CPU") == session_resources.get("CPU") == 2
    assert ray_session.get(ray_session.remote(lambda: 41).remote()) + 1 == 42
