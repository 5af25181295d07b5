"""The augmentation experiment: does generated speech improve speech emotion recognition?

    emogen experiment --data runs/demo/data --preset demo --out runs/demo/experiment

One job, on one speaker-independent split (train / val / held-out test speakers):

1. generators: a VAE and a diffusion U-Net (latent diffusion on the VAE in the demo
   preset) trained with Ray Train on the training split only;
2. per seed: a baseline SER on real training clips; N generated clips per emotion from
   each generator (optionally kept only if the seed's baseline SER gives the requested
   emotion at least `min_confidence`); an SER on real+VAE and one on real+diffusion;
   and a control: an SER on the real clips alone trained for as many optimizer steps as
   the real+diffusion one (more clips per epoch at equal epochs means more steps, and an
   undertrained baseline gains from steps whatever the extra clips contain);
3. every SER evaluated on the same held-out speakers (WA, UA, macro F1, confusion);
   the generated sets scored by the baseline SER (clarity, FID on its embeddings against
   the held-out real clips, Inception Score on its probabilities);
4. results.json (every number, seconds per stage), report.md / report.html with plots
   and Griffin-Lim WAVs, one MLflow parent run with a child run per training.

Seeds vary the SER initialization and data order and the generated samples; the split
and the two generators are shared across seeds (training a generator pair per seed
would triple the cost, and the question is whether a given generator's data helps).
The SER trainings, generation, scoring and Griffin-Lim run as Ray tasks: on a cluster
the twelve SERs of three seeds train side by side.

Every stage records its result in <out>/stages.json when it finishes, so re-running the
same command resumes after the last finished stage (trainings also resume from their
per-epoch checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emogen.config import EMOTIONS, replace
from emogen.presets import preset_sections

CONDITIONS = ("real", "real-matched", "real+vae", "real+diffusion")
GENERATORS = ("vae", "diffusion")
GENERATED_FROM = {"real+vae": "vae", "real+diffusion": "diffusion"}  # the conditions with generated clips
# the control: real clips only, for as many optimizer steps as CONTROL_MATCHES's SER takes
CONTROL, CONTROL_MATCHES = "real-matched", "real+diffusion"
SCORES = ("weighted_accuracy", "unweighted_accuracy", "macro_f1")


@dataclass(frozen=True)
class ExperimentConfig:
    """What the experiment does; a preset's "experiment" section sets the defaults."""

    seeds: tuple[int, ...] = (0, 1, 2)
    # Generated clips per emotion: per_emotion if > 0, else ratio x real training clips / 6
    # (balanced over the emotions whatever the real class balance is).
    per_emotion: int = 0
    ratio: float = 1.0
    sampler: str | None = None  # None: the preset's diffusion sampler, steps and guidance
    steps: int | None = None
    guidance_scale: float | None = None
    min_confidence: float = 0.0  # filter generated clips by the seed's baseline SER
    ser_epochs: int | None = None  # None: the preset's train_ser / train_vae / train_diffusion
    vae_epochs: int | None = None
    diffusion_epochs: int | None = None
    num_workers: int = 1  # Ray Train workers for the generators
    cpus_per_worker: float | None = None  # None: Ray Train's default (1)
    use_gpu: bool = False
    cpus_per_task: float = 1.0  # each SER training / generation task
    wavs_per_emotion: int = 1  # Griffin-Lim clips per emotion and source in the report

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise ValueError("the experiment needs at least one seed")
        if self.per_emotion < 0 or self.ratio < 0:
            raise ValueError("per_emotion and ratio must be >= 0")
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError("min_confidence must be in [0, 1)")
        if self.wavs_per_emotion < 1 or self.num_workers < 1:
            raise ValueError("wavs_per_emotion and num_workers must be >= 1")
        if self.cpus_per_task <= 0 or (self.cpus_per_worker is not None and self.cpus_per_worker <= 0):
            raise ValueError("cpus_per_task and cpus_per_worker must be > 0")


def experiment_config(preset: str, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    values = {**preset_sections(preset).get("experiment", {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return replace(ExperimentConfig(), values)


def model_overrides(overrides: dict[str, dict[str, Any]] | None, model: str) -> dict[str, dict[str, Any]]:
    """One model's overrides from an experiment's: the model sections as they are, and
    "train" merged with "train_<model>" (e.g. {"train_ser": {"epochs": 10}})."""
    overrides = overrides or {}
    out = {k: dict(v) for k, v in overrides.items() if not k.startswith("train")}
    out["train"] = {**overrides.get("train", {}), **overrides.get(f"train_{model}", {})}
    return out


# -------------------------------------------------------------------- bookkeeping


def _write_json(path: Path, data: Any) -> None:
    from emogen.checkpoint import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=float)

    atomic_write(path, write)


class Stages:
    """Finished stages and their results in <out>/stages.json (resume skips them)."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, key: str, func: Callable[[], Any]) -> Any:
        if key not in self.done:
            self.done[key] = func()
            _write_json(self.path, self.done)
        return self.done[key]


class Progress:
    """Stage lines with elapsed time, and the wall seconds of every stage."""

    def __init__(self, total_stages: int):
        self.started = time.time()
        self.total = total_stages
        self.index = 0
        self.seconds: dict[str, float] = {}

    def stage(self, name: str, text: str, func: Callable[[], Any]) -> Any:
        self.index += 1
        print(f"[experiment {self.index}/{self.total} +{time.time() - self.started:.0f}s] {text}", file=sys.stderr, flush=True)
        began = time.time()
        out = func()
        self.seconds[name] = round(time.time() - began, 1)
        return out


def _spread(values: list[float]) -> dict[str, Any]:
    from emogen.metrics import mean_and_spread

    return {**mean_and_spread(values), "values": [float(v) for v in values]}


def _condition_dir(condition: str) -> str:
    return condition.replace("+", "_")


# ---------------------------------------------------------------------- Ray tasks


def _set_threads() -> None:
    """Torch threads = the CPUs Ray gave this task (oversubscribing 2 cores costs ~2x)."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    _quiet_ray_data()


def _quiet_ray_data() -> None:
    """No Ray Data progress bars: datasets carry this context into the training tasks,
    whose per-epoch lines are the progress (a bar per epoch and split is noise)."""
    import logging

    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _train_ser_task(loop: dict[str, Any], datasets: dict[str, Any], run_dir: str, use_gpu: bool) -> dict[str, Any]:
    from emogen.training import train_in_process

    _set_threads()
    began = time.time()
    summary = train_in_process(loop, datasets, run_dir, use_gpu)
    summary["seconds"] = round(time.time() - began, 1)
    return summary


def _generate_task(generator_checkpoint: str, ser_checkpoint: str, per_emotion: int, seed: int, options: dict[str, Any],
                   min_confidence: float, out_dir: str, real_eval: dict[str, Any]) -> dict[str, Any]:
    """Generate per_emotion clips of every emotion, score them with the seed's baseline
    SER, keep the confident ones, and write them as a features dataset."""
    from emogen.evaluate import SERClassifier, write_generated_features
    from emogen.generate import EmotionGenerator
    from emogen.metrics import classification_report, emotional_clarity, frechet_distance, inception_score

    _set_threads()
    began = time.time()
    generator = EmotionGenerator.from_checkpoint(generator_checkpoint)
    mels, labels = [], []
    for k, emotion in enumerate(EMOTIONS):
        mels.append(generator.generate(emotion, per_emotion, seed=seed * 1000 + k, **options))
        labels += [k] * per_emotion
    mels, labels = np.concatenate(mels), np.asarray(labels)
    generate_s = time.time() - began

    probs, embeddings = SERClassifier.from_checkpoint(ser_checkpoint).predict(mels)
    confidence = probs[np.arange(len(labels)), labels]
    keep = confidence >= min_confidence
    kept_labels = labels[keep]
    if keep.sum() == 0:
        raise RuntimeError(f"min_confidence {min_confidence} kept none of {len(labels)} generated clips: lower it")
    write_generated_features(mels[keep], kept_labels, out_dir, source=Path(out_dir).name)
    report = classification_report(labels, probs.argmax(axis=1))
    return {
        "n_clips": int(len(labels)),
        "n_kept": int(keep.sum()),
        "kept_per_emotion": {e: int((kept_labels == k).sum()) for k, e in enumerate(EMOTIONS)},
        "clarity": emotional_clarity(labels, probs.argmax(axis=1)),
        "clarity_per_emotion": report["recall"],
        "fid": frechet_distance(real_eval["embeddings"], embeddings)["fid"],
        "fid_counts": {"n_real": int(len(real_eval["embeddings"])), "n_generated": int(len(embeddings))},
        "inception_score": inception_score(probs)["is"],
        "mean_confidence": float(confidence.mean()),
        "examples": {e: mels[labels == k][:4].astype(np.float16) for k, e in enumerate(EMOTIONS)},
        "generate_seconds": round(generate_s, 1),
    }


def _evaluate_task(ser_checkpoint: str, mels: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from emogen.evaluate import SERClassifier
    from emogen.metrics import classification_report

    _set_threads()
    probs, embeddings = SERClassifier.from_checkpoint(ser_checkpoint).predict(mels)
    return {**classification_report(labels, probs.argmax(axis=1)), "embeddings": embeddings}


def _griffin_lim_task(mels: np.ndarray) -> np.ndarray:
    from emogen.audio import MelInverter
    from emogen.config import AudioConfig

    _set_threads()
    return MelInverter(AudioConfig())(np.array(mels, dtype=np.float32))  # a writable copy of the object-store array


# ------------------------------------------------------------------- the experiment


def run_experiment(
    features: str | Path,
    out_dir: str | Path,
    preset: str = "demo",
    config: ExperimentConfig | None = None,
    name: str | None = None,
    tracking_uri: str | None = None,
    command: str | None = None,
    seconds_before: dict[str, float] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the whole experiment; returns the results dict also written to
    <out_dir>/results.json. seconds_before: stages the caller ran first (corpus, preprocess).
    overrides: preset sections ({"ser": {...}, "train_ser": {...}, "train": {...}, ...})."""
    import mlflow
    import ray

    from emogen import tracking
    from emogen.data import decode_mels, read_features
    from emogen.metrics import frechet_distance
    from emogen.presets import model_configs
    from emogen.training import fit, loop_config, split_assignment, split_datasets, start_child_run, train_config

    cfg = config or experiment_config(preset)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = name or out.name
    stages = Stages(out / "stages.json")
    progress = Progress(total_stages=8)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment_id = tracking.configure(tracking_uri)
    cpu_task = {"num_cpus": cfg.cpus_per_task, "num_gpus": 1 if cfg.use_gpu else 0}
    _quiet_ray_data()

    # ---- the split, the held-out clips, the parent run
    # every model trains on this split (TrainConfig.split_seed and fractions)
    assignment = split_assignment(features, train_config("ser", preset, model_overrides(overrides, "ser")["train"]))
    table = read_features(features)
    table = table.assign(split=table["clip_id"].map(assignment))
    counts = {s: int((table["split"] == s).sum()) for s in ("train", "val", "test")}
    test = table[table["split"] == "test"].reset_index(drop=True)
    if test.empty or counts["val"] == 0:
        raise ValueError(f"the speaker split of {features} left no validation or test speakers; the experiment needs both")
    test_ref, test_labels_ref = ray.put(decode_mels(test)), ray.put(test["label"].to_numpy())  # every SER is scored on them
    per_emotion = cfg.per_emotion or max(1, round(cfg.ratio * counts["train"] / len(EMOTIONS)))
    diffusion_cfg = model_configs(preset, overrides)["diffusion"]
    gen_options = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale}
    params = {"preset": preset, "features": str(features), "experiment": dataclasses.asdict(cfg), "per_emotion": per_emotion,
              "split_counts": counts, "diffusion_space": diffusion_cfg.space, "overrides": overrides or {}}
    parent = stages.run("parent_run", lambda: _parent_run(name, params, tracking_uri))
    storage = out / "train"

    ser_train = train_config("ser", preset, {**model_overrides(overrides, "ser")["train"],
                                             **({"epochs": cfg.ser_epochs} if cfg.ser_epochs else {})})

    def ser_loop(condition: str, seed: int, scale: float = 1.0) -> tuple[dict[str, Any], str]:
        """scale: epochs (and early-stopping patience) x scale, for the matched-steps control."""
        ser_over = model_overrides(overrides, "ser")
        ser_over["train"].update(seed=seed, early_stopping_patience=round(ser_train.early_stopping_patience * scale))
        loop, run_params = loop_config("ser", preset, ser_over, max(1, round(ser_train.epochs * scale)))
        run_name = f"ser-{_condition_dir(condition)}-s{seed}-{name}"
        run_params.update(condition=condition, seed=seed)
        loop["mlflow"] = {"tracking_uri": uri, "run_id": start_child_run(run_name, "ser", run_params, tracking_uri, parent)}
        loop["label"] = f"ser {condition} seed {seed}"
        return loop, str(out / "ser" / f"{_condition_dir(condition)}-s{seed}")

    train_ser = ray.remote(max_retries=2)(_train_ser_task).options(**cpu_task)

    # ---- 1. baseline SERs (Ray tasks, side by side)
    def train_baselines() -> None:
        todo = [seed for seed in cfg.seeds if f"ser/real/{seed}" not in stages.done]
        base = split_datasets(features, assignment) if todo else {}
        pending = {}
        for seed in todo:
            loop, run_dir = ser_loop("real", seed)
            pending[seed] = train_ser.remote(loop, base, run_dir, cfg.use_gpu)
        for seed, ref in pending.items():
            stages.run(f"ser/real/{seed}", lambda ref=ref: ray.get(ref))

    progress.stage("train_ser_real", f"training {len(cfg.seeds)} baseline SERs on real clips (Ray tasks)", train_baselines)

    # ---- 2. the generators (Ray Train), one after the other: latent diffusion needs the VAE
    common = dict(preset=preset, num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, storage_path=storage,
                  tracking_uri=tracking_uri, parent_run_id=parent, cpus_per_worker=cfg.cpus_per_worker)
    generators = {"vae": progress.stage("train_vae", "training the VAE (Ray Train)", lambda: stages.run(
        "vae", lambda: fit("vae", features, overrides=model_overrides(overrides, "vae"), epochs=cfg.vae_epochs,
                           run_name=f"vae-{name}", **common)))}
    generators["diffusion"] = progress.stage(
        "train_diffusion", f"training the {diffusion_cfg.space}-space diffusion U-Net (Ray Train)", lambda: stages.run(
            "diffusion", lambda: fit("diffusion", features, overrides=model_overrides(overrides, "diffusion"),
                                     epochs=cfg.diffusion_epochs, run_name=f"diffusion-{name}",
                                     vae_checkpoint=generators["vae"]["checkpoint"] if diffusion_cfg.space == "latent" else None,
                                     **common)))

    # ---- 3. generation + scoring by the seed's baseline SER
    def generate_all() -> None:
        evaluate = ray.remote(_evaluate_task).options(**cpu_task)
        generate = ray.remote(max_retries=2)(_generate_task).options(**cpu_task)
        train_rows = table[table["split"] == "train"]
        train_ref, train_labels_ref = ray.put(decode_mels(train_rows)), ray.put(train_rows["label"].to_numpy())
        launched, references = {}, {}
        for seed in cfg.seeds:
            ser_checkpoint = stages.done[f"ser/real/{seed}"]["checkpoint"]
            keys = [f"generated/{gen}/{seed}" for gen in GENERATORS] + [f"fid_reference/{seed}"]
            if all(key in stages.done for key in keys):
                continue
            real_eval = evaluate.remote(ser_checkpoint, test_ref, test_labels_ref)  # held-out embeddings for FID
            if f"fid_reference/{seed}" not in stages.done:
                # FID of real training clips against the held-out ones: the scale of "real-like"
                references[seed] = (real_eval, evaluate.remote(ser_checkpoint, train_ref, train_labels_ref))
            for gen in GENERATORS:
                if f"generated/{gen}/{seed}" not in stages.done:
                    launched[(gen, seed)] = generate.remote(
                        generators[gen]["checkpoint"], ser_checkpoint, per_emotion, seed,
                        gen_options if gen == "diffusion" else {}, cfg.min_confidence,
                        str(out / "generated" / f"{gen}-s{seed}"), real_eval)
        for seed, (held_out, training) in references.items():
            stages.run(f"fid_reference/{seed}", lambda a=held_out, b=training: frechet_distance(
                ray.get(a)["embeddings"], ray.get(b)["embeddings"]))
        for (gen, seed), ref in launched.items():
            result = ray.get(ref)
            gen_dir = out / "generated" / f"{gen}-s{seed}"
            np.savez_compressed(gen_dir / "examples.npz", **result.pop("examples"))
            stages.run(f"generated/{gen}/{seed}", lambda result=result, gen_dir=gen_dir: {**result, "dir": str(gen_dir)})
            print(f"[experiment] {gen} seed {seed}: clarity {result['clarity']:.3f}, FID {result['fid']:.1f}, "
                  f"IS {result['inception_score']:.2f}, kept {result['n_kept']}/{result['n_clips']}", file=sys.stderr, flush=True)

    progress.stage("generate", f"generating {per_emotion} clips per emotion per seed with each generator (Ray tasks)", generate_all)

    # ---- 4. augmented SERs and the matched-steps control
    def n_generated(condition: str, seed: int) -> int:
        return stages.done[f"generated/{GENERATED_FROM[condition]}/{seed}"]["n_kept"] if condition in GENERATED_FROM else 0

    def train_augmented() -> None:
        pending, real = {}, None
        for seed in cfg.seeds:
            for condition in CONDITIONS[1:]:
                key = f"ser/{condition}/{seed}"
                if key in stages.done:
                    continue
                if condition in GENERATED_FROM:
                    generated = stages.done[f"generated/{GENERATED_FROM[condition]}/{seed}"]["dir"]
                    data, scale = split_datasets(features, assignment, extra_train=[generated]), 1.0
                else:
                    real = real or split_datasets(features, assignment)
                    data, scale = real, (counts["train"] + n_generated(CONTROL_MATCHES, seed)) / counts["train"]
                loop, run_dir = ser_loop(condition, seed, scale)
                pending[key] = train_ser.remote(loop, data, run_dir, cfg.use_gpu)
        for key, ref in pending.items():
            stages.run(key, lambda ref=ref: ray.get(ref))

    progress.stage("train_ser_augmented", f"training {len(cfg.seeds) * 3} SERs: real+VAE, real+diffusion, and real "
                   "alone for real+diffusion's optimizer steps (Ray tasks)", train_augmented)

    # ---- 5. evaluation on the held-out speakers
    def evaluate_all() -> dict[str, list[dict[str, Any]]]:
        evaluate = ray.remote(_evaluate_task).options(**cpu_task)
        refs = {(c, s): evaluate.remote(stages.done[f"ser/{c}/{s}"]["checkpoint"], test_ref, test_labels_ref)
                for c in CONDITIONS for s in cfg.seeds}
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONDITIONS}
        for (condition, seed), ref in refs.items():
            metrics = ray.get(ref)
            metrics.pop("embeddings")
            trained = stages.done[f"ser/{condition}/{seed}"]
            runs[condition].append({
                "seed": seed, "checkpoint": trained["checkpoint"], "n_train": counts["train"] + n_generated(condition, seed),
                "n_generated": n_generated(condition, seed), "train_steps": int(trained["history"][-1]["steps"]),
                "train_seconds": trained.get("seconds"), "epochs": trained["epochs_completed"],
                "stopped_early": trained["stopped_early"], "metrics": metrics, "history": trained["history"],
            })
        return runs

    runs = progress.stage("evaluate", f"evaluating {len(CONDITIONS) * len(cfg.seeds)} SERs on {counts['test']} held-out clips (Ray tasks)", evaluate_all)

    # ---- 6. listening samples and the mel grid
    samples = progress.stage("samples", "Griffin-Lim audio for the report", lambda: _samples(out, test, cfg, cpu_task))

    # ---- 7. results, report, MLflow
    results = _results(name, preset, cfg, command, features, table, counts, test, per_emotion, runs, generators, stages, samples, parent, uri, experiment_id)
    results["seconds"] = {**(seconds_before or {}), **progress.seconds}

    def report() -> dict[str, Any]:
        from emogen.report import write_report

        # the report shows the total up to here; results.json gets the report's seconds too
        results["seconds"]["total"] = round(sum(results["seconds"].values()), 1)
        _write_json(out / "results.json", results)
        return {k: str(v) for k, v in write_report(results, out).items() if k in ("md", "html")}

    paths = progress.stage("report", "writing results.json, report.md, report.html", report)
    results["seconds"]["report"] = progress.seconds["report"]
    results["seconds"]["total"] = round(sum(v for k, v in results["seconds"].items() if k != "total"), 1)
    _write_json(out / "results.json", results)
    _log_parent(results, out, tracking_uri)
    results["report"] = paths
    return results


def _parent_run(name: str, params: dict[str, Any], tracking_uri: str | None) -> str:
    from emogen import tracking

    return tracking.get_or_create_run(f"experiment-{name}", {"emogen.model": "experiment"}, params, tracking_uri)


def _samples(out: Path, test: Any, cfg: ExperimentConfig, cpu_task: dict[str, Any]) -> dict[str, Any]:
    """Mels (one per emotion and source) for the grid, WAVs for listening."""
    import ray
    import soundfile as sf

    from emogen.config import AudioConfig
    from emogen.data import decode_mels

    seed = cfg.seeds[0]
    n = cfg.wavs_per_emotion
    sources: dict[str, dict[str, np.ndarray]] = {"real": {}}
    for k, emotion in enumerate(EMOTIONS):
        rows = test[test["label"] == k].head(n)
        if len(rows):
            sources["real"][emotion] = decode_mels(rows)
    for gen in GENERATORS:
        examples = np.load(out / "generated" / f"{gen}-s{seed}" / "examples.npz")
        sources[gen] = {e: examples[e][:n].astype(np.float32) for e in EMOTIONS if len(examples[e])}
    sample_dir = out / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    grid = {f"{source}/{emotion}": mels[0] for source, per in sources.items() for emotion, mels in per.items()}
    np.savez_compressed(sample_dir / "mels.npz", **grid)
    inverse = ray.remote(_griffin_lim_task).options(**cpu_task)
    refs = {source: inverse.remote(np.concatenate(list(per.values()))) for source, per in sources.items() if per}
    wavs = []
    rate = AudioConfig().sample_rate
    for source, ref in refs.items():
        waves = iter(ray.get(ref))
        for emotion, mels in sources[source].items():
            for i in range(len(mels)):
                path = sample_dir / f"{source}_{emotion}_{i}.wav"
                sf.write(str(path), next(waves), rate, subtype="PCM_16")
                wavs.append({"source": source, "emotion": emotion, "path": str(path.relative_to(out)), "kind": "griffin-lim"})
    return {"mels": "samples/mels.npz", "wavs": wavs}


def _results(name, preset, cfg, command, features, table, counts, test, per_emotion, runs, generators, stages, samples,
             parent, uri, experiment_id) -> dict[str, Any]:
    summary = {c: {m: _spread([r["metrics"][m] for r in runs[c]]) for m in SCORES} for c in CONDITIONS}

    def paired_gains(condition: str, reference: str) -> dict[str, Any]:
        base = {r["seed"]: r["metrics"] for r in runs[reference]}
        return {m: _spread([r["metrics"][m] - base[r["seed"]][m] for r in runs[condition]]) for m in SCORES}

    gains = {c: paired_gains(c, "real") for c in CONDITIONS[1:]}
    generated = {}
    for gen in GENERATORS:
        per_seed = [stages.done[f"generated/{gen}/{s}"] for s in cfg.seeds]
        generated[gen] = {
            "n_per_emotion": per_emotion,
            "n_clips": int(sum(p["n_clips"] for p in per_seed) / len(per_seed)),
            "n_kept": int(sum(p["n_kept"] for p in per_seed) / len(per_seed)),
            "clarity": _spread([p["clarity"] for p in per_seed]),
            "clarity_per_emotion": {e: float(np.mean([p["clarity_per_emotion"][e] for p in per_seed])) for e in EMOTIONS},
            "fid": {**_spread([p["fid"] for p in per_seed]), **per_seed[0]["fid_counts"]},
            "real_fid_reference": float(np.mean([stages.done[f"fid_reference/{s}"]["fid"] for s in cfg.seeds])),
            "inception_score": _spread([p["inception_score"] for p in per_seed]),
            "mean_confidence": _spread([p["mean_confidence"] for p in per_seed]),
            "generate_seconds": _spread([p["generate_seconds"] for p in per_seed]),
        }
    gen_summary = {}
    for gen, run in generators.items():
        from emogen.checkpoint import load_state

        state = load_state(run["checkpoint"])
        gen_summary[gen] = {
            "checkpoint": run["checkpoint"], "epochs": run["epochs_completed"], "seconds": run["seconds"],
            "mlflow_run_id": run["mlflow_run_id"],
            "metrics": {k: v for k, v in run["metrics"].items() if k.startswith(("val_", "train_"))},
            "history": state["history"],
        }
        if gen == "diffusion":
            gen_summary[gen]["space"] = state["configs"]["diffusion"]["space"]
    class_counts = {
        split: {e: int(((table["split"] == split) & (table["label"] == k)).sum()) for k, e in enumerate(EMOTIONS)}
        for split in ("train", "val", "test")
    }
    ua_gain = gains["real+diffusion"]["unweighted_accuracy"]["mean"]
    return {
        "name": name,
        "preset": preset,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command or f"emogen experiment --data {features} --preset {preset}",
        "config": dataclasses.asdict(cfg),
        "data": {"features": str(features), "split_counts": counts, "class_counts": class_counts,
                 "test_speakers": sorted(test["speaker"].unique().tolist())},
        "seeds": list(cfg.seeds),
        "conditions": list(CONDITIONS),
        "runs": runs,
        "summary": summary,
        "gains": gains,
        # what the generated clips add beyond the optimizer steps they bring
        "gains_over_matched": {CONTROL_MATCHES: paired_gains(CONTROL_MATCHES, CONTROL)},
        "generated": generated,
        "generators": gen_summary,
        "samples": samples,
        "targets": {
            "ua_gain_points": 3.0,
            "diffusion_ua_gain_met": bool(ua_gain * 100 >= 3.0),
            "clarity_met": bool(generated["diffusion"]["clarity"]["mean"] > generated["vae"]["clarity"]["mean"]),
        },
        "mlflow": {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent},
    }


def _log_parent(results: dict[str, Any], out: Path, tracking_uri: str | None) -> None:
    import mlflow

    from emogen import tracking

    tracking.configure(tracking_uri)
    metrics = {}
    for condition, scores in results["summary"].items():
        for metric, spread in scores.items():
            metrics[f"{_condition_dir(condition)}.{metric}.mean"] = spread["mean"]
            metrics[f"{_condition_dir(condition)}.{metric}.std"] = spread["std"]
    for condition, scores in results["gains"].items():
        metrics[f"{_condition_dir(condition)}.ua_gain.mean"] = scores["unweighted_accuracy"]["mean"]
    for condition, scores in results["gains_over_matched"].items():
        metrics[f"{_condition_dir(condition)}.ua_gain_over_matched.mean"] = scores["unweighted_accuracy"]["mean"]
    for gen, info in results["generated"].items():
        for key in ("clarity", "fid", "inception_score"):
            metrics[f"{gen}.{key}"] = info[key]["mean"]
    metrics.update({f"seconds.{k}": float(v) for k, v in results["seconds"].items()})
    with mlflow.start_run(run_id=results["mlflow"]["parent_run_id"]):
        mlflow.log_metrics(metrics)
        for file in ("results.json", "report.md", "report.html"):
            if (out / file).exists():
                mlflow.log_artifact(str(out / file), artifact_path="report")
        if (out / "plots").is_dir():
            mlflow.log_artifacts(str(out / "plots"), artifact_path="report/plots")
        if (out / "samples").is_dir():
            mlflow.log_artifacts(str(out / "samples"), artifact_path="report/samples")
