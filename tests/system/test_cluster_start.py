"""A cluster that can start from nothing: cluster.yaml (read as the launcher reads it) runs
Python 3.11 in Ray's image on every node, installs the project as a laptop does, turns on
token auth everywhere and hands the nodes the token without holding it; the laptop
rehearsal (scripts/cluster_demo.py) gives every node its own ports and temp dir."""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(pyproject: dict, package: str) -> str:
    """The version pyproject.toml pins for package (`name[extras]==version`)."""
    for requirement in pyproject["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned in pyproject.toml")


def test_cluster_yaml_is_a_config_the_launcher_accepts(config):
    """Ray's own schema check, after the defaults `ray up` fills in (no cloud call)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_every_node_runs_python_3_11_in_rays_image(config, pyproject):
    """Ray's tags are {Ray version}-py{XY}-{platform}: the image's Ray is the pinned one,
    its Python the one pyproject.toml requires, with CUDA (-gpu or -cuXYZ) for the workers."""
    docker = config["docker"]
    images = {docker["image"], docker.get("head_image", docker["image"]), docker.get("worker_image", docker["image"])}
    python = re.fullmatch(r">=(\d+)\.(\d+),<\d+\.\d+", pyproject["project"]["requires-python"]).groups()
    for image in images:
        match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", image)
        assert match, f"{image} is not Ray's official Python+CUDA image"
        assert match.group(1) == _pin(pyproject, "ray") and match.groups()[1:3] == python, image
    for node_type in config["available_node_types"].values():  # none opts out of the container
        assert "docker" not in node_type, node_type


def test_nodes_install_the_project_as_a_laptop_does(config, pyproject):
    """pip, torch alone first at the Makefile's pins (those of pyproject.toml), then the
    project in editable mode; the setup fails on a Python other than 3.11."""
    makefile = (ROOT / "Makefile").read_text()
    torch_pins = re.search(r"pip install -q (torch==\S+ torchaudio==\S+)", makefile).group(1)
    assert torch_pins == f"torch=={_pin(pyproject, 'torch')} torchaudio=={_pin(pyproject, 'torchaudio')}"
    setup = " && ".join(config["setup_commands"])
    assert f"python -m pip install -q {torch_pins} && python -m pip install -q -e ." in setup
    assert "sys.version_info[:2] == (3, 11)" in setup
    project_dir = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert f"cd {project_dir} &&" in setup


def test_every_node_starts_ray_with_token_auth_and_gets_the_token_file(config):
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start ") for c in starts), starts
    # the file generated where `ray up` runs, mounted on the head and synced on to every worker
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    header = "\n".join(line for line in CLUSTER_YAML.read_text().splitlines() if line.startswith("#"))
    assert header.index("ray get-auth-token --generate >/dev/null") < header.index("ray up cluster.yaml")


def test_cluster_yaml_holds_no_secret():
    text = CLUSTER_YAML.read_text()
    for pattern in (r"RAY_AUTH_TOKEN\s*=", r"AWS_SECRET_ACCESS_KEY\s*=", r"AWS_ACCESS_KEY_ID\s*=",
                    r"AKIA[0-9A-Z]{16}", r"\b[0-9a-f]{32,}\b", r"cat ~/\.ray/auth_token"):
        assert not re.search(pattern, text), f"cluster.yaml matches {pattern}"


def _cluster_demo():
    """scripts/cluster_demo.py, an entrypoint (not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location("cluster_demo", ROOT / "scripts" / "cluster_demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_laptop_rehearsal_gives_every_node_its_own_ports_and_temp_dir():
    demo = _cluster_demo()
    specs = demo.cluster_specs(workers=2, cpus_per_worker=1, object_store_bytes=256 << 20)
    try:
        head, *workers = specs
        commands = [spec.command() for spec in specs]
        assert head.num_cpus == 0 and "--head" in commands[0] and len(workers) == 2
        gcs = f"127.0.0.1:{head.ports['--port']}"
        assert all(c[c.index("--address") + 1] == gcs for c in commands[1:])
        ports = [port for spec in specs for port in spec.ports.values()]
        assert len(ports) == len(set(ports)) == len(demo.HEAD_PORT_FLAGS) + 3 * len(demo.NODE_PORT_FLAGS)
        temp_dirs = [c[c.index("--temp-dir") + 1] for c in commands]
        assert len(set(temp_dirs)) == 3 and all(len(t) < 40 for t in temp_dirs)  # Ray's unix sockets live under it
        assert all(c[c.index("--num-cpus") + 1] == "1" for c in commands[1:])
    finally:
        shutil.rmtree(head.temp_dir.parent, ignore_errors=True)
    # `make cluster-demo` is this script
    assert re.search(r"^cluster-demo: .*\n\t\$\(PY\) scripts/cluster_demo\.py ", (ROOT / "Makefile").read_text(), re.M)
