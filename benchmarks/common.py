"""What every benchmark script reports besides its own numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_avg() -> str:
    """The 1/5/15-minute load averages: these shared machines are noisy, so every result says how busy it was."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (index round(p/100 x (n-1)) of the sorted values), to 3 decimals; None for no values."""
    v = sorted(values)
    return round(v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))], 3) if v else None


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
