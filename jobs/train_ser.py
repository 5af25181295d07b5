"""Ray job: train the ser model with Ray Train.

    python jobs/train_ser.py --data runs/demo/data --preset demo
    ray job submit --working-dir . -- python jobs/train_ser.py --data DATA --num-workers 4 --use-gpu
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir under `ray job submit`

from emogen.cli.main import main  # noqa: E402

if __name__ == "__main__":
    main(["train", "ser", *sys.argv[1:]])
