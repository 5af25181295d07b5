"""What every benchmark script reports besides its own numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_avg() -> str:
    """The 1/5/15-minute load averages: these shared machines are noisy, so every result says how busy it was."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_result(result: dict[str, Any], json_out: str | Path | None) -> None:
    """The result as indented JSON to --json-out (when given)."""
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")


def finish(args: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Print the load, write {"args", "rows", "load"} to --json-out and return it."""
    print(f"load {load_avg()}")
    result = {"args": vars(args), "rows": rows, "load": load_avg()}
    write_result(result, getattr(args, "json_out", None))
    return result
