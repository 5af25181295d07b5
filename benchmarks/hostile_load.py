"""Hostile-load benchmark of the synthesis service: loopback only, bounded in
requests and time (every wait has a timeout). The client only reports what it sees.

    python benchmarks/hostile_load.py                                  # trains a tiny checkpoint, starts its own server
    python benchmarks/hostile_load.py --checkpoint PATH                # own server on that checkpoint
    python benchmarks/hostile_load.py --url http://127.0.0.1:8000 [--api-key K]   # a running server
    python benchmarks/hostile_load.py --sockets 32 --shorts 5 --long-steps 300 --requests 40   # a quick run

Without --url: a tiny VAE + latent diffusion (local_service.tiny_checkpoint, cached in --work),
then the app with its default limits on 127.0.0.1:<free port> in a local 2-CPU Ray (one
replica, 1 CPU; --api-key K configures the server's key too). After a warm-up (one npy and
one wav request), in order:

  stalled   `stalled_uploads`: --sockets TCP connections bound to --source (127.0.0.2, a
            different client than the prober; 127.0.0.1 when it cannot be bound, said so in
            the result) each send the headers of `POST /v1/synthesize` with Content-Length
            60000 and 20 bytes of body, then nothing. While they are open: 5 GET /healthz (a
            new connection each) and one 10-step npy request. Then the status line each
            stalled socket got within the body timeout + 20 s (408: body timeout; 429:
            per-client cap; "closed": EOF without a response; "no response").
  long      `long_beside_short`: p50/p95 of --shorts sequential 10-step npy requests on the
            idle service, then the same while one --long-steps npy request runs (started
            1 s earlier); the ratio of the p95s (and of the maxima: of 20 the p95 leaves out
            the slowest one, the one that waits for a long batch that cannot be preempted),
            whether the long request was still running when the last short one finished,
            its status and seconds.
  abandoned `abandoned_request`: a --abandon-steps request whose client leaves after
            --leave-after s (sooner, at half its idle duration estimated from a 10-step and a
            50-step request, when it would otherwise be done by then), then at once a 10-step
            request (timed), /v1/info's abandoned_batches before and after and how long
            after leaving they changed.
  mixed     `mixed_load`: --requests requests at --concurrency, half valid (10-step npy and
            wav, seeds varied), half invalid (unknown emotion, steps 0, guidance_scale NaN as
            raw JSON text, text/plain body, malformed JSON, a body over 64 KB, an unknown
            field, no API key when one is configured); counts per status per kind, every
            status >= 500 other than 503/504, /healthz sampled every 0.5 s meanwhile.
  recovery  one GET /healthz and one 10-step request at the end.

Targets (the summary; exit status 1 when one fails):
  - with the stalled sockets open, every /healthz is 200 in < 1 s and the 10-step request is 200;
  - busy p95 <= 3x idle p95, all shorts 200, and the long request still running when the last
    short one finished (else the shorts were not measured beside it);
  - the 10-step request after the abandoned one is 200 within 3x the idle 10-step latency + 1 s
    (reported as the bound);
  - no status >= 500 other than 503/504 in the mix;
  - the service answers /healthz and a 10-step request at the end.
Prints the load average at start and end, the results as JSON and the summary as markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
from ray import serve

from common import load_avg, pct
from emogen.config import EMOTIONS
from local_service import checkpoint_or_tiny, local_serve

HERE = Path(__file__).resolve().parent

SCENARIOS = ("stalled", "long", "abandoned", "mixed")
FRESH = httpx.Limits(max_connections=1, max_keepalive_connections=0)  # a new connection per request


# ----------------------------------------------------------------------------- helpers


def key_headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def client(base: str, api_key: str | None, timeout: float, fresh: bool = False, connections: int = 4) -> httpx.AsyncClient:
    limits = FRESH if fresh else httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base, headers=key_headers(api_key), timeout=timeout, limits=limits)


async def call(c: httpx.AsyncClient, method: str, path: str, timeout: float, **kw) -> tuple[str, float, bytes]:
    """(status code as text, or the exception's name; seconds; body), bounded by `timeout`."""
    start = time.perf_counter()
    try:
        r = await asyncio.wait_for(c.request(method, path, **kw), timeout)
        return str(r.status_code), time.perf_counter() - start, r.content
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        return type(exc).__name__, time.perf_counter() - start, b""


def short_body(seed: int, steps: int = 10, fmt: str = "npy", emotion: str = "fear") -> dict:
    return {"emotion": emotion, "steps": steps, "format": fmt, "seed": seed}


async def get_info(base: str, api_key: str | None, timeout: float = 30) -> dict:
    async with client(base, api_key, timeout) as c:
        status, _, content = await call(c, "GET", "/v1/info", timeout)
    try:
        return json.loads(content) if status == "200" else {"error": status}
    except ValueError:
        return {"error": "not JSON"}


def counts(statuses: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in statuses:
        out[s] = out.get(s, 0) + 1
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- scenarios


async def stalled_uploads(base: str, sockets: int = 256, source: str = "127.0.0.2", *, api_key: str | None = None,
                          probes: int = 5, steps: int = 10, probe_timeout: float = 30.0, valid_timeout: float = 120.0,
                          connect_timeout: float = 10.0, read_timeout: float | None = None) -> dict[str, Any]:
    """`sockets` stalled uploads from `source`; /healthz and one valid request meanwhile;
    then what each stalled socket got back within `read_timeout` s of its headers (default:
    the server's body timeout from /v1/info + 20 s)."""
    url = httpx.URL(base)
    host, port = url.host, url.port or 80
    out: dict[str, Any] = {"sockets": sockets, "source": source}
    try:
        with socket.socket() as s:
            s.bind((source, 0))
    except OSError as exc:
        out.update(source="127.0.0.1", source_fallback=f"cannot bind {source} ({exc}): used 127.0.0.1")
    body_timeout = (await get_info(base, api_key)).get("config", {}).get("body_timeout_s")
    out["server_body_timeout_s"] = body_timeout
    if read_timeout is None:
        read_timeout = float(body_timeout or 10.0) + 20.0
    out["read_timeout_s"] = read_timeout

    payload = b'{"emotion": "fear",  '[:20]
    head = (f"POST /v1/synthesize HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in key_headers(api_key).items())
            + "Content-Length: 60000\r\n\r\n").encode() + payload
    gate = asyncio.Semaphore(64)

    async def open_one():
        async with gate:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, local_addr=(out["source"], 0)), connect_timeout)
            try:
                writer.write(head)
                await asyncio.wait_for(writer.drain(), connect_timeout)
            except BaseException:
                writer.close()
                raise
            return reader, writer, time.perf_counter()

    start = time.perf_counter()
    opened = await asyncio.gather(*(open_one() for _ in range(sockets)), return_exceptions=True)
    conns = [o for o in opened if not isinstance(o, BaseException)]
    out["connected"] = len(conns)
    out["connect_errors"] = counts([type(o).__name__ for o in opened if isinstance(o, BaseException)])
    out["connect_seconds"] = round(time.perf_counter() - start, 3)

    async def first_line(reader: asyncio.StreamReader, sent: float) -> tuple[str, float]:
        try:
            line = await reader.readline()
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            return type(exc).__name__, time.perf_counter() - sent
        parts = line.split()
        if not line:
            status = "closed"
        elif len(parts) >= 2 and parts[0].startswith(b"HTTP/"):
            status = parts[1].decode(errors="replace")
        else:
            status = "garbled"
        return status, time.perf_counter() - sent

    readers = [asyncio.create_task(first_line(r, sent)) for r, _, sent in conns]
    try:
        out["open_at_probe_start"] = sum(not t.done() for t in readers)
        health, health_s = [], []
        async with client(base, api_key, probe_timeout, fresh=True) as c:
            for _ in range(probes):
                status, seconds, _ = await call(c, "GET", "/healthz", probe_timeout)
                health.append(status)
                health_s.append(seconds)
            out["open_after_healthz"] = sum(not t.done() for t in readers)
            status, seconds, content = await call(c, "POST", "/v1/synthesize", valid_timeout,
                                                  json={"emotion": "fear", "steps": steps, "format": "npy", "seed": 1})
        out["open_after_valid"] = sum(not t.done() for t in readers)
        out.update(healthz_statuses=health, healthz_max_s=round(max(health_s), 3) if health_s else None,
                   healthz_seconds=[round(s, 3) for s in health_s],
                   valid_status=status, valid_s=round(seconds, 3))
        if status != "200":
            out["valid_body"] = content[:300].decode(errors="replace")

        last_sent = max((sent for _, _, sent in conns), default=time.perf_counter())
        wait = max(0.0, last_sent + read_timeout - time.perf_counter())
        if readers:
            await asyncio.wait(readers, timeout=wait)
        got: list[tuple[str, float]] = []
        for t in readers:
            if t.done():
                got.append(t.result())
            else:
                t.cancel()
                got.append(("no response", float("nan")))
        out["stalled_statuses"] = counts([s for s, _ in got])
        out["stalled_seconds_by_status"] = {
            s: {"min": round(min(x for t, x in got if t == s), 2), "max": round(max(x for t, x in got if t == s), 2)}
            for s in out["stalled_statuses"] if s != "no response"}
    finally:
        for t in readers:
            t.cancel()
        for _, w, _ in conns:
            w.close()
        try:
            await asyncio.wait_for(asyncio.gather(*(w.wait_closed() for _, w, _ in conns), return_exceptions=True), 10)
        except TimeoutError:
            out["close_timeout"] = True
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


async def long_beside_short(base: str, long_steps: int = 1000, short_steps: int = 10, shorts: int = 20, *,
                            api_key: str | None = None, start_wait: float = 1.0, short_timeout: float = 300.0,
                            long_timeout: float = 900.0) -> dict[str, Any]:
    """p50/p95 of `shorts` sequential short requests idle, then beside one long request."""
    out: dict[str, Any] = {"long_steps": long_steps, "short_steps": short_steps, "shorts": shorts}

    async def run_shorts(c, offset: int, long_task=None) -> tuple[list[str], list[float], int]:
        statuses, seconds, beside = [], [], 0
        for i in range(shorts):
            status, s, _ = await call(c, "POST", "/v1/synthesize", short_timeout,
                                      json=short_body(offset + i, short_steps, emotion=EMOTIONS[i % 6]))
            statuses.append(status)
            seconds.append(s)
            beside += long_task is not None and not long_task.done()
        return statuses, seconds, beside

    async with client(base, api_key, short_timeout) as c:
        idle_status, idle_s, _ = await run_shorts(c, 1000)
        out.update(idle_statuses=counts(idle_status), idle_p50_s=pct(idle_s, 50), idle_p95_s=pct(idle_s, 95),
                   idle_max_s=round(max(idle_s), 3))
        before = (await get_info(base, api_key)).get("batch_count")

        async def long_request():
            async with client(base, api_key, long_timeout) as lc:
                return await call(lc, "POST", "/v1/synthesize", long_timeout,
                                  json={"emotion": "anger", "steps": long_steps, "format": "npy", "seed": 7})

        long_start = time.perf_counter()
        long_task = asyncio.create_task(long_request())
        try:
            await asyncio.sleep(start_wait)
            after = (await get_info(base, api_key)).get("batch_count")
            out["batches_started_during_wait"] = (after - before) if isinstance(after, int) and isinstance(before, int) else None
            out["long_done_before_shorts"] = long_task.done()
            busy_status, busy_s, beside = await run_shorts(c, 2000, long_task)
            out["long_running_after_last_short"] = not long_task.done()
            out["shorts_finished_beside_long"] = beside
            out.update(busy_statuses=counts(busy_status), busy_p50_s=pct(busy_s, 50), busy_p95_s=pct(busy_s, 95),
                       busy_max_s=round(max(busy_s), 3), busy_seconds=[round(s, 3) for s in busy_s])
            try:
                status, _, body = await asyncio.wait_for(long_task, long_timeout + 10)
            except TimeoutError:
                status, body = "TimeoutError", b""
        finally:
            long_task.cancel()
    out.update(long_status=status, long_s=round(time.perf_counter() - long_start, 2))
    if status != "200":
        out["long_body"] = body[:300].decode(errors="replace")
    idle95, busy95 = out["idle_p95_s"], out["busy_p95_s"]
    out["p95_ratio"] = round(busy95 / idle95, 2) if idle95 else None
    out["max_ratio"] = round(out["busy_max_s"] / out["idle_max_s"], 2) if out["idle_max_s"] else None
    return out


async def abandoned_request(base: str, steps: int = 500, leave_after: float = 2.0, *, api_key: str | None = None,
                            short_steps: int = 10, short_timeout: float = 600.0, settle_timeout: float = 10.0,
                            adapt: bool = True) -> dict[str, Any]:
    """A `steps` request whose client leaves after `leave_after` s, then at once a short
    request (timed) while /v1/info is polled for the abandoned batch (`freed_after_s`: from
    leaving until abandoned_batches changed, None when it did not within `settle_timeout`).

    The request must still be running when the client leaves, or nothing is abandoned: with
    `adapt`, the duration of `steps` steps is estimated on the idle service (a 10-step and a
    50-step request: seconds per step) and the client leaves at half of it when that is
    sooner than `leave_after` (a tiny checkpoint may finish before the client leaves)."""
    out: dict[str, Any] = {"steps": steps, "leave_after_s": leave_after}
    out["abandoned_before"] = before = (await get_info(base, api_key)).get("abandoned_batches")
    async with client(base, api_key, short_timeout) as c:
        status, idle_s, _ = await call(c, "POST", "/v1/synthesize", short_timeout, json=short_body(11, short_steps))
        out.update(idle_short_status=status, idle_short_s=round(idle_s, 3))
        probe_steps = min(steps, 5 * short_steps)
        status, probe_s, _ = await call(c, "POST", "/v1/synthesize", short_timeout, json=short_body(13, probe_steps))
    per_step = max(0.0, probe_s - idle_s) / (probe_steps - short_steps) if probe_steps > short_steps else idle_s / short_steps
    expected = idle_s + (steps - short_steps) * per_step
    out.update(idle_probe_steps=probe_steps, idle_probe_s=round(probe_s, 3), step_s_estimate=round(per_step, 5),
               expected_s=round(expected, 2))
    leave = leave_after
    if adapt and expected < 2 * leave_after:
        leave = max(0.2, expected / 2)
        out["leave_adapted"] = f"the request takes about {expected:.2f} s idle: left at half of it"
    out["leave_after_used_s"] = round(leave, 3)

    start = time.perf_counter()
    async with client(base, api_key, leave + 30) as c:  # leaving: the request is cancelled, the client closed
        status, seconds, _ = await call(c, "POST", "/v1/synthesize", leave,
                                        json={"emotion": "sadness", "steps": steps, "format": "npy", "seed": 5})
    left_at = time.perf_counter()
    out["left"] = status == "TimeoutError"
    out["abandoned_request_status"] = "left" if out["left"] else status  # a status: it ended before the client left
    out["left_after_s"] = round(left_at - start, 3)

    async def watch():
        deadline, after = left_at + settle_timeout, before
        while time.perf_counter() < deadline:
            info = await get_info(base, api_key, timeout=max(0.5, deadline - time.perf_counter()))
            if "abandoned_batches" in info and info["abandoned_batches"] != before:
                return info["abandoned_batches"], time.perf_counter() - left_at
            after = info.get("abandoned_batches", after)
            await asyncio.sleep(0.1)
        return after, None

    watcher = asyncio.create_task(watch())
    async with client(base, api_key, short_timeout) as c:
        status, seconds, body = await call(c, "POST", "/v1/synthesize", short_timeout, json=short_body(12, short_steps))
    out.update(next_status=status, next_s=round(seconds, 3))
    if status != "200":
        out["next_body"] = body[:300].decode(errors="replace")
    out["bound_s"] = round(3 * idle_s + 1.0, 3)
    out["bound"] = "3 x the idle 10-step request + 1 s"
    out["not_cancelled_estimate_s"] = round(max(0.0, expected - leave), 2)
    # when the rest of the abandoned request is shorter than the bound, the time alone cannot
    # tell cancelled work from finished work: abandoned_batches (the server's own count) can
    out["bound_below_not_cancelled"] = out["bound_s"] < out["not_cancelled_estimate_s"]
    after, freed = await asyncio.wait_for(watcher, settle_timeout + 35)
    out.update(abandoned_after=after, freed_after_s=round(freed, 3) if freed is not None else None)
    return out


def mixed_plan(requests: int, with_key: bool) -> list[str]:
    invalid = ["unknown_emotion", "steps_zero", "nan_guidance", "text_plain", "malformed_json", "oversized",
               "unknown_field"] + (["missing_api_key"] if with_key else [])
    plan = []
    for i in range(requests):
        plan.append(("valid_npy", "valid_wav")[(i // 2) % 2] if i % 2 == 0 else invalid[(i // 2) % len(invalid)])
    return plan


def mixed_request(kind: str, seed: int) -> dict[str, Any]:
    """httpx keyword arguments of one request of the mix (plus `no_key`)."""
    json_type = {"Content-Type": "application/json"}
    valid = short_body(seed, emotion=EMOTIONS[seed % 6])
    if kind == "valid_npy":
        return {"json": valid}
    if kind == "valid_wav":
        return {"json": {**valid, "format": "wav"}}
    if kind == "unknown_emotion":
        return {"json": {**valid, "emotion": "boredom"}}
    if kind == "steps_zero":
        return {"json": {**valid, "steps": 0}}
    if kind == "nan_guidance":
        return {"content": b'{"emotion": "fear", "steps": 10, "format": "npy", "guidance_scale": NaN}', "headers": json_type}
    if kind == "text_plain":
        return {"content": json.dumps(valid).encode(), "headers": {"Content-Type": "text/plain"}}
    if kind == "malformed_json":
        return {"content": b'{"emotion": "fear", "steps": 10,', "headers": json_type}
    if kind == "oversized":
        return {"json": {**valid, "padding": "x" * 70_000}}
    if kind == "unknown_field":
        return {"json": {**valid, "volume": 11}}
    if kind == "missing_api_key":
        return {"json": valid, "no_key": True}
    raise ValueError(kind)


EXPECTED = {"valid_npy": "200", "valid_wav": "200", "unknown_emotion": "422", "steps_zero": "422", "nan_guidance": "422",
            "text_plain": "415", "malformed_json": "422", "oversized": "413", "unknown_field": "422", "missing_api_key": "401"}


async def mixed_load(base: str, requests: int = 300, concurrency: int = 32, *, api_key: str | None = None,
                     request_timeout: float = 120.0, max_seconds: float = 600.0, health_every: float = 0.5,
                     health_timeout: float = 10.0) -> dict[str, Any]:
    """`requests` valid and invalid requests at `concurrency`; /healthz sampled meanwhile."""
    plan = list(enumerate(mixed_plan(requests, bool(api_key))))
    queue = list(reversed(plan))
    seen: dict[str, list[str]] = {}
    server_errors: list[dict] = []
    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds

    async def worker(c: httpx.AsyncClient, bare: httpx.AsyncClient):
        while queue and time.perf_counter() < deadline:
            i, kind = queue.pop()
            kw = mixed_request(kind, i)
            use = bare if kw.pop("no_key", False) else c
            status, seconds, body = await call(use, "POST", "/v1/synthesize", request_timeout, **kw)
            seen.setdefault(kind, []).append(status)
            latencies.append(seconds)
            if status.isdigit() and int(status) >= 500 and int(status) not in (503, 504):
                server_errors.append({"kind": kind, "status": int(status), "body": body[:300].decode(errors="replace")})

    health: list[tuple[str, float]] = []
    done = asyncio.Event()

    async def prober():
        async with client(base, api_key, health_timeout, fresh=True) as c:
            while not done.is_set():
                status, seconds, _ = await call(c, "GET", "/healthz", health_timeout)
                health.append((status, seconds))
                try:
                    await asyncio.wait_for(done.wait(), max(0.0, health_every - seconds))
                except TimeoutError:
                    pass

    start = time.perf_counter()
    probe = asyncio.create_task(prober())
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    try:
        async with httpx.AsyncClient(base_url=base, headers=key_headers(api_key), timeout=request_timeout, limits=limits) as c, \
                httpx.AsyncClient(base_url=base, timeout=request_timeout, limits=limits) as bare:
            await asyncio.gather(*(worker(c, bare) for _ in range(concurrency)))
    finally:
        done.set()
        await asyncio.wait_for(probe, health_timeout + 5)
    wall = time.perf_counter() - start
    per_kind = {kind: counts(statuses) for kind, statuses in sorted(seen.items())}
    unexpected = {kind: {s: n for s, n in seen_kind.items() if s != EXPECTED[kind]} for kind, seen_kind in per_kind.items()}
    return {
        "requests": requests, "concurrency": concurrency, "sent": len(latencies), "not_sent_by_deadline": len(queue),
        "seconds": round(wall, 2), "req_per_s": round(len(latencies) / wall, 2) if wall else None,
        "p50_s": pct(latencies, 50), "p95_s": pct(latencies, 95),
        "statuses_by_kind": per_kind, "expected_by_kind": {k: EXPECTED[k] for k in per_kind},
        "other_than_expected": {k: v for k, v in unexpected.items() if v},
        "server_errors": server_errors, "server_error_count": len(server_errors),
        "healthz_samples": len(health), "healthz_statuses": counts([s for s, _ in health]),
        "healthz_max_s": round(max(s for _, s in health), 3) if health else None,
        "healthz_p95_s": pct([s for _, s in health], 95),
    }


async def probe_service(base: str, api_key: str | None, steps: int = 10, timeout: float = 120.0) -> dict[str, Any]:
    """One /healthz and one short request: is the service answering?"""
    async with client(base, api_key, timeout, fresh=True) as c:
        h_status, h_s, _ = await call(c, "GET", "/healthz", timeout)
        s_status, s_s, _ = await call(c, "POST", "/v1/synthesize", timeout, json=short_body(99, steps))
    return {"healthz_status": h_status, "healthz_s": round(h_s, 3), "valid_status": s_status, "valid_s": round(s_s, 3)}


# ----------------------------------------------------------------------------- summary


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as rows {check, target, measured, ok}."""
    rows = []
    if s := results.get("stalled"):
        ok = (s["healthz_statuses"] and all(x == "200" for x in s["healthz_statuses"]) and s["healthz_max_s"] < 1.0
              and s["valid_status"] == "200")
        rows.append({"check": f"{s['connected']} stalled sockets open",
                     "target": "every /healthz 200 in < 1 s; the 10-step request 200",
                     "measured": f"healthz max {s['healthz_max_s']} s ({','.join(sorted(set(s['healthz_statuses'])))}); "
                                 f"10-step {s['valid_status']} in {s['valid_s']} s; stalled got {s['stalled_statuses']}",
                     "ok": bool(ok)})
    if lb := results.get("long"):
        all_200 = set(lb["idle_statuses"]) == {"200"} and set(lb["busy_statuses"]) == {"200"}
        ratio_ok = lb["p95_ratio"] is not None and lb["p95_ratio"] <= 3.0
        beside = lb["long_running_after_last_short"]
        rows.append({"check": f"{lb['short_steps']}-step requests beside a {lb['long_steps']}-step one",
                     "target": "busy p95 <= 3x idle p95, all 200, long still running at the last short",
                     "measured": f"idle p95 {lb['idle_p95_s']} s, busy p95 {lb['busy_p95_s']} s (x{lb['p95_ratio']}; "
                                 f"max x{lb['max_ratio']}); busy {lb['busy_statuses']}; long "
                                 f"{'still running' if beside else 'done'} at the last short "
                                 f"({lb['shorts_finished_beside_long']}/{lb['shorts']} beside it); long {lb['long_status']} "
                                 f"in {lb['long_s']} s",
                     "ok": bool(all_200 and ratio_ok and beside)})
    if a := results.get("abandoned"):
        ok = a["left"] and a["next_status"] == "200" and a["next_s"] <= a["bound_s"]
        rows.append({"check": f"request after a {a['steps']}-step one abandoned after {a['leave_after_used_s']} s",
                     "target": f"200 within {a['bound_s']} s ({a['bound']})",
                     "measured": f"{a['next_status']} in {a['next_s']} s (idle {a['idle_short_s']} s; "
                                 f"{'left' if a['left'] else 'it finished first: ' + a['abandoned_request_status']}); "
                                 f"left after {a['left_after_s']} s; abandoned_batches {a['abandoned_before']} -> "
                                 f"{a['abandoned_after']} ({a['freed_after_s']} s after leaving)",
                     "ok": bool(ok)})
    if m := results.get("mixed"):
        rows.append({"check": f"{m['sent']} mixed requests at concurrency {m['concurrency']}",
                     "target": "no status >= 500 other than 503/504",
                     "measured": f"{m['server_error_count']} such; healthz max {m['healthz_max_s']} s over "
                                 f"{m['healthz_samples']} samples {m['healthz_statuses']}; {m['seconds']} s",
                     "ok": m["server_error_count"] == 0})
    if r := results.get("recovery"):
        rows.append({"check": "service at the end", "target": "/healthz 200 and a 10-step request 200",
                     "measured": f"healthz {r['healthz_status']} ({r['healthz_s']} s), 10-step {r['valid_status']} "
                                 f"({r['valid_s']} s)",
                     "ok": r["healthz_status"] == "200" and r["valid_status"] == "200"})
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = ["| check | target | measured | ok |", "|---|---|---|---|"]
    lines += [f"| {r['check']} | {r['target']} | {r['measured']} | {'yes' if r['ok'] else 'NO'} |" for r in results["summary"]]
    if m := results.get("mixed"):
        kinds = m["statuses_by_kind"]
        lines += ["", "| kind (mixed load) | expected | statuses seen |", "|---|---|---|"]
        lines += [f"| {k} | {m['expected_by_kind'][k]} | {', '.join(f'{s}: {n}' for s, n in c.items())} |"
                  for k, c in kinds.items()]
        for e in m["server_errors"][:20]:
            lines.append(f"- {e['kind']}: {e['status']} {e['body'][:120]}")
    return "\n".join(lines)


async def run_all(base: str, api_key: str | None = None, scenarios: tuple[str, ...] = SCENARIOS, *,
                  sockets: int = 256, source: str = "127.0.0.2", long_steps: int = 1000, shorts: int = 20,
                  abandon_steps: int = 500, leave_after: float = 2.0, requests: int = 300, concurrency: int = 32,
                  mixed_seconds: float = 600.0) -> dict[str, Any]:
    """Warm-up, the chosen scenarios in order, the recovery probe, and the summary."""
    base = base.rstrip("/")
    results: dict[str, Any] = {"base": base, "api_key": bool(api_key)}
    async with client(base, api_key, 300) as c:
        warm = [await call(c, "POST", "/v1/synthesize", 300, json=short_body(0, fmt=f)) for f in ("npy", "wav")]
    results["warmup"] = [{"status": s, "seconds": round(t, 3)} for s, t, _ in warm]
    print(f"warm-up: {results['warmup']}", flush=True)
    steps = {
        "stalled": lambda: stalled_uploads(base, sockets, source, api_key=api_key),
        "long": lambda: long_beside_short(base, long_steps, 10, shorts, api_key=api_key),
        "abandoned": lambda: abandoned_request(base, abandon_steps, leave_after, api_key=api_key),
        "mixed": lambda: mixed_load(base, requests, concurrency, api_key=api_key, max_seconds=mixed_seconds),
    }
    for name in scenarios:
        start = time.perf_counter()
        results[name] = await steps[name]()
        print(f"{name} ({time.perf_counter() - start:.1f} s): {json.dumps(results[name])}", flush=True)
    results["recovery"] = await probe_service(base, api_key)
    results["summary"] = summarize(results)
    return results


def report(results: dict[str, Any]) -> bool:
    """Print the JSON and the markdown summary; True when every target holds."""
    print(json.dumps(results, indent=2))
    print()
    print(markdown(results))
    return all(r["ok"] for r in results["summary"])


# ------------------------------------------------------------------------------ CLI


@contextmanager
def own_server(args: argparse.Namespace) -> Iterator[str]:
    """The app with its default limits on a free loopback port (one replica, 1 CPU); yields the base URL."""
    checkpoint = checkpoint_or_tiny(args.checkpoint, args.work)
    # deferred: the application imports torch and Ray Serve, which a run against --url never needs
    from emogen.serving.app import ServeArgs, app

    with local_serve() as base:
        serve.run(app(ServeArgs(checkpoint=checkpoint, api_key=args.api_key, num_cpus=1)), name="emogen", route_prefix="/")
        yield base


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The scenario options (shared with serve_load.py --hostile)."""
    g = p.add_argument_group("hostile-load scenarios")
    g.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    g.add_argument("--sockets", type=int, default=256, help="stalled uploads")
    g.add_argument("--source", default="127.0.0.2", help="source address of the stalled uploads")
    g.add_argument("--long-steps", type=int, default=1000)
    g.add_argument("--shorts", type=int, default=20, help="10-step requests, idle and beside the long one")
    g.add_argument("--abandon-steps", type=int, default=500)
    g.add_argument("--leave-after", type=float, default=2.0)
    g.add_argument("--requests", type=int, default=300, help="mixed load")
    g.add_argument("--concurrency", type=int, default=32, help="mixed load")
    g.add_argument("--mixed-seconds", type=float, default=600, help="mixed load: no new request after this")


def scenario_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    names = tuple(s for s in args.scenarios.split(",") if s)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {sorted(unknown)} (choose from {SCENARIOS})")
    return dict(scenarios=names, sockets=args.sockets, source=args.source, long_steps=args.long_steps,
                shorts=args.shorts, abandon_steps=args.abandon_steps, leave_after=args.leave_after,
                requests=args.requests, concurrency=args.concurrency, mixed_seconds=args.mixed_seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="base URL of a running server (default: start one)")
    p.add_argument("--api-key", default=os.environ.get("EMOGEN_API_KEY"),
                   help="sent as X-API-Key; without --url also the started server's key (default: $EMOGEN_API_KEY)")
    p.add_argument("--work", type=Path, default=HERE.parent / "runs" / "bench-serve", help="tiny checkpoint cache")
    p.add_argument("--checkpoint", default=None, help="without --url: serve this checkpoint instead of a tiny one")
    p.add_argument("--json-out", type=Path, default=None)
    add_arguments(p)
    args = p.parse_args()
    kwargs = scenario_kwargs(args)

    load_start = load_avg()
    print(f"load average at start: {load_start}", flush=True)
    with ExitStack() as stack:
        base = args.url or stack.enter_context(own_server(args))
        print(f"hostile load against {base}", flush=True)
        results = asyncio.run(run_all(base, args.api_key, **kwargs))
    load_end = load_avg()
    results["load_average"] = {"start": load_start, "end": load_end}
    ok = report(results)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nload average: {load_start} at start, {load_end} at end")
    if not ok:
        failed = [r["check"] for r in results["summary"] if not r["ok"]]
        raise SystemExit(f"targets failed: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
