"""What the serving benchmarks (serve_load.py, hostile_load.py) start when they are not given
a running server: a tiny checkpoint, and the app on a free loopback port in a local 2-CPU Ray."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray
from ray import serve

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def tiny_checkpoint(work: Path) -> str:
    """A tiny VAE + latent diffusion (the demo's serving path at test size), cached in `work`."""
    cached = work / "checkpoint.txt"
    if cached.exists() and Path(cached.read_text().strip()).exists():
        return cached.read_text().strip()
    # deferred: training imports torch and Ray Train, which a benchmark against a running server never needs
    from emogen.data.corpus import generate_corpus
    from emogen.data.datasets import build_manifest
    from emogen.data.features import preprocess
    from emogen.training import FitConfig, fit

    generate_corpus(work / "corpus", preset="tiny", seed=0)
    preprocess(build_manifest([work / "corpus"]), work / "data")
    kw = dict(preset="tiny", epochs=1, storage_path=work / "train", tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    vae = fit("vae", work / "data", FitConfig(run_name="vae", **kw))
    diff = fit("diffusion", work / "data", FitConfig(run_name="latent", vae_checkpoint=vae["checkpoint"],
                                                   overrides={"diffusion": {"space": "latent"}, "unet": {"in_channels": 4}}, **kw))
    cached.write_text(diff["checkpoint"])
    return diff["checkpoint"]


def checkpoint_or_tiny(checkpoint: str | None, work: Path) -> str:
    """`checkpoint`, else the tiny one, trained in a Ray that is stopped before anything is measured."""
    if checkpoint is not None:
        return checkpoint
    work.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    try:
        return tiny_checkpoint(work)
    finally:
        ray.shutdown()


@contextmanager
def local_serve() -> Iterator[str]:
    """Ray Serve on 127.0.0.1:<free port> in a local 2-CPU Ray; yields the base URL, shuts both down after."""
    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
