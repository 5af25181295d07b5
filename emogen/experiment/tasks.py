"""The bodies of the experiment's Ray tasks: an SER training, generating and scoring a
generator's clips, evaluating an SER, an attention map, Griffin-Lim. Each takes plain values
and object refs and returns plain values, so it runs on any node of the cluster. The models
run on the device decided in the task (emogen.models.device): the GPU Ray granted it
(the experiment's --use-gpu reserves one per task), else the CPU; results come back as
numpy arrays on the CPU."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import ray
import torch

from emogen import storage, training
from emogen.audio.mel import MelInverter
from emogen.config import EMOTIONS, AudioConfig
from emogen.data.features import write_generated_features
from emogen.evaluation.metrics import (
    clarity_per_emotion,
    classification_report,
    emotional_clarity,
    frechet_distance,
    held_out_report,
    inception_score,
    silent_frame_fraction,
    two_sample_accuracy,
)
from emogen.experiment.results import PROBE_JUDGE, SER_JUDGE
from emogen.inference.attention import attention_png, capture_attention
from emogen.inference.classifier import SERClassifier
from emogen.inference.generator import EmotionGenerator
from emogen.models.device import choose_device


def set_threads() -> None:
    """Torch threads = the CPUs Ray gave this task: more threads than CPUs oversubscribe
    the cores that the tasks beside it use."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    quiet_ray_data()


def quiet_ray_data() -> None:
    """No Ray Data progress bars: datasets carry this context into the training tasks,
    whose per-epoch lines are the progress (a bar per epoch and split is noise)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def train_ser_task(loop: training.LoopConfig, datasets: dict[str, Any], run_dir: str, use_gpu: bool) -> dict[str, Any]:
    """One SER training in this task's process (checkpoints in run_dir); its summary and seconds."""
    set_threads()
    began = time.time()
    summary = training.train_in_process(loop, datasets, run_dir, use_gpu)
    summary["seconds"] = round(time.time() - began, 1)
    return summary


def generate_task(generator_checkpoint: str, filter_checkpoint: str, judge_checkpoint: str, probe: Any, per_emotion: int,
                  seed: int, options: dict[str, Any], min_confidence: float, out_dir: str,
                  real_eval: dict[str, Any], real_mels: np.ndarray) -> dict[str, Any]:
    """Generate per_emotion clips of every emotion, score them with the filter (the fold
    and seed's baseline SER), keep the confident ones, write them as a features dataset,
    let the judges (the fold's judge SER and linear probe) score all and kept clips, and
    measure realism against the fold's held-out real clips."""
    set_threads()
    device = choose_device("auto")
    began = time.time()
    mels, labels = _generate(EmotionGenerator.from_checkpoint(generator_checkpoint, device), per_emotion, seed, options)
    generate_s = time.time() - began

    probs, embeddings = SERClassifier.from_checkpoint(filter_checkpoint, device).predict(mels)
    confidence = probs[np.arange(len(labels)), labels]
    keep = confidence >= min_confidence
    kept_labels = labels[keep]
    if keep.sum() == 0:
        raise RuntimeError(f"min_confidence {min_confidence} kept none of {len(labels)} generated clips: lower it")
    write_generated_features(mels[keep], kept_labels, out_dir, source=storage.name(out_dir))
    judge_probs, _ = SERClassifier.from_checkpoint(judge_checkpoint, device).predict(mels)
    return {
        "n_clips": int(len(labels)),
        "n_kept": int(keep.sum()),
        "kept_per_emotion": {e: int((kept_labels == k).sum()) for k, e in enumerate(EMOTIONS)},
        "clarity": emotional_clarity(labels, probs.argmax(axis=1)),
        "clarity_per_emotion": classification_report(labels, probs.argmax(axis=1))["recall"],
        "judged": {SER_JUDGE: _judged(labels, judge_probs.argmax(axis=1), keep),
                   PROBE_JUDGE: _judged(labels, np.asarray(probe.predict(mels)), keep)},
        "fid": frechet_distance(real_eval["embeddings"], embeddings)["fid"],
        "fid_counts": {"n_real": int(len(real_eval["embeddings"])), "n_generated": int(len(embeddings))},
        "inception_score": inception_score(probs)["is"],
        "two_sample": two_sample_accuracy(real_mels, mels, seed=seed),
        "silent_frames": silent_frame_fraction(mels),
        "mean_confidence": float(confidence.mean()),
        "examples": {e: mels[labels == k][:4].astype(np.float16) for k, e in enumerate(EMOTIONS)},
        "generate_seconds": round(generate_s, 1),
        "device": str(device),
    }


def _generate(generator: EmotionGenerator, per_emotion: int, seed: int,
              options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """per_emotion clips of each emotion, emotion by emotion, each emotion with a seed of its own; and their labels."""
    mels, labels = [], []
    for k, emotion in enumerate(EMOTIONS):
        mels.append(generator.generate(emotion, per_emotion, seed=seed * 1000 + k, **options))
        labels += [k] * per_emotion
    return np.concatenate(mels), np.asarray(labels)


def _judged(requested: np.ndarray, predicted: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    """A judge's clarity of all generated clips and of the kept ones, overall and per emotion."""
    return {"all": emotional_clarity(requested, predicted), "all_per_emotion": clarity_per_emotion(requested, predicted),
            "kept": emotional_clarity(requested[keep], predicted[keep]),
            "kept_per_emotion": clarity_per_emotion(requested[keep], predicted[keep])}


def evaluate_task(ser_checkpoint: str, mels: np.ndarray, labels: np.ndarray, speakers: np.ndarray | None = None) -> dict[str, Any]:
    """Scores and embeddings of an SER on labelled clips; with speakers, also UA per speaker."""
    set_threads()
    probs, embeddings = SERClassifier.from_checkpoint(ser_checkpoint, choose_device("auto")).predict(mels)
    preds = probs.argmax(axis=1)
    report = classification_report(labels, preds) if speakers is None else held_out_report(labels, preds, speakers)
    return {**report, "embeddings": embeddings}


def attention_task(checkpoint: str, emotion: str, seed: int, sampling: dict[str, Any]) -> bytes:
    """The diffusion U-Net's attention while it generates one clip of an emotion, as PNG bytes."""
    set_threads()
    generator = EmotionGenerator.from_checkpoint(checkpoint, choose_device("auto"))
    return attention_png(capture_attention(generator, emotion, seed=seed, **sampling))


def griffin_lim_task(mels: np.ndarray) -> np.ndarray:
    """Waveforms of log-mels, for the report's clips to listen to."""
    set_threads()
    return MelInverter(AudioConfig())(np.array(mels, dtype=np.float32))  # a writable copy of the object-store array
