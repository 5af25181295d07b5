"""The service's settings listed once: serve/config.yaml's args are ServeArgs, `emogen
serve`'s options are ServeArgs' fields (old flag spellings kept), the API key is read in
one place, and the replica options the builder sets."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from emogen.cli.serve import add_subcommand, check_bind, serve_args
from emogen.inference.schema import DEFAULT_KEEP_ALIVE_TIMEOUT_S
from emogen.serving.settings import MAX_ONGOING_REQUESTS, ServeArgs
from emogen.tracking.runs import resolve_tracking_uri

ROOT = Path(__file__).resolve().parents[2]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_refuses_public_bind_without_key(monkeypatch):
    monkeypatch.delenv("EMOGEN_API_KEY", raising=False)
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "key")
    with pytest.raises(SystemExit, match="without an API key"):
        check_bind("0.0.0.0", None)
    args = _parse("--checkpoint", "x", "--host", "0.0.0.0")
    assert args.port == 8000 and args.max_batch_size == 8 and args.body_timeout_s == 10.0 and args.request_timeout_s == 300.0
    assert args.num_replicas is None  # the deployment's own: one replica
    assert args.keep_alive_timeout == 5 and args.max_requests_per_client == 32 and args.long_request_cost == 100
    with pytest.raises(SystemExit, match="without an API key"):
        args.func(args)


def test_the_command_options_are_the_fields_of_serve_args():
    args = _parse("--checkpoint", "x")
    assert serve_args(args) == ServeArgs(checkpoint="x")  # every default is the field's
    assert set(ServeArgs.model_fields) <= set(vars(args))
    given = _parse("--checkpoint", "x", "--batch-wait-timeout-s", "0.2", "--num-replicas", "3", "--num-gpus", "0.5",
                   "--stack-rows", "2", "--max-ongoing-requests", "64")
    assert serve_args(given) == ServeArgs(checkpoint="x", batch_wait_timeout_s=0.2, num_replicas=3, num_gpus=0.5,
                                          stack_rows=2, max_ongoing_requests=64)
    assert _parse("--checkpoint", "x").num_gpus == 0.0
    with pytest.raises(SystemExit):  # a number of GPUs, decided by whoever knows the nodes
        _parse("--checkpoint", "x", "--num-gpus", "auto")
    with pytest.raises(SystemExit):  # the command needs a checkpoint
        _parse()


def test_the_old_flag_spellings_still_work():
    old = _parse("--checkpoint", "x", "--batch-wait-timeout", "0.1", "--replicas", "2", "--body-timeout", "3",
                 "--request-timeout", "4", "--keep-alive-timeout", "7")
    assert (old.batch_wait_timeout_s, old.num_replicas, old.body_timeout_s, old.request_timeout_s) == (0.1, 2, 3.0, 4.0)
    assert old.keep_alive_timeout == 7


def test_the_api_key_is_read_once_where_the_app_is_built(monkeypatch):
    monkeypatch.setenv("EMOGEN_API_KEY", "from-env")
    assert ServeArgs().api_key == "from-env"
    assert ServeArgs.model_validate({"api_key": ""}).api_key == "from-env"  # `serve run ... api_key=`: the default
    assert ServeArgs(api_key="given").api_key == "given"
    assert serve_args(_parse("--checkpoint", "x")).api_key == "from-env"
    built = ServeArgs(checkpoint="x")
    monkeypatch.delenv("EMOGEN_API_KEY")
    assert built.for_replicas().api_key == "from-env"  # replicas get the model, not the environment
    assert ServeArgs().api_key is None


def test_replicas_get_absolute_paths_and_their_options(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    local = ServeArgs(checkpoint="runs/x").for_replicas()
    assert local.checkpoint == str(tmp_path / "runs" / "x") and local.tracking_uri == resolve_tracking_uri(None)
    uri = ServeArgs(checkpoint="models:/emogen-vae@champion", tracking_uri="http://mlflow:5000").for_replicas()
    assert uri.checkpoint == "models:/emogen-vae@champion" and uri.tracking_uri == "http://mlflow:5000"
    # a storage URI as it is (no cwd prefix, no s3:/ collapse): each replica fetches it on its node
    assert ServeArgs(checkpoint="s3://bucket/train/diffusion-tiny/").for_replicas().checkpoint == "s3://bucket/train/diffusion-tiny"
    assert ServeArgs(num_gpus=0).deployment_options() == {} == ServeArgs().deployment_options()
    assert ServeArgs(num_gpus=1).deployment_options() == {"ray_actor_options": {"num_gpus": 1.0}}
    assert ServeArgs(num_replicas=2, max_ongoing_requests=16, num_cpus=1, num_gpus=0.5).deployment_options() == {
        "num_replicas": 2, "max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 1.0, "num_gpus": 0.5}}
    with pytest.raises(ValueError, match="volume"):
        ServeArgs.model_validate({"volume": 11})  # unknown keys fail at deploy time


def test_gpus_per_replica_are_a_number():
    """The builder cannot see the nodes its replicas will run on, so "auto" is refused with
    the reason; each replica then runs on the GPU Ray grants it (emogen.models.device)."""
    with pytest.raises(ValueError, match="num_gpus takes a number of GPUs per replica"):
        ServeArgs.model_validate({"num_gpus": "auto"})
    with pytest.raises(ValueError, match="num_gpus"):
        ServeArgs(num_gpus=-1)
    assert ServeArgs.model_validate({"num_gpus": "0.5"}).num_gpus == 0.5  # `serve run ... num_gpus=0.5`


def test_the_config_file_is_what_the_app_takes():
    """serve/config.yaml's args are ServeArgs (unknown keys would fail at deploy time), its
    limits are the app's own defaults, and it does not undo the replica's request slots."""
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    (application,) = config["applications"]
    args = ServeArgs.model_validate(application["args"])
    defaults = ServeArgs()
    for field in ("body_timeout_s", "request_timeout_s", "long_request_cost", "max_requests_per_client", "step_budget",
                  "stack_rows", "max_batch_size", "batch_wait_timeout_s"):
        assert getattr(args, field) == getattr(defaults, field), field
    (deployment,) = application["deployments"]
    assert deployment["max_ongoing_requests"] == MAX_ONGOING_REQUESTS
    # one GPU per replica for the GPU cluster, asked for in args: a ray_actor_options in the
    # deployment would replace the builder's actor options whole and drop it
    assert "ray_actor_options" not in deployment
    assert args.deployment_options()["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert config["http_options"]["host"] == "127.0.0.1"
    assert config["http_options"]["keep_alive_timeout_s"] == DEFAULT_KEEP_ALIVE_TIMEOUT_S
