"""A workaround for a Tune race that loses a trial's checkpoint when the sweep's driver is
killed: `repair_lost_checkpoints`, run on the results of a restored sweep before it goes on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pyarrow.fs import LocalFileSystem

from emogen.logs import get_logger

log = get_logger("tune")


def repair_lost_checkpoints(results: Any) -> list[str]:
    """Point every unfinished trial back at a checkpoint that exists; returns the moves made.

    With `num_to_keep`, Tune deletes a trial's previous checkpoint as soon as it registers
    a new one, but snapshots the experiment state (which names the latest checkpoint) only
    periodically, later. A driver killed in between leaves a state naming a deleted checkpoint, and
    restoring that trial fails. The checkpoint that replaced it is the next one on disk,
    complete (it was registered); move it where the state looks. The trial then resumes
    from one epoch further than Tune's own counter says, which is why the table and ASHA
    count the loop's `epoch`, not `training_iteration`."""
    moves = []
    for result in results:
        checkpoint = result.checkpoint
        if checkpoint is None or result.path is None or not isinstance(checkpoint.filesystem, LocalFileSystem):
            continue  # on cloud storage Tune's race is the same, but a move is not one rename
        wanted = Path(checkpoint.path)
        if wanted.exists():
            continue
        newer = sorted(p for p in Path(result.path).glob("checkpoint_*") if p.name > wanted.name)
        if not newer:
            continue
        os.replace(newer[0], wanted)
        moves.append(f"{newer[0]} -> {wanted}")
        log.warning("%s: its latest checkpoint %s was deleted before the sweep state was saved; "
                    "resuming from %s instead", Path(result.path).name, wanted.name, newer[0].name)
    return moves

