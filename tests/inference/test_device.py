"""Where models run (emogen.models.device): decided in the process that runs them, from
what Ray granted it and whether torch sees CUDA there; the generator, classifier, the
experiment's tasks, single-process training sessions and the CLI all take that decision.

No GPU here: the CUDA answers are checked on the decision itself (an injected Placement,
or a stand-in for Ray's worker API), the models run on the CPU it decides.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from emogen.checkpoint import save_state
from emogen.errors import UserError
from emogen.inference.classifier import SERClassifier
from emogen.inference.config import AttentionConfig, GenerateConfig
from emogen.inference.generator import EmotionGenerator
from emogen.models.device import DeviceUnavailable, Placement, choose_device, current_placement, decide_device
from emogen.training.session import DirectorySession, SingleProcessSession
from tests.inference.checkpoints import diffusion_state, ser_state

ROOT = Path(__file__).resolve().parents[2]
CPU, CUDA0 = torch.device("cpu"), torch.device("cuda", 0)
NO = DeviceUnavailable  # the expected outcome "refused, with a one-line reason"

# (in a Ray worker, granted a GPU, torch sees CUDA) -> what auto, cpu and cuda give
DECISIONS = {
    (True, True, True): (CUDA0, CPU, CUDA0),  # the task's GPU, as cuda:0 (Ray set CUDA_VISIBLE_DEVICES to it)
    (True, True, False): (NO, CPU, NO),  # a reserved GPU this process cannot use is never left idle quietly
    (True, False, True): (CPU, CPU, NO),  # a GPU Ray did not grant belongs to another task
    (True, False, False): (CPU, CPU, NO),
    (False, False, True): (CUDA0, CPU, CUDA0),  # outside Ray: what this process sees
    (False, False, False): (CPU, CPU, NO),
}


@pytest.mark.parametrize("placement", list(DECISIONS), ids=lambda p: "ray-{}-granted-{}-cuda-{}".format(*p))
@pytest.mark.parametrize("requested", ["auto", "cpu", "cuda"])
def test_the_decision_for_every_placement(placement, requested):
    in_ray, granted, cuda = placement
    where = Placement(in_ray_worker=in_ray, granted_gpus=("0",) if granted else (), cuda_available=cuda,
                      visible_devices="0" if granted else None)
    expected = DECISIONS[placement][("auto", "cpu", "cuda").index(requested)]
    if expected is NO:
        with pytest.raises(DeviceUnavailable) as refused:
            decide_device(requested, where)
        message = str(refused.value)
        assert "\n" not in message and ("no GPU" in message or "no CUDA" in message), message
        assert isinstance(refused.value, UserError)  # the CLI prints it as one line, exit 2
    else:
        assert decide_device(requested, where) == expected


def test_the_granted_gpu_is_found_among_the_visible_ones():
    """Ray points CUDA_VISIBLE_DEVICES at the granted GPU (cuda:0); with that variable left
    alone (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES) the id is the torch index."""
    granted = dict(in_ray_worker=True, granted_gpus=("2",), cuda_available=True)
    assert decide_device("auto", Placement(**granted, visible_devices="2")) == CUDA0
    assert decide_device("auto", Placement(**granted, visible_devices="0,2,3")) == torch.device("cuda", 1)
    assert decide_device("auto", Placement(**granted, visible_devices=None)) == torch.device("cuda", 2)
    with pytest.raises(DeviceUnavailable, match="unknown device 'gpu'"):
        decide_device("gpu", Placement(in_ray_worker=False))


def _as_ray_worker(monkeypatch, gpu_ids: list, cuda: bool) -> None:
    """This process as a Ray worker granted gpu_ids: the calls current_placement makes."""
    fake = types.SimpleNamespace(
        WORKER_MODE=1, is_initialized=lambda: True, get_gpu_ids=lambda: gpu_ids,
        get_runtime_context=lambda: types.SimpleNamespace(worker=types.SimpleNamespace(mode=1)))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, gpu_ids)))


def test_a_worker_takes_the_gpu_ray_granted_it(monkeypatch):
    _as_ray_worker(monkeypatch, [3], cuda=True)
    assert current_placement() == Placement(in_ray_worker=True, granted_gpus=("3",), cuda_available=True,
                                            visible_devices="3")
    assert choose_device("auto") == CUDA0 and choose_device("cpu") == CPU
    # a training run as a Ray task or Tune trial asks for the GPU with use_gpu
    assert SingleProcessSession({}, use_gpu=True).get_device() == CUDA0
    assert SingleProcessSession({}, use_gpu=False).get_device() == CPU


def test_a_worker_granted_no_gpu_runs_on_the_cpu(monkeypatch):
    _as_ray_worker(monkeypatch, [], cuda=True)  # a GPU on the node, granted to someone else
    assert choose_device("auto") == CPU
    with pytest.raises(DeviceUnavailable, match="granted this task no GPU"):
        SingleProcessSession({}, use_gpu=True)


def test_outside_ray_auto_is_what_torch_sees(tmp_path):
    placement = current_placement()
    assert not placement.in_ray_worker and placement.granted_gpus == ()
    assert choose_device("auto") == (CUDA0 if torch.cuda.is_available() else CPU)
    assert DirectorySession({}, tmp_path).get_device() == CPU
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="sees no CUDA here"):
            DirectorySession({}, tmp_path, use_gpu=True)


def test_generator_and_classifier_run_on_the_decided_device():
    device = decide_device("auto", Placement(in_ray_worker=True, granted_gpus=(), cuda_available=True))
    generator = EmotionGenerator(diffusion_state(), device=device)
    assert generator.device == device and {p.device for p in generator.unet.parameters()} == {device}
    mels = generator.generate("fear", 2, steps=2, seed=1)
    assert isinstance(mels, np.ndarray) and mels.shape == (2, 32, 44)
    classifier = SERClassifier(ser_state(), device)
    assert {p.device for p in classifier.model.parameters()} == {device}
    probs, embeddings = classifier.predict(mels)
    assert probs.shape == (2, 6) and np.allclose(probs.sum(axis=1), 1) and embeddings.shape[0] == 2


def test_the_commands_take_a_device_option():
    from emogen.cli.main import build_parser

    parser = build_parser()
    for command in (["generate", "--checkpoint", "c"], ["attention", "--checkpoint", "c", "--emotion", "fear"]):
        assert parser.parse_args(command).device == "auto"
        assert parser.parse_args([*command, "--device", "cpu"]).device == "cpu"
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--device", "gpu"])
    assert GenerateConfig(checkpoint="c").device == "auto" and AttentionConfig(checkpoint="c", emotion="fear").device == "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: --device cuda is possible")
@pytest.mark.parametrize("command", [["generate"], ["attention", "--emotion", "fear"]])
def test_an_impossible_device_is_one_error_line(tmp_path, command):
    save_state(tmp_path / "ckpt", diffusion_state())
    done = subprocess.run([sys.executable, "-m", "emogen.cli", *command, "--checkpoint", str(tmp_path / "ckpt"),
                           "--device", "cuda", "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("emogen: error:")]
    assert len(errors) == 1 and "device cuda asked for" in errors[0] and "no CUDA" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


# ------------------------------------------------------------ inside Ray tasks


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("device-checkpoints")
    return {"diffusion": str(save_state(root / "diffusion", diffusion_state()).parent),
            "ser": str(save_state(root / "ser", ser_state()).parent)}


def test_a_ray_task_decides_from_its_grant(ray_session):
    """The real worker API: a task granted no GPU (all this machine has) runs on the CPU
    and is refused cuda, whatever the driver sees."""
    placement = ray_session.get(ray_session.remote(num_gpus=0)(current_placement).remote())
    assert placement.in_ray_worker and placement.granted_gpus == ()
    assert ray_session.get(ray_session.remote(num_gpus=0)(choose_device).remote("auto")) == CPU
    with pytest.raises(DeviceUnavailable, match="granted this task no GPU"):
        ray_session.get(ray_session.remote(num_gpus=0)(choose_device).remote("cuda"))


def test_the_experiment_tasks_run_where_they_are_granted(ray_session, checkpoints):
    """evaluate_task and attention_task build their models on the device decided in the task
    and send back plain CPU results."""
    from emogen.experiment import tasks

    mels = np.random.default_rng(0).uniform(-1, 1, (6, 32, 44)).astype(np.float32)
    labels = np.arange(6)
    report = ray_session.get(ray_session.remote(num_gpus=0)(tasks.evaluate_task).remote(checkpoints["ser"], mels, labels))
    assert isinstance(report["embeddings"], np.ndarray) and report["embeddings"].shape[0] == 6
    png = ray_session.get(ray_session.remote(num_gpus=0)(tasks.attention_task).remote(
        checkpoints["diffusion"], "fear", 0, {"steps": 2}))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
