"""The experiment report: does generated speech improve speech-emotion recognition?

`write_report(results, out_dir)` turns an experiment's results (`emogen.experiment.results`, as the
model or as a results dict) and the sample files beside it into:

- `report.md`: readable as text, with plots and WAVs linked by relative path;
- `report.html`: the same blocks, self-contained (plots and WAVs embedded);
- `plots/`: the PNGs.

The report answers first: a short lead (`lead`: the question; the answer for real+diffusion
and real+VAE against the matched-steps control, with interval and paired p-value; whether
the SER beats the linear probe; the generated clips' clarity and realism). Then the SER
tables (`results_table`, also printed by the CLI), the findings in words (`prose`),
generated-data quality, generator training, time per stage, plots, audio samples, the
diffusion attention, how to reproduce, MLflow, the speaker folds and the configuration.

Only the SER runs are needed: a missing section is skipped or shown as "n/a", never a
crash, because a partial experiment still deserves a report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from emogen.experiment.report.document import Block
from emogen.experiment.report.lead import lead_section
from emogen.experiment.report.plots import make_plots
from emogen.experiment.report.prose import findings_section
from emogen.experiment.report.render import render_html, render_md
from emogen.experiment.report.sections import (
    attention_section,
    data_section,
    generators_section,
    plots_section,
    quality_section,
    reproduce_section,
    samples_section,
    ser_section,
    timing_section,
    title_section,
)
from emogen.experiment.report.tables import results_table
from emogen.experiment.results import ExperimentResults, as_results

__all__ = ["results_table", "write_report"]


def write_report(results: ExperimentResults | Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write report.md, report.html and plots/ (PNG) into out_dir; returns {"md":..., "html":..., "plots": {name: path}}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = as_results(results)
    plots, notes = make_plots(results, out_dir)
    blocks: list[Block] = [
        *title_section(results),
        *lead_section(results),
        *ser_section(results),
        *findings_section(results),
        *quality_section(results),
        *generators_section(results),
        *timing_section(results),
        *plots_section(plots, notes),
        *samples_section(results, out_dir),
        *attention_section(results, out_dir),
        *reproduce_section(results),
        *data_section(results),
    ]
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text(render_md(blocks), encoding="utf-8")
    title = f"EmoGen experiment: {results.name or 'unnamed'}"
    html_path.write_text(render_html(blocks, title), encoding="utf-8")
    return {"md": md_path, "html": html_path, "plots": {p.path.stem: p.path for p in plots}}
