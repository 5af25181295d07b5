"""Ray Tune sweeps on the tiny corpus: ASHA early stopping, a failing trial, MLflow parent
and child runs, best_config.json into a training job, resume of an interrupted sweep."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emogen.training.spaces import couple, load_space, to_param_space
from emogen.training.sweep import SweepConfig, add_subcommand, run_sweep

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------ spaces and the CLI (no Ray)


def test_default_spaces_load_for_every_model():
    from ray import tune

    for model in ("ser", "vae", "diffusion"):
        space = load_space(model)
        assert "train" in space and "lr" in space["train"]
        domains = to_param_space(space)
        assert isinstance(domains["train"]["lr"], tune.search.sample.Float)
    assert set(load_space("ser")["ser"]) >= {"dropout"}
    assert set(load_space("vae")["vae"]) >= {"beta", "latent_channels", "spectral_weight"}
    assert "base_channels" in load_space("diffusion")["unet"]


def test_space_file_forms_grid_and_errors(tmp_path):
    sections = tmp_path / "sections.yaml"
    sections.write_text("train:\n  lr: {loguniform: [1e-4, 3e-3]}\n  batch_size: {choice: [8, 16]}\nser:\n  dropout: 0.2\n")
    space = load_space("ser", sections)  # YAML's 1e-4 (a string) is read as a number
    grid = to_param_space(space, search="grid")
    assert grid["train"]["batch_size"] == {"grid_search": [8, 16]} and grid["ser"]["dropout"] == 0.2
    per_model = tmp_path / "per_model.json"
    per_model.write_text(json.dumps({"vae": {"vae": {"beta": {"uniform": [0.01, 1.0]}}}}))
    assert load_space("vae", per_model) == {"vae": {"beta": {"uniform": [0.01, 1.0]}}}
    with pytest.raises(ValueError, match="no search space for 'ser'"):
        load_space("ser", per_model)
    with pytest.raises(ValueError, match="uniform takes 2 numbers"):
        to_param_space({"train": {"lr": {"uniform": [1, 2, 3]}}})


def test_space_errors_name_the_key_and_value(tmp_path):
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("ser:\n  train:\n    lr: {loguniform: [1e-4, high]}\n")
    with pytest.raises(ValueError, match=r"bad_value.yaml: ser\.train\.lr\.loguniform\.1: .*'high'"):
        load_space("ser", bad_value)
    bad_kind = tmp_path / "bad_kind.yaml"
    bad_kind.write_text("train:\n  lr: {log_uniform: [1e-4, 1e-3]}\n")
    with pytest.raises(ValueError, match=r"train\.lr\.log_uniform: Extra inputs are not permitted"):
        load_space("ser", bad_kind)
    with pytest.raises(FileNotFoundError, match="no search-space file"):
        load_space("ser", tmp_path / "missing.yaml")


def test_cli_options_take_their_defaults_from_sweep_config():
    from dataclasses import fields

    parser = argparse.ArgumentParser(prog="emogen")
    add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tune", "vae", "--data", "d"])
    assert SweepConfig(**{f.name: getattr(args, f.name) for f in fields(SweepConfig)}) == SweepConfig("vae", "d")
    assert parser.parse_args(["tune", "vae", "--data", "d", "--resume"]).resume is True


def test_missing_search_library_is_a_clear_error():
    from emogen.training.spaces import make_searcher

    for name in ("optuna", "hyperopt"):
        try:
            __import__(name)
        except ImportError:
            with pytest.raises(ValueError, match=f"needs the '{name}' package"):
                make_searcher(name, "val_loss", "min")


def test_multi_worker_trials_refuse_asha(tmp_path):
    with pytest.raises(ValueError, match="need --scheduler fifo"):
        run_sweep(SweepConfig("ser", tmp_path, preset="tiny", num_workers=2, scheduler="asha", storage_path=tmp_path))


def test_latent_size_keeps_the_unet_in_step():
    assert couple("vae", "demo", {"vae": {"latent_channels": 8}}) == {"vae": {"latent_channels": 8}, "unet": {"in_channels": 8}}
    assert couple("vae", "tiny", {"vae": {"latent_channels": 8}}) == {"vae": {"latent_channels": 8}}  # mel diffusion


def test_resume_repairs_a_checkpoint_tune_deleted_before_saving_its_state(tmp_path):
    """The state names checkpoint_000001, Tune already replaced it by checkpoint_000002:
    the newer one moves into place; finished or intact trials are left alone."""
    from types import SimpleNamespace

    from pyarrow.fs import LocalFileSystem

    from emogen.training.tune_checkpoints import repair_lost_checkpoints

    def trial(name, on_disk, wanted):
        path = tmp_path / name
        for index in on_disk:
            (path / f"checkpoint_{index:06d}").mkdir(parents=True)
            (path / f"checkpoint_{index:06d}" / "state.pt").write_text(str(index))
        checkpoint = SimpleNamespace(path=str(path / f"checkpoint_{wanted:06d}"), filesystem=LocalFileSystem())
        return SimpleNamespace(path=str(path), checkpoint=checkpoint)

    lost = trial("lost", on_disk=[2, 3], wanted=1)  # 3 half-written when the driver died
    intact = trial("intact", on_disk=[4], wanted=4)
    fresh = SimpleNamespace(path=str(tmp_path / "fresh"), checkpoint=None)
    moves = repair_lost_checkpoints([lost, intact, fresh])

    assert len(moves) == 1
    assert (tmp_path / "lost" / "checkpoint_000001" / "state.pt").read_text() == "2"
    assert sorted(p.name for p in (tmp_path / "lost").iterdir()) == ["checkpoint_000001", "checkpoint_000003"]
    assert (tmp_path / "intact" / "checkpoint_000004").exists()
    assert repair_lost_checkpoints([lost, intact, fresh]) == []  # idempotent


def test_add_subcommand_registers_emogen_tune():
    parser = argparse.ArgumentParser(prog="emogen")
    add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tune", "ser", "--data", "d", "--num-samples", "4", "--max-concurrent", "2",
                              "--metric", "val_uar", "--mode", "max", "--time-budget-s", "60"])
    assert args.model == "ser" and args.num_samples == 4 and args.mode == "max" and args.func.__name__ == "cmd_tune"
    assert args.cpus_per_trial == 1.0 and args.search == "random" and args.space is None


# ------------------------------------------------------------------------ sweeps


def test_sweep_asha_failing_trial_mlflow_and_best_config(tiny_features, tmp_path):
    """4 trials, 2 at a time: lr=1.0 diverges (ASHA stops it after epoch 1), lr=-1 makes
    AdamW raise (the trial is recorded as ERROR and the sweep goes on)."""
    import mlflow

    from emogen.training import FitConfig, fit

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = {"train": {"lr": {"grid": [2e-3, 1e-3, 1.0, -1.0]}}, "ser": {"dropout": {"uniform": [0.1, 0.3]}}}
    started = time.time()
    config = SweepConfig("ser", tiny_features, preset="tiny", space=space, num_samples=1, epochs=3,
                         max_concurrent=2, storage_path=tmp_path / "tune", name="sweep", tracking_uri=uri,
                         register_as="emogen-ser-sweep")
    summary = run_sweep(config)
    print(f"sweep of 4 trials: {time.time() - started:.1f} s")
    assert summary["trials"] == 4 and summary["status"] == {"ERROR": 1, "TERMINATED": 3}

    with open(summary["results_csv"]) as f:
        rows = {float(r["param.train.lr"]): r for r in csv.DictReader(f)}
    assert set(rows) == {2e-3, 1e-3, 1.0, -1.0}
    assert rows[-1.0]["status"] == "ERROR" and "Invalid learning rate" in rows[-1.0]["error"]
    assert rows[1.0]["stopped"] == "asha" and int(rows[1.0]["epochs"]) == 1  # early-stopped by ASHA
    assert max(int(r["epochs"]) for r in rows.values()) == 3  # the best one ran to max_t
    assert all(r["stopped"] in ("completed", "asha", "error") for r in rows.values())

    # MLflow: the parent and 4 children with their params; metrics per epoch for the trained ones.
    mlflow.set_tracking_uri(uri)
    parent = summary["mlflow_parent_run_id"]
    children = mlflow.search_runs(experiment_names=["emogen"], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 4
    assert set(children["params.train.lr"].astype(float)) == {2e-3, 1e-3, 1.0, -1.0}
    assert set(children["status"]) == {"FINISHED", "FAILED"}
    trained = children[children["status"] == "FINISHED"]
    assert trained["metrics.val_loss"].notna().all() and len(trained) == 3
    # the best trial's model, registered from its own run and tagged with its score
    (version,) = mlflow.MlflowClient().search_model_versions("name = 'emogen-ser-sweep'")
    best_run = children[children["tags.emogen.trial_id"] == summary["best"]["trial"]]["run_id"].iloc[0]
    assert version.run_id == best_run and version.tags["emogen.sweep"] == "sweep"
    assert float(version.tags["emogen.best_val_loss"]) == pytest.approx(summary["best"]["val_loss"], rel=1e-5)
    client = mlflow.tracking.MlflowClient()
    steps = sorted(len(client.get_metric_history(rid, "val_loss")) for rid in trained["run_id"])
    assert steps[0] == 1 and steps[-1] == 3
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"best_config.json", "results.csv"} <= artifacts

    # best_config.json: override sections + best_metric; loads into a training job.
    best = json.loads(Path(summary["best_config"]).read_text())
    assert best["best_metric"]["name"] == "val_loss" and best["train"]["lr"] in (2e-3, 1e-3)
    overrides = {k: v for k, v in best.items() if k != "best_metric"}
    run = fit("ser", tiny_features, FitConfig(preset="tiny", overrides=overrides, epochs=1,
                                              storage_path=tmp_path / "train", run_name="from-best", tracking_uri=uri))
    assert run["epochs_completed"] == 1
    assert mlflow.get_run(run["mlflow_run_id"]).data.params["train.lr"] == str(best["train"]["lr"])

    # Re-running the same name restores the finished sweep: nothing is trained again.
    again = run_sweep(config)
    assert again["trials"] == 4 and again["mlflow_parent_run_id"] == parent and again["seconds"] < 30
    assert len(mlflow.search_runs(experiment_names=["emogen"], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")) == 4
    assert len(mlflow.MlflowClient().search_model_versions("name = 'emogen-ser-sweep'")) == 1  # not registered twice


def test_interrupted_sweep_resumes(tiny_features, tmp_path, ray_session):
    """A sweep driver killed mid-sweep (second trial running) is resumed by re-running
    the same name: the finished trial is kept, the interrupted one continues."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = {"train": {"lr": {"grid": [2e-3, 1e-3]}}}
    # enough epochs that the second trial is still running when its first checkpoint is
    # seen (tiny SER epochs take a fraction of a second with the split held in memory)
    epochs = 12
    kwargs = dict(preset="tiny", space=space, num_samples=1, epochs=epochs, max_concurrent=1, scheduler="fifo",
                  storage_path=str(tmp_path / "tune"), name="interrupted", tracking_uri=uri)
    script = (
        "import json, sys, ray\n"
        "from emogen.training.sweep import SweepConfig, run_sweep\n"
        f"ray.init(address={ray_session.get_runtime_context().gcs_address!r}, log_to_driver=False)\n"
        f"run_sweep(SweepConfig('ser', {str(tiny_features)!r}, **json.loads(sys.argv[1])))\n"
    )
    # Tune snapshots the sweep's state at most every ~10 s by default; a kill before the
    # snapshot that lists the second trial would test a different (earlier) interruption.
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0.5"}
    driver = subprocess.Popen([sys.executable, "-c", script, json.dumps(kwargs)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sweep_dir = tmp_path / "tune" / "interrupted"

    def second_trial_saved() -> bool:
        """Trial 0 done, trial 1 has an epoch on disk and is named in the saved sweep state."""
        if not list(sweep_dir.glob("*_00001_*/checkpoint_*")):
            return False
        return any("_00001" in p.read_text(errors="replace") for p in sweep_dir.glob("experiment_state*.json"))

    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            if second_trial_saved():
                break
            time.sleep(0.1)
        assert driver.poll() is None, "the sweep finished before it could be interrupted"
        assert second_trial_saved(), "the second trial never checkpointed"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
        driver.wait()
    assert not (sweep_dir / "results.csv").exists()

    # Make Tune's deletion race certain (see repair_lost_checkpoints): as if the trial had
    # registered its next checkpoint, and Tune deleted this one, just before the kill.
    from ray.tune import ExperimentAnalysis

    second = next(t for t in ExperimentAnalysis(str(sweep_dir)).trials if t.trial_id.endswith("00001"))
    named = Path(second.checkpoint.path) if second.checkpoint is not None else None
    if named is not None and named.exists():
        index = int(named.name.split("_")[1])
        if not named.with_name(f"checkpoint_{index + 1:06d}").exists():
            os.replace(named, named.with_name(f"checkpoint_{index + 1:06d}"))

    summary = run_sweep(SweepConfig("ser", tiny_features, **kwargs))
    assert summary["trials"] == 2 and summary["status"] == {"TERMINATED": 2}
    with open(summary["results_csv"]) as f:
        assert [int(r["epochs"]) for r in csv.DictReader(f)] == [epochs, epochs]
    mlflow.set_tracking_uri(uri)
    children = mlflow.search_runs(experiment_names=["emogen"],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{summary['mlflow_parent_run_id']}'")
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}  # the resumed trial kept its run
    first = next(sweep_dir.glob("*_00000_*"))
    assert len((first / "result.json").read_text().splitlines()) == epochs  # the finished trial was not re-run
