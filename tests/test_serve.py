"""The Ray Serve synthesis service end to end: endpoints, seed determinism (alone and
batched), bad requests (4xx naming the field, never 500), a broken checkpoint (503), the
web page in headless Chromium."""

from __future__ import annotations

import argparse
import base64
import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import free_ports

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def base_url(diffusion_checkpoint, ray_session):
    """The service on 127.0.0.1:<free port>: the model at /, a broken checkpoint at /broken,
    an API-key-protected copy at /locked. Serve is shut down at the end."""
    from ray import serve

    from emogen.serving.app import ServeArgs, app

    def build_app(args: dict):  # as Ray Serve calls the builder: strings validated into ServeArgs
        return app(ServeArgs.model_validate(args))

    port = free_ports()[0]
    common = {"num_cpus": "0", "griffin_lim_iters": "4", "max_batch_size": "8", "batch_wait_timeout_s": "0.5"}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({**common, "checkpoint": diffusion_checkpoint}), name="emogen", route_prefix="/")
        serve.run(build_app({**common, "checkpoint": str(ROOT / "no-such-checkpoint")}), name="broken", route_prefix="/broken")
        serve.run(build_app({**common, "checkpoint": diffusion_checkpoint, "api_key": "sesame", "step_budget": "8"}),
                  name="locked", route_prefix="/locked")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url):
    import httpx

    with httpx.Client(base_url=base_url, timeout=300) as c:
        yield c


def _post(client, body, prefix=""):
    return client.post(f"{prefix}/v1/synthesize", json=body)


def test_info_endpoints(client, diffusion_checkpoint):
    assert client.get("/healthz").json() == {"status": "ok", "model": "diffusion"}
    assert client.get("/v1/emotions").json()["emotions"] == ["anger", "sadness", "happiness", "neutral", "fear", "disgust"]
    info = client.get("/v1/info").json()
    assert info["model"] == "diffusion" and info["checkpoint"] == diffusion_checkpoint
    assert info["config"]["step_budget"] == 4000 and info["config"]["max_batch_size"] == 8
    schema = client.get("/openapi.json").json()
    assert "/v1/synthesize" in schema["paths"] and client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="generate"' in page.text and "fear" in page.text


def test_formats_and_seed_determinism(client):
    body = {"emotion": "fear", "num_samples": 2, "steps": 2, "seed": 11}
    z1 = _post(client, {**body, "format": "zip"})
    assert z1.status_code == 200 and z1.headers["content-type"] == "application/zip"
    assert _post(client, {**body, "format": "zip"}).content == z1.content  # same seed -> same bytes
    names = zipfile.ZipFile(io.BytesIO(z1.content)).namelist()
    assert names == ["fear_seed11_00.wav", "fear_seed11_01.wav"]
    wavs = [zipfile.ZipFile(io.BytesIO(z1.content)).read(n) for n in names]
    assert all(w[:4] == b"RIFF" for w in wavs) and wavs[0] != wavs[1]

    mels = np.load(io.BytesIO(_post(client, {**body, "format": "npy"}).content))
    assert mels.shape == (2, 128, 173) and mels.dtype == np.float32 and np.isfinite(mels).all()
    other = np.load(io.BytesIO(_post(client, {**body, "seed": 12, "format": "npy"}).content))
    assert not np.array_equal(mels, other)

    one = _post(client, {**body, "num_samples": 1, "format": "wav"})
    assert one.headers["content-type"] == "audio/wav" and one.content[:4] == b"RIFF"

    data = _post(client, {**body, "format": "json"}).json()
    assert data["seed"] == 11 and data["sampler"] == "ddim" and data["steps"] == 2 and data["sample_rate"] == 22050
    assert [base64.b64decode(c["wav_base64"]) for c in data["clips"]] == wavs
    assert base64.b64decode(data["mel_png_base64"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_batched_requests_keep_their_seeds(client):
    """Concurrent requests share one stacked sampling run and still give the bytes each
    seed gives alone (DDPM: per-step noise too)."""
    body = {"emotion": "anger", "num_samples": 1, "steps": 2, "sampler": "ddpm", "format": "npy"}
    alone = {seed: _post(client, {**body, "seed": seed}).content for seed in (1, 2, 3)}
    before = len(client.get("/v1/info").json()["recent_batch_sizes"])
    bodies = [{**body, "seed": s} for s in (3, 1, 2)] + [{**body, "seed": 1, "num_samples": 2}]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: _post(client, b), bodies))
    assert all(r.status_code == 200 for r in responses)
    for b, r in zip(bodies[:3], responses[:3]):
        assert r.content == alone[b["seed"]], f"seed {b['seed']} changed when batched"
    assert len(set(alone.values())) == 3
    sizes = client.get("/v1/info").json()["recent_batch_sizes"][before:]
    assert max(sizes) > 1, f"requests were never batched: {sizes}"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"emotion": "boredom"}, "emotion"),
        ({"num_samples": 1}, "emotion"),
        ({"emotion": "fear", "num_samples": 0}, "num_samples"),
        ({"emotion": "fear", "num_samples": 17}, "num_samples"),
        ({"emotion": "fear", "steps": 0}, "steps"),
        ({"emotion": "fear", "steps": 1001}, "steps"),
        ({"emotion": "fear", "steps": "many"}, "steps"),
        ({"emotion": "fear", "guidance_scale": 25}, "guidance_scale"),
        ({"emotion": "fear", "seed": -1}, "seed"),
        ({"emotion": "fear", "sampler": "euler"}, "sampler"),
        ({"emotion": "fear", "format": "mp3"}, "format"),
        ({"emotion": "fear", "model": "gan"}, "model"),
        ({"emotion": "fear", "model": "vae"}, "model"),  # valid kind, but not the loaded one
        ({"emotion": "fear", "num_samples": 2, "format": "wav"}, "num_samples"),
        ({"emotion": "fear", "num_samples": 16, "steps": 1000}, "steps"),  # over the 4000 budget
        ({"emotion": "fear", "volume": 11}, "volume"),
    ],
)
def test_bad_requests_name_the_field(client, body, field):
    r = _post(client, body)
    assert r.status_code == 422, r.text
    detail = r.json()
    assert field in detail["message"] and any(field in d["loc"] for d in detail["detail"])


def test_bad_bodies(client):
    assert client.post("/v1/synthesize", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/v1/synthesize", json=["fear"]).status_code == 422
    huge = client.post("/v1/synthesize", content=b" " * 70_000, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "body" in huge.json()["message"]

    def chunks():
        for _ in range(20):
            yield b" " * 8192

    streamed = client.post("/v1/synthesize", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/healthz").status_code == 200  # the replica is fine afterwards


def test_broken_checkpoint_serves_503(client):
    r = client.get("/broken/healthz")
    assert r.status_code == 503 and "no-such-checkpoint" in r.json()["reason"]
    assert _post(client, {"emotion": "fear"}, prefix="/broken").status_code == 503
    assert client.get("/broken/v1/emotions").status_code == 200  # still answering, no crash loop


def test_api_key_and_budget(client):
    assert client.get("/locked/v1/info").status_code == 401
    assert client.get("/locked/v1/info", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/locked/v1/info", headers={"X-API-Key": "sesame"}).json()["config"]["api_key_required"]
    r = client.post("/locked/v1/synthesize", json={"emotion": "fear", "steps": 3, "num_samples": 3}, headers={"X-API-Key": "sesame"})
    assert r.status_code == 422 and "num_samples" in r.json()["message"] and "budget of 8" in r.json()["message"]
    assert client.get("/locked/healthz").status_code == 200


def test_refuses_public_bind_without_key():
    from emogen.serving.command import add_subcommand, check_bind

    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "key")
    with pytest.raises(SystemExit, match="without an API key"):
        check_bind("0.0.0.0", None)
    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--checkpoint", "x", "--host", "0.0.0.0"])
    assert args.port == 8000 and args.max_batch_size == 8 and args.replicas == 1
    with pytest.raises(SystemExit, match="without an API key"):
        args.func(args)


def test_web_page_generates_playable_audio(base_url):
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser driver: the playwright package is not installed")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        try:
            page = browser.new_page()
            page.goto(base_url + "/")
            page.fill("#steps", "1")
            page.fill("#num_samples", "2")
            page.select_option("#emotion", "sadness")
            page.click("#generate")
            page.wait_for_selector("#clips audio", timeout=240_000)
            assert page.locator("#clips audio").count() == 2
            src = page.eval_on_selector("#clips audio", "a => a.src")
            assert src.startswith("data:audio/wav;base64,")
            assert base64.b64decode(src.split(",", 1)[1])[:4] == b"RIFF"
            page.wait_for_function("document.querySelector('#clips audio').readyState >= 1", timeout=30_000)
            assert page.eval_on_selector("#mel", "img => img.naturalWidth") > 0
            assert "Done: 2 clip(s) of sadness" in page.inner_text("#status")
        finally:
            browser.close()
