"""The command line as a user meets it: a mistake in what they gave ends in one line on
stderr and exit code 2, no traceback, before any Ray instance starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_emogen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emogen.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["preprocess", "--input", "missing-corpus", "--output", "out"], "corpus folder not found: missing-corpus"),
        (["preprocess", "--csv", "missing.csv", "--output", "out"], "label CSV not found: missing.csv"),
        (["tune", "ser", "--data", "missing-data"], "no features at missing-data: run `emogen preprocess` first"),
        (["tune", "ser", "--data", ".", "--space", "bad_space.yaml"], "bad_space.yaml: ser.train.lr: uniform takes 2 numbers"),
        (["train", "ser", "--data", "missing-data"], "no features at missing-data: run `emogen preprocess` first"),
        (["train", "ser", "--data", ".", "--config", "missing.json"], "--config: no file at missing.json"),
        (["train", "ser", "--data", ".", "--config", "bad.json"], "--config: bad.json is not valid JSON"),
        (["train", "ser", "--data", ".", "--config", "list.json"], "--config: list.json must hold a mapping of sections"),
        (["generate", "--checkpoint", "missing-run", "--emotion", "fear", "--out", "out"], "no checkpoint at missing-run"),
    ],
    ids=["missing-input", "missing-csv", "missing-data", "bad-space", "train-missing-data", "missing-config",
         "bad-config", "config-not-a-mapping", "missing-checkpoint"],
)
def test_user_errors_end_in_one_line_and_exit_code_2(tmp_path, args, message):
    (tmp_path / "bad_space.yaml").write_text("ser:\n  train:\n    lr: {uniform: [1.0e-4]}\n")
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "features").mkdir()  # `--data .` exists, so the space or config file is what fails
    proc = run_emogen(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("emogen: error: ") and message in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only UserError is shortened: anything else is a bug and keeps its traceback."""
    from emogen.cli import main as cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_corpus", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["corpus", "--out", "unused"])


def test_job_output_is_plain_text_off_a_terminal(monkeypatch):
    """Under `ray job submit` stderr is a file: no progress bars or color codes, and Ray
    Train's print patch (which printed every worker line twice there) is off."""
    import io
    import os

    import ray
    from ray.data import DataContext

    from emogen.runtime import init_ray

    for name in ("RAY_TRAIN_ENABLE_PRINT_PATCH", "RAY_COLOR_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    context = DataContext.get_current()
    monkeypatch.setattr(context, "enable_progress_bars", True)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    init_ray(num_cpus=1)
    assert os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0" and os.environ["RAY_COLOR_PREFIX"] == "0"
    assert context.enable_progress_bars is False


def test_train_options_are_fit_config_fields_with_their_defaults():
    """`emogen train` parses to exactly FitConfig's option fields, defaults included, and
    what only code passes (overrides, the MLflow parent run) is not an option."""
    import dataclasses

    from emogen.cli.main import build_parser
    from emogen.options import config_values
    from emogen.training import FitConfig

    args = build_parser().parse_args(["train", "ser", "--data", "features"])
    parsed = config_values(FitConfig, args)
    options = {f.name for f in dataclasses.fields(FitConfig) if "help" in f.metadata}
    assert set(parsed) == options and {"overrides", "parent_run_id"}.isdisjoint(parsed)
    assert FitConfig(**parsed) == FitConfig()
    args = build_parser().parse_args(["train", "diffusion", "--data", "f", "--use-gpu", "--epochs", "3",
                                      "--extra-train", "a", "--extra-train", "b"])
    config = FitConfig(**config_values(FitConfig, args))
    assert config.use_gpu and config.epochs == 3 and config.extra_train == ["a", "b"]


def test_logging_outlives_a_closed_former_stderr(monkeypatch):
    """Log lines go to the current sys.stderr even when the one before was closed (pytest's
    capture and Ray swap and close it): switching must not flush the closed stream."""
    import io
    import tempfile

    from emogen.logs import configure_logging, get_logger

    configure_logging("INFO")
    former = tempfile.TemporaryFile("w+")  # a real file: a closed StringIO flushes without complaint
    monkeypatch.setattr(sys, "stderr", former)
    get_logger("stage").info("one")
    former.close()
    current = io.StringIO()
    monkeypatch.setattr(sys, "stderr", current)
    get_logger("stage").info("two")
    assert current.getvalue() == "[stage] two\n"


@pytest.mark.parametrize("command, config_name, required", [
    ("generate", "GenerateConfig", ["--checkpoint", "c"]),
    ("attention", "AttentionConfig", ["--checkpoint", "c", "--emotion", "fear"]),
])
def test_generate_and_attention_options_are_config_fields_with_their_defaults(command, config_name, required):
    """`emogen generate` / `emogen attention` parse to exactly their config's option fields,
    defaults included; eta (the service's field) is not a CLI option."""
    import dataclasses

    from emogen.cli.main import build_parser
    from emogen.inference import config as inference_config
    from emogen.models.diffusion import SAMPLERS
    from emogen.options import config_values

    config_class = getattr(inference_config, config_name)
    parsed = config_values(config_class, build_parser().parse_args([command, *required]))
    assert set(parsed) == {f.name for f in dataclasses.fields(config_class) if "help" in f.metadata} and "eta" not in parsed
    assert config_class(**parsed) == config_class(**dict(zip([r.lstrip("-") for r in required[::2]], required[1::2])))
    for sampler in SAMPLERS:
        assert build_parser().parse_args([command, *required, "--sampler", sampler]).sampler == sampler


def test_generate_writes_one_wav_per_clip(tmp_path, capsys):
    import json

    from emogen.checkpoint import save_state
    from emogen.cli.main import main
    from tests.inference.checkpoints import diffusion_state

    save_state(tmp_path / "ckpt", diffusion_state())
    main(["generate", "--checkpoint", str(tmp_path / "ckpt"), "--emotion", "fear", "--num-samples", "2", "--steps", "2",
          "--sampler", "dpm", "--seed", "5", "--out", str(tmp_path / "wav")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "diffusion"
    assert summary["files"] == [str(tmp_path / "wav" / f"fear_5_{i}.wav") for i in range(2)]
    assert all(Path(f).read_bytes()[:4] == b"RIFF" for f in summary["files"])
