"""The package installed from a wheel, not from the checkout: `emogen.serving` and its web
page are shipped, and `emogen serve` run outside the repository answers /healthz and
synthesizes a WAV, then stops its own Ray without leaving processes behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
from tests.support import free_ports

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory) -> Path:
    """A venv holding the emogen wheel, its third-party packages read from the project
    venv through a .pth file (nothing copied). Returns the venv directory."""
    work = tmp_path_factory.mktemp("install")
    source = work / "src"  # built from a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "emogen", source / "emogen", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(work / "wheels"), str(source)], check=True, timeout=120)
    (wheel,) = (work / "wheels").glob("emogen-*.whl")

    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=120)
    # after the install: pip would otherwise see the project venv's editable emogen and skip it
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "project-venv-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "VIRTUAL_ENV")}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", **extra}


def test_wheel_ships_the_serving_package(installed_venv, tmp_path):
    probe = ("import importlib.resources as r, emogen.serving.app as app; print(app.__file__); "
             "print(r.files('emogen.serving').joinpath('page.html').read_text()[:15])")
    out = subprocess.run([str(installed_venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=_env(),
                         check=True, capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert Path(out[0]).is_relative_to(installed_venv) and "site-packages" in out[0], out
    assert out[1] == "<!doctype html>"


def test_installed_emogen_serve(installed_venv, diffusion_checkpoint, tmp_path):
    """`emogen serve` from the wheel, in a directory outside the checkout, on its own Ray
    (its own temp dir: a short path, Ray's unix sockets live under it)."""
    import httpx
    import psutil

    ray_tmp = Path(tempfile.mkdtemp(prefix="rayi-", dir="/tmp"))
    port = free_ports()[0]
    log = tmp_path / "serve.log"
    command = [str(installed_venv / "bin" / "emogen"), "serve", "--checkpoint", diffusion_checkpoint, "--port", str(port)]

    def ours() -> list:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(str(ray_tmp) in arg for arg in (p.info["cmdline"] or [])):
                    found.append(p)
            except psutil.Error:
                pass
        return found

    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=_env(RAY_TMPDIR=str(ray_tmp)), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 150
        health = None
        while time.time() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"{url}/healthz", timeout=5)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert health is not None and health.status_code == 200, log.read_text()[-5000:]
        assert health.json() == {"status": "ok", "model": "diffusion"}
        wav = httpx.post(f"{url}/v1/synthesize", timeout=120,
                         json={"emotion": "fear", "num_samples": 1, "steps": 1, "seed": 0, "format": "wav"})
        assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav" and wav.content[:4] == b"RIFF"

        process.send_signal(signal.SIGTERM)  # what Ctrl-C does: Serve and the Ray it started shut down
        assert process.wait(timeout=90) == 0, log.read_text()[-5000:]
        assert '"served"' in log.read_text()
        _, alive = psutil.wait_procs(ours(), timeout=30)
        assert not alive, f"Ray processes left after `emogen serve` stopped: {[p.pid for p in alive]}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for p in ours():
            p.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
