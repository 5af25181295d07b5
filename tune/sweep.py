"""Ray job: a hyperparameter sweep with Ray Tune (ASHA), every trial tracked in MLflow.

    python tune/sweep.py ser --data runs/demo/data --preset demo --num-samples 8 --epochs 10
    ray job submit --working-dir . -- python tune/sweep.py ser --data DATA --preset paper \\
        --num-samples 32 --gpus-per-trial 1 --storage-path s3://BUCKET/emogen/tune

Search spaces: the built-in emogen/tune_spaces.yaml (or --space FILE). Same options as
`emogen tune MODEL` (the fields of emogen.sweep.SweepConfig).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir under `ray job submit`

from emogen.sweep import add_arguments, cmd_tune  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="tune/sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(json.dumps(cmd_tune(args), sort_keys=True, default=str), flush=True)


if __name__ == "__main__":
    main()
