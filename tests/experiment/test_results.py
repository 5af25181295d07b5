"""results.json as typed models: the version it says, a clear error for any other (or none,
or runs without folds), round trips, and the paired comparisons built from the runs."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from emogen.experiment.report import results_table
from emogen.experiment.results import RESULTS_VERSION, ExperimentResults, comparisons, load_results
from tests.experiment.report_builders import MET, make_results, with_probe_and_speakers


def test_results_json_round_trip_and_versions(tmp_path):
    """results.json written now carries its version and round-trips with the same keys; a
    file of another version fails with one message naming both versions."""
    built = make_results(**MET)
    saved = ExperimentResults.model_validate(built).to_json()
    assert set(built) <= set(saved) and saved["version"] == RESULTS_VERSION == 2
    (tmp_path / "results.json").write_text(json.dumps(saved))
    results = load_results(tmp_path)
    assert results.version == RESULTS_VERSION
    assert results.runs["real+diffusion"][1].metrics.unweighted_accuracy == built["runs"]["real+diffusion"][1]["metrics"]["unweighted_accuracy"]
    for condition, gains in built["gains"].items():
        assert results.to_json()["gains"][condition]["unweighted_accuracy"]["values"] == gains["unweighted_accuracy"]["values"]
    assert results_table(results) == results_table(built)

    for version in (1, 3):
        (tmp_path / "results.json").write_text(json.dumps({**saved, "version": version}))
        with pytest.raises(ValueError, match=f"results.json version {version} is not readable here: this emogen reads "
                                             "version 2 \\(speaker folds\\); rerun the experiment"):
            load_results(tmp_path / "results.json")


def test_a_file_without_a_version_is_from_before_folds(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(make_results(**MET)))  # no "version" key
    with pytest.raises(ValueError, match="has no version: it was written before speaker folds \\(one split\\), which "
                                         "this emogen does not read \\(it reads version 2\\)"):
        load_results(tmp_path)


def test_runs_without_a_fold_are_refused_by_name():
    results = make_results(**MET)
    for run in results["runs"]["real"]:
        del run["fold"]
    with pytest.raises(ValidationError, match="an SER run without a speaker fold: results from before folds"):
        ExperimentResults.model_validate(results)


def test_new_fields_round_trip(tmp_path):
    results = ExperimentResults.model_validate(with_probe_and_speakers(0.6))
    results.comparisons = comparisons(results.runs)
    (tmp_path / "results.json").write_text(json.dumps(results.to_json()))
    loaded = load_results(tmp_path)
    assert loaded.version == RESULTS_VERSION and loaded.to_json() == results.to_json()
    assert loaded.probe.per_speaker["emodb:08"] == 0.9 and loaded.runs["real"][0].per_speaker["emodb:03"] == 0.5


def test_comparisons_pair_by_fold_and_seed_and_average_speakers_over_seeds():
    results = ExperimentResults.model_validate(with_probe_and_speakers(0.6))
    del results.runs["real+vae"][1]  # seed 1 has no real+vae run: one pair
    found = comparisons(results.runs)
    assert set(found) == {"real"}  # no matched-steps control in these results
    vae, diffusion = found["real"]["real+vae"], found["real"]["real+diffusion"]
    assert vae.paired.n == 1 and vae.paired.t_p is None and diffusion.paired.n == 2
    assert diffusion.paired.pairs == ["fold 0 seed 0", "fold 0 seed 1"]
    assert diffusion.paired.differences == pytest.approx(
        [d.metrics.unweighted_accuracy - r.metrics.unweighted_accuracy for d, r in zip(results.runs["real+diffusion"], results.runs["real"])])
    assert diffusion.speakers.units == ["emodb:03", "emodb:08", "ravdess:12"]
    assert diffusion.speakers.values == pytest.approx([0.1, 0.1, 0.1])  # +0.1 for every speaker and seed
