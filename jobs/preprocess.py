"""Ray job: corpus folders -> log-mel Parquet.

    python jobs/preprocess.py --input DIR --output OUT
    ray job submit --working-dir . -- python jobs/preprocess.py --input DIR --output OUT
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir under `ray job submit`

from emogen.cli.main import main  # noqa: E402

if __name__ == "__main__":
    main(["preprocess", *sys.argv[1:]])
