"""Ray job: a hyperparameter sweep with Ray Tune (ASHA), every trial tracked in MLflow.

    python tune/sweep.py ser --data runs/demo/data --preset demo --num-samples 8 --epochs 10
    ray job submit --working-dir . -- python tune/sweep.py ser --data DATA --preset paper \\
        --num-samples 32 --gpus-per-trial 1 --storage-path s3://BUCKET/emogen/tune

The same command as `emogen tune MODEL` (options: the fields of emogen.training.sweep.SweepConfig;
search spaces: the built-in emogen/training/tune_spaces.yaml or --space FILE).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir under `ray job submit`

from emogen.cli.main import main  # noqa: E402

if __name__ == "__main__":
    main(["tune", *sys.argv[1:]])
