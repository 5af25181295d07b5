"""Ray job: the augmentation experiment (generators and SERs over speaker folds and seeds, report, MLflow).

    python jobs/augment.py --input runs/demo/corpus --out runs/exp --preset demo
    ray job submit --working-dir . -- python jobs/augment.py --data DATA --out /shared/exp --preset paper --use-gpu
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir under `ray job submit`

from emogen.cli.main import main  # noqa: E402

if __name__ == "__main__":
    main(["experiment", *sys.argv[1:]])
