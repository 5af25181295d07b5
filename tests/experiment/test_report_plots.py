"""The report's figures: which PNGs a results file gives, and the notes for those it cannot."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from emogen.experiment.report import write_report
from tests.experiment.report_builders import EXPECTED_PLOTS, MET, make_fold_results, make_results, section, with_probe_and_speakers


def test_files_and_plots_exist(full_report):
    _, paths, _, _ = full_report
    assert paths["md"].is_file() and paths["html"].is_file()
    assert set(paths["plots"]) == EXPECTED_PLOTS
    for name, path in paths["plots"].items():
        assert path.parent.name == "plots" and path.name == f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mel_grid_notes_blank_cells(full_report):
    _, _, md, _ = full_report
    assert "Blank cells (no sample): 1 of 18." in section(md, "Plots")


def test_missing_mels_file_skips_grid_with_a_note(tmp_path):
    results = make_results(**MET)
    paths = write_report(results, tmp_path)  # no samples written
    md = paths["md"].read_text(encoding="utf-8")
    assert "mel_grid" not in paths["plots"]
    assert "Mel grid skipped: samples/mels.npz not found." in md
    assert "missing: samples/real_anger_0.wav" in md


def test_per_speaker_plot(tmp_path):
    paths = write_report(with_probe_and_speakers(0.6), tmp_path)
    assert set(paths["plots"]) == EXPECTED_PLOTS - {"mel_grid"} | {"per_speaker_ua"}  # no samples written
    assert "](plots/per_speaker_ua.png)" in paths["md"].read_text(encoding="utf-8")


def test_fold_report_plots(fold_report):
    _, paths, md = fold_report
    assert {"ser_scores", "clarity", "per_speaker_ua", "confusion_real"} <= set(paths["plots"])
    assert "*Clarity by the SER judge" in md and "summed over fold × seed runs" in md


def test_attention_figures_are_shown_when_their_pngs_exist(tmp_path):
    results = make_fold_results()
    (tmp_path / "samples").mkdir()
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().imshow(np.eye(4))
    fig.savefig(tmp_path / "samples" / "attention_fear.png")
    results["samples"] = {"attention": {"fear": "samples/attention_fear.png", "anger": "samples/attention_anger.png"}}
    paths = write_report(results, tmp_path)
    md, html = paths["md"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")
    attention = section(md, "Diffusion attention")
    assert "Diffusion attention: fear" in attention and "samples/attention_fear.png" in attention
    assert "anger" not in attention  # its PNG is missing: skipped, not a broken link
    assert "Diffusion attention: fear" in html and html.count("data:image/png;base64,") >= 1
