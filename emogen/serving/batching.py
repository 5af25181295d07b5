"""Dynamic batching on a replica that forms a batch when the model is free.

Ray Serve's ``@serve.batch`` (Ray 2.60) forms the next batch as soon as the previous one
has been *formed*, not finished: while the model works on batch k, batch k+1 closes
``batch_wait_timeout_s`` after its first request and waits for the model. Under a
closed-loop load the clients answered by one batch come back one by one, so the batches
held whatever arrived within one wait window: 1-5 requests at concurrency 32, never the
maximum of 8 (issue 14). Here a single worker takes what is queued when the model is
free, so requests that arrive while it works all join the next batch.

The wait is spent only where it can fill a batch. Clients answered by the last batch
usually send their next request within milliseconds; the worker waits (at most
``batch_wait_timeout_s``) only while fewer of them have come back than the last batch
answered and the batch is not full. A lone client is answered by a batch of one and is
the only one expected back, so it never waits for company that will not come.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class IdleBatcher(Generic[Item, Result]):
    """Queue items; one worker runs ``run(batch)`` in a thread, one batch at a time.

    ``run`` takes a list of items and returns one result per item, in order; an exception
    fails every request of that batch. A request whose caller is cancelled (client gone)
    before its batch forms is dropped from the queue.
    """

    def __init__(self, run: Callable[[list[Item]], Sequence[Result]], max_batch_size: int, batch_wait_timeout_s: float):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s}")
        self.run = run
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_timeout_s = float(batch_wait_timeout_s)
        self.pending: deque[tuple[Item, asyncio.Future]] = deque()
        self.sizes: deque[int] = deque(maxlen=100)  # requests per recent batch
        self._arrived = asyncio.Event()
        self._expected_back = 0  # requests answered by the last batch whose clients have not sent again
        self._worker: asyncio.Task | None = None
        self._running: list[asyncio.Future] = []  # the futures of the batch `run` is working on

    def abandoned(self) -> bool:
        """True while `run` works on a batch whose callers have all gone (their requests
        cancelled: clients that disconnected). `run` may poll it (from its thread) and
        stop early: nobody is waiting for the result."""
        running = self._running
        return bool(running) and all(future.done() for future in running)

    async def submit(self, item: Item) -> Result:
        """Queue one item and wait for its result (raises what ``run`` raised)."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        self._expected_back = max(0, self._expected_back - 1)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await future

    def _live(self) -> int:
        """Queued requests whose callers still wait (cancelled ones are dropped)."""
        self.pending = deque(entry for entry in self.pending if not entry[1].done())
        return len(self.pending)

    async def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        while not self._live():
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_timeout_s
        while self._live() < self.max_batch_size and self._expected_back > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        return [self.pending.popleft() for _ in range(min(self.max_batch_size, len(self.pending)))]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self.sizes.append(len(batch))
            self._running = [future for _, future in batch]
            try:
                # off the event loop: validation, /healthz and new arrivals keep being served
                results = await loop.run_in_executor(None, self.run, [item for item, _ in batch])
            except Exception as exc:  # every request of the batch gets the error, the worker lives on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
            self._running = []
            self._expected_back = len(batch)
