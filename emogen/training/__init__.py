"""Training: one worker loop for the SER, the VAE and the diffusion U-Net, run by Ray Train.

Reading order: `config` (TrainConfig), `augment` (SER input augmentation), `tasks` (what
differs between the models, and the MODELS registry), `session` (where shards, devices
and checkpoints come from), `loop` (the worker loop), `driver` (splits, loop configs,
MLflow runs, `fit`). Checkpoint files are emogen.checkpoint's.
"""

from emogen.training.augment import augment_mels
from emogen.training.config import TrainConfig, train_config
from emogen.training.driver import (
    FitConfig,
    fit,
    fold_assignments,
    loop_config,
    read_clip_ids,
    require_vae,
    select_split,
    split_assignment,
    split_datasets,
    start_child_run,
    train_in_process,
)
from emogen.training.loop import run_training, train_loop_per_worker
from emogen.training.session import DirectorySession, RayTrainSession, SingleProcessSession
from emogen.training.tasks import MODELS, NEEDS_VAE, DiffusionTask, ModelSpec, SERTask, Task, VAETask, model_spec

__all__ = [
    "MODELS",
    "NEEDS_VAE",
    "DiffusionTask",
    "DirectorySession",
    "FitConfig",
    "ModelSpec",
    "RayTrainSession",
    "SERTask",
    "SingleProcessSession",
    "Task",
    "TrainConfig",
    "VAETask",
    "augment_mels",
    "fit",
    "fold_assignments",
    "loop_config",
    "model_spec",
    "read_clip_ids",
    "require_vae",
    "run_training",
    "select_split",
    "split_assignment",
    "split_datasets",
    "start_child_run",
    "train_config",
    "train_in_process",
    "train_loop_per_worker",
]
