"""Reports written once per session from the synthetic results in report_builders: one
speaker fold with samples on disk, and two folds with judges and realism."""

from __future__ import annotations

import pytest

from emogen.experiment.report import write_report
from tests.experiment.report_builders import NOT_MET, make_fold_results, make_results, write_samples


@pytest.fixture(scope="session")
def full_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_samples(out)
    results = make_results(**NOT_MET)
    paths = write_report(results, out)
    return results, paths, paths["md"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def fold_report(tmp_path_factory):
    results = make_fold_results()
    paths = write_report(results, tmp_path_factory.mktemp("folds"))
    return results, paths, paths["md"].read_text(encoding="utf-8")
