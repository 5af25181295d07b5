"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np


def free_ports(n: int = 1) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open while choosing, so no repeats)."""
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tone(seconds: float, sample_rate: int, f0: float = 150.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A harmonic-rich, speech-band test signal with a little noise, peak 0.5."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12) if f0 * k < sample_rate / 2)
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    wave = wave + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    wave = (0.5 * wave / np.max(np.abs(wave))).astype(np.float32)
    return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave


# ------------------------------------------------------------- an S3 API server

S3_KEYS = {"AWS_ACCESS_KEY_ID": "emogen-test", "AWS_SECRET_ACCESS_KEY": "emogen-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


class S3Server:
    """moto's standalone S3 API server (what s3fs's own suite uses) on a loopback port, in
    its own process group, stopped with it. Clients find it through AWS_ENDPOINT_URL."""

    def __init__(self, port: int):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        return {**S3_KEYS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, timeout_s: float = 120.0) -> "S3Server":
        server = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with code {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {timeout_s:.0f} s")

    def create_bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **_boto_keys()).create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_KEYS["AWS_DEFAULT_REGION"]}


def emogen(*argv: str) -> dict:
    """`emogen ARGV` in this process (its Ray: the session's), the summary its last stdout line."""
    import contextlib
    import io
    import json

    from emogen.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([str(a) for a in argv])
    return json.loads(out.getvalue().strip().splitlines()[-1])
