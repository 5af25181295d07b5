"""Ray Train jobs end to end on the tiny corpus: 2-worker gloo, fault tolerance, resume, MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from emogen.checkpoint import load_state, save_state
from emogen.config import EMOTIONS
from emogen.training import TrainConfig, TrainState, train_config
from tests.training.drills import failing_worker_loop

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _fit(model, features, tmp_path, tracking_uri, worker_loop=None, **kw):
    from emogen.training import FitConfig, fit

    kw.setdefault("epochs", 2)
    return fit(model, features, FitConfig(preset="tiny", storage_path=tmp_path / "train", tracking_uri=tracking_uri, **kw),
               worker_loop=worker_loop)


def test_state_round_trip_is_atomic(tmp_path):
    state = {"model": {"w": torch.randn(3)}, "epoch": 2, "history": [{"loss": 1.0}], "configs": {"ser": {"widths": [8, 16]}}}
    save_state(tmp_path, state)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind
    loaded = load_state(tmp_path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["history"] == state["history"]


STATE_KEYS = {"model_name", "model", "best_model", "ema_model", "optimizer", "lr_scheduler", "grad_scaler", "epoch", "best",
              "bad_epochs", "stopped_early", "history", "resumes", "configs", "train", "audio", "extra"}


def test_train_state_saves_the_state_pt_keys_and_restores_older_files(tmp_path):
    """TrainState is the state.pt dict, key for key (emogen.checkpoint.load_model and
    serving read the same file); a file without the optional entries still restores."""
    state = TrainState(model_name="ser", model={"w": torch.ones(2)}, best_model=None, ema_model=None, optimizer={},
                       lr_scheduler={}, grad_scaler=None, epoch=3, best=0.5, bad_epochs=1, stopped_early=False,
                       history=[{"epoch": 3.0}], resumes=[2], configs={"ser": {}}, train={}, audio={}, extra={})
    state.save(tmp_path)
    on_disk = load_state(tmp_path)
    assert set(on_disk) == STATE_KEYS and on_disk["epoch"] == 3 and torch.equal(on_disk["model"]["w"], torch.ones(2))
    loaded = TrainState.load(tmp_path).to_dict()
    assert torch.equal(loaded.pop("model")["w"], torch.ones(2))
    assert loaded == {k: v for k, v in state.to_dict().items() if k != "model"}
    older = {k: v for k, v in on_disk.items() if k not in ("best_model", "ema_model", "grad_scaler", "stopped_early")}
    restored = TrainState.from_dict(older)
    assert restored.ema_model is None and restored.grad_scaler is None and restored.stopped_early is False
    assert restored.resumes == [2] and restored.history == [{"epoch": 3.0}]


def test_run_directory_resolves_to_its_newest_checkpoint(tmp_path):
    for epoch, stamp in ((1, "2026-11-25_10-00-00.000001"), (2, "2026-11-25_10-05-00.000001")):
        save_state(tmp_path / "run" / f"checkpoint_{stamp}", {"epoch": epoch})
    assert load_state(tmp_path / "run")["epoch"] == 2
    assert load_state(tmp_path / "run" / "checkpoint_2026-11-25_10-00-00.000001")["epoch"] == 1
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_state(tmp_path / "empty-run")


def test_train_config_presets_and_overrides():
    assert TrainConfig().batch_size == 16 and TrainConfig().lr == 3e-4 and TrainConfig().grad_clip == 0.5
    assert train_config("ser", "tiny", {"lr": 1e-3}).lr == 1e-3
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        train_config("ser", "tiny", {"learning_rate": 1e-3})


def test_ser_two_gloo_workers_end_to_end(tiny_features, tmp_path, tracking_uri):
    import mlflow

    summary = _fit("ser", tiny_features, tmp_path, tracking_uri, num_workers=2, run_name="ser-2w")
    assert summary["epochs_completed"] == 2 and summary["resumed_from"] == []
    assert {"train_loss", "val_loss", "val_accuracy", "val_uar"} <= set(summary["metrics"])
    state = load_state(summary["checkpoint"])
    assert state["model_name"] == "ser" and len(state["history"]) == 2 and state["best_model"] is not None
    assert set(state) == STATE_KEYS
    # where an epoch's time goes: the validation pass is part of it
    assert all(0 < h["seconds_validation"] < h["seconds"] for h in state["history"])
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.data.params["train.batch_size"] == "16" and run.data.params["num_workers"] == "2"
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    # the final checkpoint as an MLflow model of the run: a pyfunc giving the SER's probabilities
    assert summary["model_uri"] == f"runs:/{run.info.run_id}/model" and summary["registered_model"] is None
    from emogen.inference.classifier import SERClassifier

    model = mlflow.pyfunc.load_model(summary["model_uri"])
    mels = np.random.default_rng(0).normal(size=(3, 128, 173)).astype(np.float32)
    expected, _ = SERClassifier(state).predict(mels)
    assert np.allclose(model.predict(mels), expected, atol=1e-6)
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 128, 173)


def test_worker_failure_resumes_from_checkpoint(tiny_features, tmp_path, tracking_uri):
    """The rank-0 worker dies once after epoch 2's report (tests.training.drills)."""
    summary = _fit("vae", tiny_features, tmp_path, tracking_uri, epochs=3, max_failures=1, run_name="vae-ft",
                   worker_loop=failing_worker_loop)
    assert (tmp_path / "train" / "vae-ft" / ".failed-at-epoch-2").exists()  # the drill really fired
    assert summary["epochs_completed"] == 3
    # Checkpoint upload is asynchronous: the restart resumes from a saved epoch, 1 or 2.
    assert len(summary["resumed_from"]) == 1 and summary["resumed_from"][0] in (1, 2)
    assert [h["epoch"] for h in load_state(summary["checkpoint"])["history"]] == [1, 2, 3]


def test_rerun_by_name_resumes(tiny_features, tmp_path, tracking_uri):
    first = _fit("ser", tiny_features, tmp_path, tracking_uri, epochs=1, run_name="ser-resume")
    second = _fit("ser", tiny_features, tmp_path, tracking_uri, epochs=3, run_name="ser-resume")
    assert second["resumed_from"] == [1] and second["epochs_completed"] == 3
    assert second["mlflow_run_id"] == first["mlflow_run_id"]
    again = _fit("ser", tiny_features, tmp_path, tracking_uri, epochs=3, run_name="ser-resume")
    assert again["epochs_completed"] == 3 and load_state(again["checkpoint"])["history"] == load_state(second["checkpoint"])["history"]


@pytest.fixture(scope="module")
def tiny_vae(tiny_features, tracking_uri, tmp_path_factory):
    """One 1-epoch VAE run for the tests that only need a VAE checkpoint (a fit costs ~25 s)."""
    return _fit("vae", tiny_features, tmp_path_factory.mktemp("vae"), tracking_uri, epochs=1, run_name="vae-1-epoch")


def test_mel_and_latent_diffusion(tiny_features, tiny_vae, tmp_path, tracking_uri):
    mel = _fit("diffusion", tiny_features, tmp_path, tracking_uri, epochs=1, run_name="diff-mel")
    assert load_state(mel["checkpoint"])["extra"]["vae"] is None
    vae = tiny_vae
    latent = _fit(
        "diffusion", tiny_features, tmp_path, tracking_uri, epochs=1, run_name="diff-latent",
        overrides={"diffusion": {"space": "latent"}, "unet": {"in_channels": 4}}, vae_checkpoint=vae["checkpoint"],
    )
    state = load_state(latent["checkpoint"])
    assert state["extra"]["vae"] is not None and state["extra"]["latent_scale"] > 0
    assert latent["metrics"]["val_loss"] > 0

    # Each checkpoint is a generator on its own: mel diffusion, latent diffusion (+ its VAE), VAE.
    from emogen.inference.generator import EmotionGenerator

    for ckpt in (mel["checkpoint"], latent["checkpoint"], vae["checkpoint"]):
        generator = EmotionGenerator.from_checkpoint(ckpt)
        mels = generator.generate("fear", num_samples=2, steps=3, seed=7)
        assert mels.shape == (2, 128, 173) and np.isfinite(mels).all()
        assert np.array_equal(mels, generator.generate("fear", num_samples=2, steps=3, seed=7))
        assert not np.array_equal(mels, generator.generate("fear", num_samples=2, steps=3, seed=8))
    waves = generator.to_audio(mels)
    assert waves.shape == (2, 88200) and np.abs(waves).max() > 0.1
    with pytest.raises(ValueError, match="unknown emotion 'boredom'"):
        generator.generate("boredom")


def test_generate_cli_writes_wavs(tiny_vae, tmp_path):
    from emogen.cli.main import main

    main(["generate", "--checkpoint", tiny_vae["checkpoint"], "--emotion", "all", "--num-samples", "1", "--out", str(tmp_path / "wav")])
    files = sorted(p.name for p in (tmp_path / "wav").iterdir())
    assert files == sorted(f"{e}_0_0.wav" for e in ("anger", "sadness", "happiness", "neutral", "fear", "disgust"))
    data, sr = sf.read(tmp_path / "wav" / "fear_0_0.wav")
    assert sr == 22050 and data.shape == (88200,)


def test_latent_diffusion_without_vae_is_a_clear_error(tiny_features, tmp_path, tracking_uri):
    with pytest.raises(ValueError, match="latent diffusion needs a trained VAE"):  # before any worker starts
        _fit("diffusion", tiny_features, tmp_path, tracking_uri, epochs=1, run_name="diff-novae", max_failures=0,
             overrides={"diffusion": {"space": "latent"}, "unet": {"in_channels": 4}})


def test_cluster_yaml_validates_against_rays_schema():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p")) and gpu["max_workers"] >= 1
    assert any("torch==2.14.1" in cmd for cmd in config["setup_commands"])


def test_ser_with_generated_training_data_and_test_evaluation(tiny_features, tmp_path, tracking_uri):
    """Generated clips join training only; the SER is evaluated on held-out real speakers."""
    from emogen.data.features import write_generated_features
    from emogen.inference.classifier import SERClassifier, evaluate_split
    from emogen.training import split_assignment, train_config

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 4)
    generated = write_generated_features(rng.uniform(-1, 1, (24, 128, 173)), labels, tmp_path / "gen", "vae")
    summary = _fit("ser", tiny_features, tmp_path, tracking_uri, epochs=1, run_name="ser-aug", extra_train=[generated])
    assert summary["split_counts"]["extra_train"] == 24
    classifier = SERClassifier.from_checkpoint(summary["checkpoint"])
    assignment = split_assignment(tiny_features, train_config("ser", "tiny"))
    assert not any(cid.startswith("vae/") for cid in assignment)  # generated clips never held out
    report = evaluate_split(classifier, tiny_features, assignment, "test")
    assert report["count"] == summary["split_counts"]["test"] and 0 <= report["unweighted_accuracy"] <= 1
    probs, embeddings = classifier.predict(np.zeros((3, 128, 173), np.float32))
    assert probs.shape == (3, 6) and np.allclose(probs.sum(axis=1), 1) and embeddings.shape[0] == 3

    from emogen.inference.generator import EmotionGenerator

    with pytest.raises(ValueError, match="not a generator"):  # an SER checkpoint
        EmotionGenerator.from_checkpoint(summary["checkpoint"])


def test_fold_assignments_test_every_speaker_once_and_training_never_sees_them(tiny_features):
    """The experiment's folds: each clip in one split per fold, test speakers disjoint
    across folds and covering every speaker, validation speakers never the fold's test
    ones; the datasets a fold's models train on hold exactly its train / val clips."""
    from emogen.data.features import read_features
    from emogen.training import fold_assignments, split_datasets, train_config

    meta = read_features(tiny_features, columns=["clip_id", "speaker"])
    speaker_of = dict(zip(meta["clip_id"], meta["speaker"]))
    folds = fold_assignments(tiny_features, 2, train_config("ser", "tiny"))
    assert fold_assignments(tiny_features, 2, train_config("ser", "tiny")) == folds  # seeded: resumable
    tested: list[str] = []
    for assignment in folds:
        assert set(assignment) == set(speaker_of)
        by_split = {s: {speaker_of[c] for c, x in assignment.items() if x == s} for s in ("train", "val", "test")}
        assert by_split["test"] and by_split["val"] and by_split["train"]
        assert not (by_split["test"] & by_split["train"]) and not (by_split["test"] & by_split["val"])
        tested += sorted(by_split["test"])
    assert sorted(tested) == sorted(set(speaker_of.values()))  # every speaker tested, once

    datasets = split_datasets(tiny_features, folds[0])
    assert set(datasets) == {"train", "val"}  # no test split reaches a training
    for split, ds in datasets.items():
        assert ds.count() == sum(x == split for x in folds[0].values())
    with pytest.raises(ValueError, match="3 folds need at least 3 speakers"):
        from emogen.data.datasets import speaker_folds

        speaker_folds(meta.assign(dataset="d", speaker="one").head(4), 3)


def test_vae_training_fits_each_emotions_latent_distribution(tiny_features, tmp_path):
    """A VAE checkpoint carries, beside its best weights, the per-emotion distribution of
    its training clips' encoder means, and generation samples from it by default."""
    from emogen.checkpoint import load_model, load_state
    from emogen.data.features import read_features
    from emogen.inference.generator import EmotionGenerator
    from emogen.training import loop_config, split_assignment, split_datasets, train_config, train_in_process

    loop, _ = loop_config("vae", "tiny", epochs=2)
    assignment = split_assignment(tiny_features, train_config("vae", "tiny"))
    summary = train_in_process(loop, split_datasets(tiny_features, assignment), tmp_path / "vae")
    meta = read_features(tiny_features, columns=["clip_id", "label"])
    train_labels = meta.loc[meta["clip_id"].map(assignment) == "train", "label"]
    expected = [int((train_labels == k).sum()) for k in range(len(EMOTIONS))]
    state = load_state(summary["checkpoint"])
    for weights in ("model", "best_model"):  # the distribution goes with the weights it was fit with
        assert state[weights]["latent_count"].tolist() == expected
    vae = load_model(state)
    assert vae.latent_distribution_fitted and (vae.latent_std[torch.tensor(expected) > 0] > 0).all()
    # the tiny preset keeps 2 principal directions per emotion: orthonormal where an emotion had >= 3 clips
    for k, n in enumerate(expected):
        used = min(2, max(n - 1, 0))
        gram = vae.latent_basis[k] @ vae.latent_basis[k].T
        assert torch.allclose(gram[:used, :used], torch.eye(used), atol=1e-4)
        assert torch.count_nonzero(gram[used:]) == 0

    generator = EmotionGenerator.from_checkpoint(summary["checkpoint"])
    posterior = generator.generate("fear", 2, seed=4)
    prior = generator.generate("fear", 2, seed=4, vae_latent="prior")
    assert posterior.shape == prior.shape == (2, 128, 173) and not np.allclose(posterior, prior)
    assert np.array_equal(posterior, generator.generate("fear", 2, seed=4))
    with pytest.raises(ValueError, match="vae_latent must be one of posterior, prior"):
        generator.generate("fear", 1, vae_latent="both")


# ----------------------------------------------------------- SER input augmentation


def test_augment_mels_is_identity_by_default_and_keeps_shapes():
    from emogen.training import TrainConfig, augment_mels

    x = torch.randn(4, 16, 20)
    assert torch.equal(augment_mels(x, TrainConfig()), x)
    cfg = TrainConfig(freq_shift=3, time_roll=True, spec_masks=2, freq_mask_width=4, time_mask_width=5)
    assert augment_mels(x, cfg).shape == x.shape


def test_augment_mels_shifts_rolls_and_masks_per_clip():
    from emogen.training import TrainConfig, augment_mels

    n_mels, frames = 16, 20
    # value = 100 * mel bin + frame: any output cell tells where it came from
    x = (100 * torch.arange(n_mels)[:, None] + torch.arange(frames)[None]).float().expand(6, n_mels, frames).clone()
    gen = torch.Generator().manual_seed(0)
    shifted = augment_mels(x, TrainConfig(freq_shift=3), gen)
    for clip in shifted:
        source_bins = (clip[:, 0] // 100).long()
        offsets = torch.arange(n_mels) - source_bins
        inner = offsets[3:-3]  # away from the edge padding every row moved by one shift
        assert (inner == inner[0]).all() and -3 <= int(inner[0]) <= 3
    assert len({int((c[8, 0] // 100)) for c in shifted}) > 1  # shifts differ between clips

    rolled = augment_mels(x, TrainConfig(time_roll=True), gen)
    for clip in rolled:
        frames_seen = (clip[0] % 100).long()
        assert sorted(frames_seen.tolist()) == list(range(frames))  # a permutation ...
        assert ((frames_seen - frames_seen[0]) % frames == torch.arange(frames)).all()  # ... that is a roll

    masked = augment_mels(x, TrainConfig(spec_masks=1, freq_mask_width=4, time_mask_width=5), gen)
    floor = x.amin()
    for clip in masked:
        hit = clip == floor
        full_rows = int(hit.all(dim=1).sum())
        full_cols = int(hit.all(dim=0).sum())
        assert full_rows <= 4 + 1 and full_cols <= 5 + 1  # +1: the original minimum cell's row/col
    assert (masked == floor).sum() > (x == floor).sum()


def test_ser_training_batches_are_augmented_but_validation_is_not():
    from emogen.models.ser import SERConfig
    from emogen.training import SERTask, TrainConfig

    task = SERTask({"ser": SERConfig(widths=(4,), blocks_per_stage=(1,))}, TrainConfig(spec_masks=2, time_roll=True), {})
    model = task.build()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    mel = torch.randn(2, 16, 20)
    model.train()
    task.loss(model, mel, torch.tensor([0, 1]), epoch=0)
    model.eval()
    task.evaluate(model, mel, torch.tensor([0, 1]), epoch=0)
    assert not torch.equal(seen[0][:, 0], mel) and torch.equal(seen[1][:, 0], mel)


class _ArrayShard:
    """A training shard as the loop reads it (iter_batches of numpy columns)."""

    def __init__(self, mels: np.ndarray):
        self.mels = mels

    def iter_batches(self, batch_size, batch_format="numpy", **_):
        for start in range(0, len(self.mels), batch_size):
            chunk = self.mels[start : start + batch_size]
            yield {"mel": np.array([m.tobytes() for m in chunk], dtype=object), "n_mels": np.full(len(chunk), chunk.shape[1]),
                   "n_frames": np.full(len(chunk), chunk.shape[2]), "label": np.zeros(len(chunk), dtype=np.int64)}


def test_ser_input_stats_come_from_the_training_shard():
    from emogen.models.ser import SERConfig
    from emogen.training import SERTask

    rng = np.random.default_rng(0)
    mels = (rng.normal(size=(300, 8, 20)) * np.arange(1, 9)[:, None] + np.arange(8)[:, None]).astype(np.float32)
    cfg = SERConfig(widths=(4,), blocks_per_stage=(1,), input_norm=True, n_mels=8)
    task = SERTask({"ser": cfg}, TrainConfig(), {})
    model = task.build()
    task.fit_data_stats(model, _ArrayShard(mels))
    np.testing.assert_allclose(model.input_mean.numpy(), mels.mean(axis=(0, 2)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.input_std.numpy(), mels.std(axis=(0, 2)), rtol=1e-4)
    off = SERTask({"ser": SERConfig(widths=(4,), blocks_per_stage=(1,))}, TrainConfig(), {})
    off.fit_data_stats(off.build(), _ArrayShard(mels))  # no input_norm: nothing to set, no error


def test_latent_scale_in_one_process_is_unit_variance_of_the_first_clips_and_kept_on_resume():
    """One process (no torch.distributed): the scale makes the encoder means of the first
    SCALE_BATCH training clips unit-variance; a scale already given (a resumed run's) stays."""
    from emogen.models import NETWORKS
    from emogen.presets import model_configs
    from emogen.training import DiffusionTask
    from emogen.training.tasks import SCALE_BATCH

    cfgs = model_configs("tiny", {"diffusion": {"space": "latent"}, "unet": {"in_channels": 4}})
    vae = NETWORKS["vae"].build(cfgs).eval()
    mels = np.random.default_rng(0).uniform(-1, 1, (SCALE_BATCH + 20, 128, 173)).astype(np.float32)
    task = DiffusionTask(cfgs, TrainConfig(), {})
    task.vae = vae
    task.fit_input_stats(_ArrayShard(mels), torch.device("cpu"))
    with torch.no_grad():
        first = vae.encode(torch.from_numpy(mels[:SCALE_BATCH]).unsqueeze(1), torch.zeros(SCALE_BATCH, dtype=torch.long))[0]
    assert task.latent_scale == pytest.approx(float(1 / first.std()), rel=1e-5) and task.latent_scale != 1.0
    assert task.checkpoint_extra()["latent_scale"] == task.latent_scale
    resumed = DiffusionTask(cfgs, TrainConfig(), {"latent_scale": 0.25})
    resumed.vae = vae
    resumed.fit_input_stats(_ArrayShard(mels), torch.device("cpu"))
    assert resumed.latent_scale == 0.25


def test_ser_mixup_mixes_training_batches_and_cosine_schedule_decays():
    from emogen.models.ser import SERConfig
    from emogen.training import SERTask
    from emogen.training.loop import lr_schedule

    task = SERTask({"ser": SERConfig(widths=(4,), blocks_per_stage=(1,))}, TrainConfig(mixup=0.4), {})
    model = task.build().train()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    mel = torch.stack([torch.zeros(16, 20), torch.ones(16, 20)])
    torch.manual_seed(0)
    task.loss(model, mel, torch.tensor([0, 1]), epoch=0)
    assert ((seen[0] > 0) & (seen[0] < 1)).any()  # a blend of the two clips
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = lr_schedule(opt, TrainConfig(lr_schedule="cosine", epochs=4))
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # an epoch's updates come before the schedule steps (no gradients: a no-op)
        schedule.step()
    assert lrs == pytest.approx([1.0, 0.853553, 0.5, 0.146447], rel=1e-4) and opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_schedule(opt, TrainConfig(lr_schedule="step"))


# ----------------------------------------------------------- weight average, data in memory


def test_weight_average_warms_up_then_follows_slowly_and_copies_buffers():
    from emogen.training.ema import WeightAverage

    model = torch.nn.BatchNorm1d(3)  # a parameter (weight) and buffers (running stats, counter)
    ema = WeightAverage(model, decay=0.99)
    assert ema.current_decay(1) == pytest.approx(2 / 11) and ema.current_decay(10_000) == 0.99
    with torch.no_grad():
        model.weight.fill_(2.0)  # from 1.0
        model.running_mean.fill_(5.0)
    ema.update(model, step=1)
    assert ema.shadow["weight"] == pytest.approx(torch.full((3,), 1 + (1 - 2 / 11)))  # mostly the new value
    assert torch.equal(ema.shadow["running_mean"], model.running_mean)
    for step in range(10_000, 10_010):
        ema.update(model, step)
    before = ema.shadow["weight"].clone()
    with torch.no_grad():
        model.weight.fill_(100.0)
        model.running_var.fill_(7.0)
    ema.update(model, 10_011)
    assert ema.shadow["weight"] == pytest.approx(before + 0.01 * (100 - before))
    ema.copy_buffers(model)
    assert torch.equal(ema.shadow["running_var"], model.running_var)
    restored = WeightAverage(model, decay=0.99)
    restored.load_state_dict(ema.state_dict())
    assert all(torch.equal(restored.shadow[k], v) for k, v in ema.shadow.items())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


def test_split_in_memory_is_reshuffled_per_epoch_and_streams_above_its_size_limit():
    from emogen.training.batches import read_into_memory
    from emogen.training.tasks import Task

    mels = np.arange(10 * 4 * 3, dtype=np.float32).reshape(10, 4, 3)
    data = read_into_memory(_ArrayShard(mels), Task({}, TrainConfig(), {}), torch.device("cpu"), limit_mb=1, chunk=4)
    assert len(data) == 10 and torch.equal(data.x, torch.from_numpy(mels))

    def order(seed):
        return torch.cat([x[:, 0, 0] for x, _ in data.batches(3, torch.Generator().manual_seed(seed))])

    assert sorted(order(0).tolist()) == sorted(mels[:, 0, 0].tolist())  # every clip once per epoch
    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    assert [len(x) for x, _ in data.batches(4)] == [4, 4, 2]
    assert read_into_memory(_ArrayShard(mels), Task({}, TrainConfig(), {}), torch.device("cpu"), limit_mb=100 / 2**20) is None
    assert read_into_memory(_ArrayShard(mels), Task({}, TrainConfig(), {}), torch.device("cpu"), limit_mb=0) is None


def test_diffusion_trains_with_a_weight_average_that_checkpoints_load_and_resume_keeps(tiny_features, tmp_path):
    from emogen.checkpoint import load_model
    from emogen.training import loop_config, split_assignment, split_datasets, train_config, train_in_process

    train = {"ema_decay": 0.9, "lr_schedule": "constant"}
    loop, _ = loop_config("diffusion", "tiny", {"diffusion": {"snr_gamma": 5.0}}, epochs=1, train_overrides=train)
    datasets = split_datasets(tiny_features, split_assignment(tiny_features, train_config("diffusion", "tiny")))
    train_in_process(loop, datasets, tmp_path / "diffusion")
    first = load_state(tmp_path / "diffusion")
    assert first["ema_model"] is not None and first["history"][-1]["train_loss"] > 0
    assert not torch.equal(first["ema_model"]["init_conv.weight"], first["model"]["init_conv.weight"])
    assert torch.equal(load_model(first).state_dict()["init_conv.weight"], first["ema_model"]["init_conv.weight"])

    loop, _ = loop_config("diffusion", "tiny", {"diffusion": {"snr_gamma": 5.0}}, epochs=2, train_overrides=train)
    summary = train_in_process(loop, datasets, tmp_path / "diffusion")
    second = load_state(tmp_path / "diffusion")
    assert summary["resumed_from"] == [1] and second["history"][-1]["steps"] == 2 * first["history"][-1]["steps"]
    assert not torch.equal(second["ema_model"]["init_conv.weight"], first["ema_model"]["init_conv.weight"])
