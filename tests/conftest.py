"""Shared fixtures: one local Ray instance per test session, tiny features and checkpoints, WAV files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import soundfile as sf

from tests.support import S3Server, free_ports, tone

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# The loopback S3 server's endpoint and keys are in the environment before anything starts
# Ray, so Ray's workers inherit them as a cluster node's processes inherit the node's; the
# server itself starts with the first test that asks for it. Never a developer's own keys.
S3 = S3Server(free_ports(1)[0])
os.environ.update(S3.environment())


@pytest.fixture(scope="session")
def ray_session():
    """A 2-CPU local Ray shared by every test that needs it, shut down at the end."""
    import ray

    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """The S3 API server of the test session (moto's), on 127.0.0.1, stopped at the end."""
    S3.start()
    yield S3
    S3.stop()


@pytest.fixture(scope="module")
def s3_bucket(s3_server, request):
    """A bucket of this test module's own on the session's S3 server: its s3:// URI."""
    name = "emogen-" + request.module.__name__.rsplit(".", 1)[-1].replace("_", "-").lower()[:40]
    return s3_server.create_bucket(name)


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory, ray_session):
    """The tiny demo corpus, preprocessed once per session (84 files, 3 speakers per corpus)."""
    from emogen.data.corpus import generate_corpus
    from emogen.data.features import preprocess
    from emogen.data.datasets import build_manifest

    root = tmp_path_factory.mktemp("tiny")
    generate_corpus(root / "corpus", preset="tiny", seed=0)
    preprocess(build_manifest([root / "corpus"]), root / "data")
    return root / "data"


@pytest.fixture(scope="session")
def diffusion_checkpoint(tiny_features, tmp_path_factory):
    """A tiny mel-space diffusion generator trained for one epoch (the served model)."""
    from emogen.training import FitConfig, fit

    root = tmp_path_factory.mktemp("serve-train")
    summary = fit("diffusion", tiny_features, FitConfig(preset="tiny", epochs=1, storage_path=root / "train",
                                                         run_name="diff-serve", tracking_uri=f"sqlite:///{root / 'mlflow.db'}"))
    return summary["checkpoint"]


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory):
    """A throwaway local MLflow store shared by the session's training runs."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP oversubscription, which made model
    tests ~8x slower on a shared 2-core machine. Restored for other test modules."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def write_wav():
    def _write(path: Path, seconds: float = 2.0, sample_rate: int = 16_000, subtype: str = "PCM_16", **kw) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), tone(seconds, sample_rate, **kw), sample_rate, subtype=subtype)
        return path

    return _write


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cluster: starts a second local Ray head and submits a job to it; runs after every other test"
    )


def pytest_collection_modifyitems(config, items):
    """A test that uses the session's Ray (directly or through a fixture built on it) is
    `slow` whether or not its module says so, so `make test-fast` never starts Ray. Tests
    marked `cluster` run last, after every training in this session's Ray: a second Ray
    head on the machine must not overlap them."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
    items[:] = [i for i in items if i.get_closest_marker("cluster") is None] + [
        i for i in items if i.get_closest_marker("cluster") is not None
    ]
