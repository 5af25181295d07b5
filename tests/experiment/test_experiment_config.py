"""The experiment's settings: config validation, preset defaults, the CLI options built from
the config's fields, a clear error for more folds than speakers, and the journal's keys."""

from __future__ import annotations

import pytest

from emogen.errors import InvalidInputError
from emogen.experiment.config import ExperimentConfig, experiment_config
from emogen.experiment.journal import StageKey
from emogen.experiment.run import run_experiment

PER_EMOTION = 3  # the tiny preset's
FOLDS = 2  # the tiny preset's


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seeds": ()}, "seed"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"min_confidence": -0.1}, "min_confidence"),
        ({"ratio": -0.5}, "ratio"),
        ({"per_emotion": -1}, "per_emotion"),
        ({"folds": 1}, "folds"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ExperimentConfig(**kwargs)


def test_preset_defaults_and_overrides():
    assert experiment_config("tiny").seeds == (0,) and experiment_config("tiny").per_emotion == PER_EMOTION
    assert (experiment_config("tiny").folds, experiment_config("demo").folds, experiment_config("paper").folds) == (FOLDS, 3, 5)
    demo = experiment_config("demo", {"seeds": [4, 5], "ratio": None, "min_confidence": 0.4})
    assert demo.seeds == (4, 5) and demo.ratio == 1.0 and demo.min_confidence == 0.4  # None keeps the preset's
    with pytest.raises(ValueError, match="unknown ExperimentConfig field"):
        experiment_config("tiny", {"seed": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        experiment_config("huge")


def test_more_folds_than_speakers_is_a_clear_error(tiny_features, tracking_uri, tmp_path):
    with pytest.raises(InvalidInputError, match=r"--folds 50: 50 folds need at least 50 speakers, the table has 6"):
        run_experiment(tiny_features, tmp_path / "exp", "tiny", experiment_config("tiny", {"folds": 50}),
                       tracking_uri=tracking_uri)
    assert not (tmp_path / "exp" / "stages.json").exists()  # nothing started


def test_stage_keys_name_the_fold():
    """stages.json keys: the parent run once, everything else under its fold."""

    keys = [StageKey.parent_run(), StageKey.generator(0, "vae"), StageKey.ser(1, "real+diffusion", 2),
            StageKey.generated(0, "diffusion", 0), StageKey.fid_reference(2, 1), StageKey.probe(1), StageKey.judge(0)]
    assert [str(k) for k in keys] == ["parent_run", "fold0/vae", "fold1/ser/real+diffusion/2", "fold0/generated/diffusion/0",
                                      "fold2/fid_reference/1", "fold1/probe", "fold0/judge"]


def test_cli_options_are_the_config_fields(tmp_path):
    """Every ExperimentConfig field is an option of the same name; unset, the preset decides."""
    import dataclasses

    from emogen.cli.main import _experiment_config, build_parser

    for command in ("experiment", "demo"):
        args = build_parser().parse_args([command, "--preset", "tiny"])
        assert all(getattr(args, f.name) is None for f in dataclasses.fields(ExperimentConfig))
        assert _experiment_config(args) == experiment_config("tiny")
    args = build_parser().parse_args(["experiment", "--preset", "tiny", "--seeds", "3", "4", "--use-gpu",
                                      "--wavs-per-emotion", "2", "--sampler", "dpm", "--cpus-per-worker", "1.5"])
    config = _experiment_config(args)
    assert (config.seeds, config.use_gpu, config.wavs_per_emotion, config.sampler, config.cpus_per_worker) == ((3, 4), True, 2, "dpm", 1.5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["experiment", "--sampler", "euler"])


def test_cli_needs_data_or_input(tmp_path):
    from emogen.cli.main import main

    with pytest.raises(SystemExit, match="needs --data .* or --input"):
        main(["experiment", "--out", str(tmp_path / "exp"), "--preset", "tiny"])
    assert not (tmp_path / "exp").exists()
    with pytest.raises(ValueError, match="min_confidence"):
        main(["experiment", "--data", str(tmp_path), "--out", str(tmp_path / "exp"), "--min-confidence", "1.5"])
