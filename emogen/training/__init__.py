"""Training: one worker loop for the SER, the VAE and the diffusion U-Net, run by Ray Train.

Reading order: `config` (TrainConfig, and LoopConfig: what every worker of a training
gets), `augment` (SER input augmentation), `tasks` (what differs between the models, and
the MODELS registry), `session` (where shards, devices and checkpoints come from),
`batches` (a worker's data, in memory or streamed), `state` (TrainState, the checkpoint),
`loop` (train_epoch, validate, the worker loop), `splits` (the speaker split as Ray
datasets), `driver` (loop configs, MLflow runs, `fit`). The sweep (Ray Tune over the same
loop): `spaces`, `trial`, `sweep_output`, `tune_checkpoints`, `sweep`.
"""

from emogen.training.augment import augment_mels
from emogen.training.config import LoopConfig, MlflowTarget, TrainConfig, TrialSetup, train_config
from emogen.training.driver import (
    FitConfig,
    fit,
    loop_config,
    require_vae,
    start_child_run,
    train_in_process,
)
from emogen.training.loop import run_training, train_epoch, train_loop_per_worker, validate
from emogen.training.session import DirectorySession, RayTrainSession, SingleProcessSession
from emogen.training.splits import fold_assignments, read_clip_ids, select_split, split_assignment, split_datasets
from emogen.training.state import TrainState
from emogen.training.tasks import MODELS, NEEDS_VAE, DiffusionTask, ModelSpec, SERTask, Task, VAETask, model_spec

__all__ = [
    "MODELS",
    "NEEDS_VAE",
    "DiffusionTask",
    "DirectorySession",
    "FitConfig",
    "LoopConfig",
    "MlflowTarget",
    "ModelSpec",
    "RayTrainSession",
    "SERTask",
    "SingleProcessSession",
    "Task",
    "TrainConfig",
    "TrainState",
    "TrialSetup",
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
    "train_epoch",
    "train_in_process",
    "train_loop_per_worker",
    "validate",
]
