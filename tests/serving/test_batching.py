"""The replica's batcher as a plain asyncio unit: batches form when the model is free,
the wait is spent only on returning clients, errors and cancellations stay in their batch,
and long batches park between steps for short ones."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from emogen.serving.batching import IdleBatcher


def _batcher(max_batch_size=8, wait=0.2, seconds=0.05):
    calls = []

    def run(items):
        calls.append(list(items))
        if "boom" in items:
            raise RuntimeError("model failed")
        time.sleep(seconds)
        return [f"done {i}" for i in items]

    return IdleBatcher(run, max_batch_size, wait), calls


def test_batcher_fills_batches_while_the_model_works():
    """Requests arriving while a batch runs all join the next one, up to the maximum;
    the rest wait for the one after (not batches cut by a timer while the model is busy)."""
    async def scenario():
        batcher, calls = _batcher(max_batch_size=4)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # the model is busy with [0]
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
        results = await asyncio.gather(first, *rest)
        return results, calls, list(batcher.sizes)

    results, calls, sizes = asyncio.run(scenario())
    assert results == [f"done {i}" for i in range(7)]
    assert calls == [[0], [1, 2, 3, 4], [5, 6]] and sizes == [1, 4, 2]


def test_batcher_waits_only_for_returning_clients():
    """A lone client is never held back by the wait; clients answered by the last batch
    are waited for (up to the timeout), so a closed loop of 3 keeps batches of 3."""
    async def client(batcher, rounds, log):
        for _ in range(rounds):
            await asyncio.sleep(0.02)  # the response's trip back and the next request's trip in
            start = time.perf_counter()
            await batcher.submit("x")
            log.append(time.perf_counter() - start)

    async def scenario(clients):
        batcher, calls = _batcher(max_batch_size=8, wait=1.0, seconds=0.03)
        log = []
        await asyncio.gather(*(client(batcher, 4, log) for _ in range(clients)))
        return list(batcher.sizes), log

    sizes, log = asyncio.run(scenario(1))
    assert sizes == [1, 1, 1, 1] and max(log) < 0.5  # never waited the 1-s timeout
    sizes, _ = asyncio.run(scenario(3))
    assert sizes[-3:] == [3, 3, 3], sizes


def test_batcher_errors_and_cancelled_requests():
    """A failing batch fails its own requests only; a request cancelled while queued (its
    client left) is not run; the worker carries on."""
    async def scenario():
        batcher, calls = _batcher(max_batch_size=8)
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.01)
        failing = asyncio.ensure_future(batcher.submit("boom"))
        gone = asyncio.ensure_future(batcher.submit("gone"))
        await asyncio.sleep(0)
        gone.cancel()
        assert await first == "done a"
        with pytest.raises(RuntimeError, match="model failed"):
            await failing
        return await batcher.submit("b"), calls

    result, calls = asyncio.run(scenario())
    assert result == "done b" and calls == [["a"], ["boom"], ["b"]]


def test_batcher_tells_the_model_when_every_caller_of_its_batch_left():
    """abandoned() is what the replica polls between denoising steps: False while someone
    waits for the batch, True once every caller of the running batch is cancelled, False
    again when no batch runs."""
    seen: list[bool] = []
    running = threading.Event()

    def run(items):
        running.set()
        for _ in range(100):
            seen.append(batcher.abandoned())
            if seen[-1]:
                break
            time.sleep(0.01)
        return [f"done {i}" for i in items]

    batcher = IdleBatcher(run, 8, 0.0)

    async def scenario():
        waiting = asyncio.ensure_future(batcher.submit("a"))
        while not running.is_set():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        waiting.cancel()
        while batcher.abandoned() or not seen[-1]:
            await asyncio.sleep(0.01)
        return await batcher.submit("b")

    assert asyncio.run(scenario()) == "done b"
    assert not seen[0] and seen.count(True) == 1  # the first batch saw its caller leave, once
    assert not batcher.abandoned()


def test_batcher_runs_short_batches_between_the_steps_of_a_long_one():
    """A long batch (cost above long_cost) parks between its steps while short ones wait:
    the short requests finish while the long one still runs, one thread computes at a
    time, and the long one advances at least one step between two short batches."""
    log: list[tuple[str, int]] = []
    computing = threading.Lock()  # held while a step computes: two at once would fail to take it

    def run(items):
        steps = max(items)
        for step in range(1, steps + 1):
            assert computing.acquire(blocking=False), "two batches computed at once"
            try:
                time.sleep(0.005)
                log.append(("long" if steps > 5 else "short", step))
            finally:
                computing.release()
            batcher.between_steps()
        return [f"{i} steps" for i in items]

    batcher = IdleBatcher(run, 8, 0.0, cost=lambda steps: steps, long_cost=5)

    async def scenario():
        long = asyncio.ensure_future(batcher.submit(200))
        while not log:
            await asyncio.sleep(0.001)
        shorts = []
        for _ in range(3):  # three short requests one after another, as a client would send them
            shorts.append(await batcher.submit(2))
            assert not long.done()
        return shorts, await long

    shorts, long = asyncio.run(scenario())
    assert shorts == ["2 steps"] * 3 and long == "200 steps"
    assert batcher.preemptions == 3
    kinds = [kind for kind, _ in log]
    assert kinds.count("long") == 200 and kinds.count("short") == 6
    runs = [kinds[i] for i in range(len(kinds)) if i == 0 or kinds[i] != kinds[i - 1]]
    assert runs == ["long", "short", "long", "short", "long", "short", "long"]  # whole short batches in between
    assert list(batcher.sizes) == [1, 1, 1, 1]


def test_batcher_keeps_long_and_short_requests_in_separate_batches():
    batches = []

    def run(items):
        batches.append(sorted(items))
        time.sleep(0.02)
        return items

    batcher = IdleBatcher(run, 8, 0.0, cost=lambda steps: steps, long_cost=5)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.005)  # the first batch runs; the rest queue behind it
        rest = [asyncio.ensure_future(batcher.submit(s)) for s in (50, 2, 60, 3)]
        return await asyncio.gather(first, *rest)

    assert asyncio.run(scenario()) == [1, 50, 2, 60, 3]
    assert sorted(batches) == [[1], [2, 3], [50, 60]]
