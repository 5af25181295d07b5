"""report.md and report.html from the same blocks: links, a self-contained and escaped page,
and a report for partial results, never a crash."""

from __future__ import annotations

import base64
import re

import pytest

from emogen.experiment.report import results_table, write_report
from tests.experiment.report_builders import (
    EXPECTED_PLOTS,
    MET,
    NOT_MET,
    make_fold_results,
    make_results,
    section,
    without,
)


def test_html_is_self_contained(full_report):
    _, paths, _, page = full_report
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", page, flags=re.I)
    assert not re.search(r"<(?:link|script)\b", page, flags=re.I)
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(paths["plots"]) == len(EXPECTED_PLOTS)
    assert all(base64.b64decode(img)[:4] == b"\x89PNG" for img in images)
    audio = re.findall(r'<audio controls src="data:audio/wav;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(audio) == 2 and base64.b64decode(audio[0])[:4] == b"RIFF"
    assert 'href="samples/real_anger_0.wav"' in page


def test_markdown_links_plots_and_wavs_relatively(full_report):
    _, paths, md, _ = full_report
    for name in EXPECTED_PLOTS:
        assert f"](plots/{name}.png)" in md
    assert "](samples/real_anger_0.wav)" in md and "](samples/diffusion_anger_0.wav)" in md
    assert "base64" not in md


def test_html_has_the_markdowns_sections_in_the_same_order(full_report):
    _, _, md, page = full_report
    md_headings = re.findall(r"^#{1,3} (.+)$", md, flags=re.M)
    html_headings = [h.replace("&#x27;", "'") for h in re.findall(r"<h[1-3]>(.*?)</h[1-3]>", page)]
    assert html_headings == md_headings and md_headings[1] == "In short"


def test_missing_optional_sections(tmp_path):
    results = make_results(**MET)
    for key in ("generated", "samples", "generators"):
        del results[key]
    paths = write_report(results, tmp_path)
    md, page = paths["md"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")
    assert results_table(results) in md
    assert set(paths["plots"]) == EXPECTED_PLOTS - {"mel_grid", "clarity"}
    assert page.count("data:image/png;base64,") == len(paths["plots"])
    assert "## Generated data quality" not in md and "## Audio samples" not in md
    # without generated clips nothing is said of their clarity, in the lead or the findings
    assert "Mel grid skipped" in md and "clarity" not in section(md, "What this run shows").lower()
    assert "Generated clips" not in section(md, "In short")


def test_nearly_empty_results_still_give_a_report(tmp_path):
    paths = write_report({"name": "empty"}, tmp_path)
    md = paths["md"].read_text(encoding="utf-8")
    assert paths["plots"] == {} and paths["html"].is_file()
    assert md.startswith("# EmoGen experiment: empty") and "| real | n/a | n/a | n/a | — | n/a |" in md
    assert "no SER runs, so there is no answer yet" in section(md, "In short")


def test_html_escapes_names_and_values(tmp_path):
    results = make_results(**NOT_MET, name="<script>alert(1)</script>")
    results["config"]["note"] = 'a <b>bold</b> & "quoted" value'
    page = write_report(results, tmp_path)["html"].read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot; value" in page


def test_only_audio_files_are_inlined(tmp_path):
    results = make_results(**MET)
    (tmp_path / "secret.txt").write_text("not for the page")
    results["samples"] = {"wavs": [{"source": "real", "emotion": "anger", "path": "secret.txt"}]}
    page = write_report(results, tmp_path)["html"].read_text(encoding="utf-8")
    assert "not an audio file: secret.txt" in page
    assert base64.b64encode(b"not for the page").decode() not in page and "<audio" not in page


@pytest.mark.parametrize("path", [
    "n_folds", "probes", "probe", "probe.fold_ua", "judges", "data", "data.folds", "seeds",
    "generated.*.judged", "generated.*.judged.ser-judge", "generated.*.judged.probe", "generated.*.judged.ser-judge.kept",
    "generated.*.judged.ser-judge.all_per_emotion", "generated.*.judged.ser-judge.kept_per_emotion",
    "generated.vae.judged", "generated.diffusion", "generated.*.fid.n_real", "generated.*.realism",
    "generated.*.realism.real_two_sample_accuracy",
])
def test_partial_fold_results_still_report(tmp_path, path):
    results = without(make_fold_results(), path)
    paths = write_report(results, tmp_path)
    md = paths["md"].read_text(encoding="utf-8")
    assert results_table(results) in md and paths["html"].is_file()
    assert md.index("## In short") < md.index("## Speech-emotion recognition")
    assert len(section(md, "In short").split()) < 200
