"""The Ray Serve synthesis service end to end: endpoints, seed determinism (alone and
batched), bad requests (4xx naming the field, never 500), a broken checkpoint (503), the
attention-map PNG, the web page in headless Chromium, the hostile-load benchmark's mix.
The parts that need no Serve (batcher, settings, middlewares, refusals, page) have their
own modules beside this one."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from tests.support import free_ports

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def base_url(diffusion_checkpoint, ray_session):
    """The service on 127.0.0.1:<free port>: the model at /, a broken checkpoint at /broken,
    an API-key-protected copy at /locked. Serve is shut down at the end."""
    from ray import serve

    from emogen.serving.app import ServeArgs, app

    def build_app(args: dict):  # as Ray Serve calls the builder: strings validated into ServeArgs
        return app(ServeArgs.model_validate(args))

    port = free_ports()[0]
    common = {"num_cpus": "0", "griffin_lim_iters": "4", "max_batch_size": "8", "batch_wait_timeout_s": "0.5",
              "body_timeout_s": "2"}
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
    # the checkpoint by its run and checkpoint folder names: no server path in any response
    assert info["model"] == "diffusion" and info["checkpoint"] == "/".join(Path(diffusion_checkpoint).parts[-2:])
    assert str(Path(diffusion_checkpoint).parent) not in client.get("/v1/info").text
    assert info["config"]["step_budget"] == 4000 and info["config"]["max_batch_size"] == 8
    assert info["device"] == "cpu"  # decided in the replica: Ray granted it no GPU
    schema = client.get("/openapi.json").json()
    assert "/v1/synthesize" in schema["paths"] and "/v1/attention" in schema["paths"]
    docs = client.get("/docs")  # Swagger UI from the app's own files, not a CDN
    assert docs.status_code == 200 and "cdn" not in docs.text.lower() and "/static-offline-docs/" in docs.text
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "/static-offline-docs/redoc.standalone.js" in redoc.text
    page = client.get("/")
    assert page.status_code == 200 and 'id="generate"' in page.text and "fear" in page.text
    assert 'id="show_attention"' in page.text  # a diffusion model: attention maps are offered
    assert 'id="show_attention"' not in client.get("/broken/").text  # no model, nothing to look into


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
    """Concurrent requests share one stacked sampling run and one Griffin-Lim call and
    still give the bytes each seed gives alone (DDPM: per-step noise too)."""
    # steps x samples at the long-request cost (100), not above: a longer request would let
    # the queued ones run between its steps instead of behind it
    blocker = {"emotion": "sadness", "num_samples": 2, "steps": 50, "seed": 5, "format": "npy"}
    for fmt in ("npy", "wav"):
        body = {"emotion": "anger", "num_samples": 1, "steps": 2, "sampler": "ddpm", "format": fmt}
        alone = {seed: _post(client, {**body, "seed": seed}).content for seed in (1, 2, 3)}
        before = client.get("/v1/info").json()["batch_count"]
        bodies = [{**body, "seed": s} for s in (3, 1, 2)] + [{**body, "seed": 1, "num_samples": 2, "format": "npy"}]
        with ThreadPoolExecutor(len(bodies) + 1) as pool:
            # a batch forms when the model is free: these all queue behind the blocker
            busy = pool.submit(_post, client, blocker)
            time.sleep(1.0)  # past the blocker's own batch window
            queued = [pool.submit(_post, client, b) for b in bodies]
            assert not busy.done(), "the blocking request ended before the others queued: make it longer"
            assert busy.result().status_code == 200
            responses = [f.result() for f in queued]
        assert all(r.status_code == 200 for r in responses)
        for b, r in zip(bodies[:3], responses[:3]):
            assert r.content == alone[b["seed"]], f"{fmt} seed {b['seed']} changed when batched"
        assert len(set(alone.values())) == 3
        info = client.get("/v1/info").json()
        sizes = info["recent_batch_sizes"][-(info["batch_count"] - before):]
        assert max(sizes) >= 5, f"the queued requests were not batched together: {sizes}"


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


def test_stalled_uploads_time_out_and_the_service_keeps_answering(client, base_url):
    """256 sockets from one client send headers and 20 bytes of a 60,000-byte body, then
    nothing (each would hold a request slot of the replica, waiting for its body). The
    client's first 32 (the per-client cap) wait for the body timeout (2 s here) and get
    408, the rest get 429 at once; meanwhile another client gets /healthz and a synthesis
    answered."""
    import socket

    host, port = base_url.rsplit("/", 1)[1].split(":")
    head = (b"POST /v1/synthesize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n" + b" " * 20)
    stalled = []
    try:
        for _ in range(256):  # from 127.0.0.2: loopback too, another client to the service
            sock = socket.create_connection((host, int(port)), timeout=60, source_address=("127.0.0.2", 0))
            sock.sendall(head)
            stalled.append(sock)
        assert client.get("/healthz", timeout=10).json()["status"] == "ok"
        assert _post(client, {"emotion": "fear", "steps": 1, "format": "npy"}).status_code == 200
        statuses = []
        for sock in stalled:
            reply = sock.recv(4096)
            statuses.append(int(reply.split(b" ", 2)[1]))
            if statuses[-1] == 429:
                assert b"retry-after: 1" in reply.lower() and b"more than 32 requests at once from 127.0.0.2" in reply
        assert statuses.count(408) == 32 and statuses.count(429) == 256 - 32, sorted(set(statuses))
    finally:
        for sock in stalled:
            sock.close()
    config = client.get("/v1/info").json()["config"]
    assert config["body_timeout_s"] == 2.0 and config["max_requests_per_client"] == 32


def test_short_requests_run_between_the_steps_of_a_long_one(client, base_url):
    """A long request (above long_request_cost, 100 steps x samples) does not hold short
    ones behind it: they run between its steps, and it still completes, its numbers
    unchanged by the interruptions."""
    import httpx

    long = {"emotion": "anger", "num_samples": 1, "steps": 200, "seed": 5, "format": "npy"}
    info = client.get("/v1/info").json()
    before, batches = info["preemptions"], info["batch_count"]
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.post, f"{base_url}/v1/synthesize", json=long, timeout=300)
        while client.get("/v1/info").json()["batch_count"] == batches and not running.done():
            time.sleep(0.05)
        time.sleep(0.5)  # the long batch is sampling
        shorts = [_post(client, {"emotion": "fear", "steps": 2, "seed": s, "format": "npy"}) for s in range(3)]
        assert not running.done(), "the short requests waited for the long one"
        assert [r.status_code for r in shorts] == [200] * 3
        interrupted = running.result()
    assert interrupted.status_code == 200
    assert client.get("/v1/info").json()["preemptions"] >= before + 3
    assert client.get("/v1/info").json()["config"]["long_request_cost"] == 100
    alone = _post(client, long)  # nothing runs beside it now
    assert alone.content == interrupted.content


def test_a_disconnected_client_frees_the_replica_within_a_step(client, base_url):
    """A long request whose client gives up is cancelled by Serve; its batch (nobody else
    in it) stops at the next denoising step instead of sampling on for nobody."""
    import httpx

    before = client.get("/v1/info").json()["abandoned_batches"]["batches"]
    long = {"emotion": "anger", "num_samples": 4, "steps": 1000, "seed": 3, "format": "npy"}
    with pytest.raises(httpx.TimeoutException):  # the client leaves after 2 s
        httpx.post(f"{base_url}/v1/synthesize", json=long, timeout=2.0)
    deadline = time.time() + 120
    while (abandoned := client.get("/v1/info").json()["abandoned_batches"])["batches"] == before and time.time() < deadline:
        time.sleep(0.2)
    assert abandoned["batches"] == before + 1, abandoned
    assert abandoned["last_of"] == 1000 and abandoned["last_step"] < 1000  # stopped early, not run to the end
    assert _post(client, {"emotion": "fear", "steps": 1, "format": "npy"}).status_code == 200


def test_a_request_past_its_deadline_gets_504_and_its_work_stops(client):
    before = client.get("/v1/info").json()["abandoned_batches"]["batches"]
    late = _post(client, {"emotion": "anger", "num_samples": 4, "steps": 1000, "seed": 4, "format": "npy", "timeout_s": 1})
    assert late.status_code == 504 and "timeout_s" in late.json()["message"], late.text
    deadline = time.time() + 120
    while (abandoned := client.get("/v1/info").json()["abandoned_batches"])["batches"] == before and time.time() < deadline:
        time.sleep(0.2)
    assert abandoned["batches"] == before + 1 and abandoned["last_step"] < 1000
    assert client.get("/v1/info").json()["config"]["request_timeout_s"] == 300.0


def test_broken_checkpoint_serves_503(client):
    r = client.get("/broken/healthz")
    assert r.status_code == 503 and "no-such-checkpoint" in r.json()["reason"] and str(ROOT) not in r.text
    assert _post(client, {"emotion": "fear"}, prefix="/broken").status_code == 503
    assert client.get("/broken/v1/emotions").status_code == 200  # still answering, no crash loop


def test_non_finite_numbers_and_wrong_media_type_are_named(client):
    nan = client.post("/v1/synthesize", content=b'{"emotion": "fear", "guidance_scale": NaN}',
                      headers={"content-type": "application/json"})
    assert nan.status_code == 422 and "guidance_scale" in nan.json()["message"] and "finite" in nan.json()["message"]
    inf = client.post("/v1/synthesize", content=b'{"emotion": "fear", "eta": Infinity}', headers={"content-type": "application/json"})
    assert inf.status_code == 422 and "finite" in inf.json()["message"]
    plain = client.post("/v1/synthesize", content=b'{"emotion": "fear"}', headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["message"] and "text/plain" in plain.json()["message"]
    assert client.post("/v1/attention", content=b"{}", headers={}).status_code == 415  # no media type at all
    charset = client.post("/v1/synthesize", content=b'{"emotion": "fear", "steps": 1, "format": "npy"}',
                          headers={"content-type": "application/json; charset=utf-8"})
    assert charset.status_code == 200


def test_api_key_is_checked_before_the_body(client):
    """No key, no parsing: a missing or wrong key gets 401 whatever the body (bad JSON,
    wrong fields, over the size limit, wrong media type)."""
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "sesam"}, {"X-API-Key": "sesame!"}):
        for content, media in ((b"{not json", "application/json"), (b'{"volume": 11}', "application/json"),
                               (b" " * 70_000, "application/json"), (b"x", "text/plain")):
            r = client.post("/locked/v1/synthesize", content=content, headers={**headers, "content-type": media})
            assert r.status_code == 401 and "X-API-Key" in r.json()["message"], (headers, media, r.text)
    ok = client.post("/locked/v1/synthesize", content=b"{not json",
                     headers={"X-API-Key": "sesame", "content-type": "application/json"})
    assert ok.status_code == 422  # with the key, the body is read and judged


def test_api_key_and_budget(client):
    assert client.get("/locked/v1/info").status_code == 401
    assert client.get("/locked/v1/info", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/locked/v1/info", headers={"X-API-Key": "sesame"}).json()["config"]["api_key_required"]
    r = client.post("/locked/v1/synthesize", json={"emotion": "fear", "steps": 3, "num_samples": 3}, headers={"X-API-Key": "sesame"})
    assert r.status_code == 422 and "num_samples" in r.json()["message"] and "budget of 8" in r.json()["message"]
    assert client.get("/locked/healthz").status_code == 200


def _attention(client, body, prefix="", **kw):
    return client.post(f"{prefix}/v1/attention", json=body, **kw)


def test_attention_png_is_not_disturbed_by_concurrent_synthesis(client):
    """The maps of one request are the same PNG alone and while batched synthesis runs on
    the replica (attention hooks a private copy of the model, not the shared one)."""
    body = {"emotion": "fear", "steps": 2, "seed": 11}
    alone = _attention(client, body)
    assert alone.status_code == 200, alone.text
    assert alone.headers["content-type"] == "image/png" and alone.content[:8] == PNG
    # long enough to outlast both attention requests
    synthesis = {"emotion": "anger", "num_samples": 8, "steps": 200, "seed": 1, "format": "npy"}
    with ThreadPoolExecutor(3) as pool:
        busy = pool.submit(_post, client, synthesis)
        time.sleep(1.5)  # a lone request's batch forms at once: the synthesis is sampling when attention starts
        during = [pool.submit(_attention, client, body) for _ in range(2)]
        assert [f.result().content for f in during] == [alone.content] * 2
        assert not busy.done(), "the synthesis ended before attention ran: make it longer"
        assert busy.result().status_code == 200
    assert _attention(client, {**body, "seed": 12}).content != alone.content


def test_attention_refusals(client):
    assert _attention(client, {"emotion": "fear"}, prefix="/broken").status_code == 503
    assert _attention(client, {"emotion": "fear", "steps": 1}, prefix="/locked").status_code == 401
    assert _attention(client, {"emotion": "fear", "steps": 1}, prefix="/locked", headers={"X-API-Key": "wrong"}).status_code == 401
    over = _attention(client, {"emotion": "fear", "steps": 9}, prefix="/locked", headers={"X-API-Key": "sesame"})
    assert over.status_code == 422 and over.json()["message"] == "steps: steps = 9 exceeds this service's budget of 8; lower steps"
    for body, field in [({"emotion": "fear", "num_samples": 2}, "num_samples"),  # one clip's maps: not a field here
                        ({"emotion": "fear", "format": "wav"}, "format"), ({"emotion": "terror"}, "emotion"),
                        ({"emotion": "fear", "steps": 0}, "steps"), ({"emotion": "fear", "eta": 2}, "eta")]:
        r = _attention(client, body)
        assert r.status_code == 422 and field in r.json()["message"], r.text


@contextmanager
def _browser_page(base_url, path="/", offline=False):
    """A headless Chromium tab on the web page (skips when no browser is installed);
    offline: every request not to the service fails, as on an air-gapped cluster."""
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
            if offline:
                page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base_url) else route.abort())
            page.goto(base_url + path)
            yield page
        finally:
            browser.close()


def test_web_page_generates_playable_audio(base_url):
    with _browser_page(base_url) as page:
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
        assert not page.is_checked("#show_attention") and page.is_hidden("#attention")  # off by default


def test_docs_render_the_operations_offline(base_url):
    with _browser_page(base_url, "/docs", offline=True) as page:
        page.wait_for_selector(".opblock", timeout=60_000)
        text = page.inner_text("body")
        assert "/v1/synthesize" in text and "/v1/attention" in text and "EmoGen synthesis" in text


def test_web_page_shows_attention_when_asked(base_url):
    with _browser_page(base_url) as page:
        page.fill("#steps", "1")
        page.select_option("#emotion", "fear")
        page.check("#show_attention")
        page.click("#generate")
        page.wait_for_function("document.getElementById('attention').naturalWidth > 0", timeout=240_000)
        assert page.is_visible("#attention")
        caption = page.inner_text("#attention_figure figcaption")
        assert "self-attention while generating one clip" in caption and "Brighter" in caption
        assert page.inner_text("#status").startswith("Done: 1 clip(s) of fear")


def test_replicas_refuse_a_public_bind_without_key(monkeypatch, base_url):
    """`serve run serve/config.yaml` and `serve deploy` bind where their http_options say:
    the replica applies `emogen serve`'s rule and refuses to start on a public address
    without an API key."""
    from emogen.serving import binding
    from emogen.serving.app import EmoGenService, ServeArgs

    assert binding.proxy_host() == "127.0.0.1"  # what this module's Serve binds, from its controller
    service = EmoGenService.func_or_class.__mro__[1]  # the class under Serve's ASGI wrapper
    assert service.__name__ == "EmoGenService"
    monkeypatch.setattr(binding, "proxy_host", lambda: "0.0.0.0")
    monkeypatch.delenv("EMOGEN_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="refusing to serve on '0.0.0.0' without an API key"):
        service(ServeArgs(checkpoint=None))
    assert "no checkpoint configured" in service(ServeArgs(checkpoint=None, api_key="k")).error


def test_mixed_hostile_load_keeps_the_service_answering(base_url, tmp_path):
    """300 requests at concurrency 32, half valid (npy, WAV), half invalid in seven ways
    (benchmarks/hostile_load.py's mix, run as a user runs it): every one gets its expected
    status (no 5xx), /healthz keeps answering meanwhile, and the replica serves normally
    afterwards."""
    out = tmp_path / "hostile.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hostile_load.py"), "--url", base_url,
                           "--scenarios", "mixed", "--requests", "300", "--concurrency", "32", "--mixed-seconds", "300",
                           "--json-out", str(out)],
                          cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "EMOGEN_API_KEY"},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    result = results["mixed"]
    assert result["sent"] == 300 and result["server_error_count"] == 0, result["server_errors"]
    assert not result["other_than_expected"], result["statuses_by_kind"]
    assert result["statuses_by_kind"]["valid_wav"] == {"200": 75} and result["statuses_by_kind"]["text_plain"] == {"415": 21}
    assert set(result["healthz_statuses"]) == {"200"} and result["healthz_samples"] >= 2
    after = results["recovery"]
    assert after["healthz_status"] == "200" and after["valid_status"] == "200"
