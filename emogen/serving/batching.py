"""Dynamic batching on a replica that forms a batch when the model is free, and lets
short requests run between the steps of long ones.

Ray Serve's ``@serve.batch`` forms the next batch as soon as the previous one has been
*formed*, not finished: while the model works on batch k, batch k+1 closes
``batch_wait_timeout_s`` after its first request and waits for the model. Under a
closed-loop load the clients answered by one batch come back one by one, so such batches
hold only what arrived within one wait window and rarely reach the maximum. Here a single
worker takes what is queued when the model is free, so requests that arrive while it
works all join the next batch.

The wait is spent only where it can fill a batch. Clients answered by the last batch
usually send their next request within milliseconds; the worker waits (at most
``batch_wait_timeout_s``) only while fewer of them have come back than the last batch
answered and the batch is not full. A lone client is answered by a batch of one and is
the only one expected back, so it never waits for company that will not come.

Long work does not block short work. An item whose ``cost`` is above ``long_cost`` is
*long*: long items are batched only with each other and their batch runs preemptibly.
Its ``run`` calls :meth:`IdleBatcher.between_steps` after each unit of work (a denoising
step); when short requests wait, the long batch's thread parks there, the short batch
runs to completion, and the long one resumes for at least one more step before it can be
parked again. One thread computes at a time, so a short request waits for at most one
step of a long one, and a long batch still advances while short ones keep coming.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

Entry = tuple  # (item, asyncio.Future)


class IdleBatcher(Generic[Item, Result]):
    """Queue items; a worker runs ``run(batch)`` in a thread, one batch computing at a time.

    ``run`` takes a list of items and returns one result per item, in order; an exception
    fails every request of that batch. A request whose caller is cancelled (client gone)
    before its batch forms is dropped from the queue. With ``cost`` and ``long_cost``,
    items costing more than ``long_cost`` form preemptible batches (module docstring).
    """

    def __init__(self, run: Callable[[list[Item]], Sequence[Result]], max_batch_size: int, batch_wait_timeout_s: float,
                 cost: Callable[[Item], float] | None = None, long_cost: float | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s}")
        self.run = run
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_timeout_s = float(batch_wait_timeout_s)
        self.cost = cost
        self.long_cost = long_cost
        self.pending: deque[Entry] = deque()
        self.sizes: deque[int] = deque(maxlen=100)  # requests per recent batch
        self.preemptions = 0  # times a long batch was parked for a short one
        self._arrived = asyncio.Event()
        self._expected_back = 0  # requests answered by the last batch whose clients have not sent again
        self._worker: asyncio.Task | None = None
        self._batch = threading.local()  # the futures (and kind) of the batch this thread runs
        # the park/resume handshake between the worker (event loop) and a long batch's thread
        self._park_wanted = threading.Event()
        self._resume = threading.Event()
        self._parked: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ called by `run`

    def abandoned(self) -> bool:
        """True while the calling thread's batch has lost all its callers (their requests
        cancelled: clients that disconnected or passed their deadline). `run` may poll it
        between steps and stop early: nobody waits for the result."""
        futures = getattr(self._batch, "futures", None)
        return bool(futures) and all(future.done() for future in futures)

    def between_steps(self) -> None:
        """Called by `run` after each unit of work. In a long batch, parks the thread while a
        short batch runs, when one waits; returns at once otherwise."""
        if not getattr(self._batch, "long", False) or not self._park_wanted.is_set():
            return
        parked = self._parked
        self._loop.call_soon_threadsafe(lambda: parked.done() or parked.set_result(None))
        self._resume.wait()
        self._resume.clear()

    # ------------------------------------------------------------ the event loop side

    async def submit(self, item: Item) -> Result:
        """Queue one item and wait for its result (raises what ``run`` raised)."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        self._expected_back = max(0, self._expected_back - 1)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await future

    def is_long(self, item: Item) -> bool:
        return self.cost is not None and self.long_cost is not None and self.cost(item) > self.long_cost

    def _live(self, long: bool) -> int:
        """Queued requests of this kind whose callers still wait (cancelled ones are dropped)."""
        self.pending = deque(entry for entry in self.pending if not entry[1].done())
        return sum(self.is_long(item) == long for item, _ in self.pending)

    def _take(self, long: bool) -> list[Entry]:
        batch, rest = [], deque()
        for entry in self.pending:
            if len(batch) < self.max_batch_size and self.is_long(entry[0]) == long:
                batch.append(entry)
            else:
                rest.append(entry)
        self.pending = rest
        return batch

    async def _fill(self) -> None:
        """Wait (bounded) for clients the last batch answered, while the short batch is not full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_timeout_s
        while self._live(long=False) < self.max_batch_size and self._expected_back > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break

    async def _execute(self, batch: list[Entry], long: bool) -> None:
        """Run one batch in a thread (off the event loop: validation, /healthz and new
        arrivals keep being served) and hand each caller its result or the batch's error."""
        self.sizes.append(len(batch))
        futures = [future for _, future in batch]

        def call() -> Sequence[Result]:
            self._batch.futures, self._batch.long = futures, long
            try:
                return self.run([item for item, _ in batch])
            finally:
                self._batch.futures, self._batch.long = None, False

        try:
            results = await asyncio.get_running_loop().run_in_executor(None, call)
        except Exception as exc:  # every request of the batch gets the error, the worker lives on
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
        else:
            for future, result in zip(futures, results):
                if not future.done():
                    future.set_result(result)
        if not long:  # long requests' clients are not the ones a short batch waits for
            self._expected_back = len(batch)

    async def _park(self, long_task: asyncio.Task) -> bool:
        """Ask the long batch to park at its next step; True once it has, False if it ended first."""
        self._parked = asyncio.get_running_loop().create_future()
        self._park_wanted.set()
        await asyncio.wait({self._parked, long_task}, return_when=asyncio.FIRST_COMPLETED)
        if self._parked.done():
            return True
        self._park_wanted.clear()
        return False

    def _unpark(self) -> None:
        self._park_wanted.clear()
        self._resume.set()

    async def _work(self) -> None:
        self._loop = asyncio.get_running_loop()
        long_task: asyncio.Task | None = None
        while True:
            if long_task is not None and long_task.done():
                long_task = None
            if long_task is None and self._live(long=True):
                long_task = asyncio.create_task(self._execute(self._take(long=True), long=True))
            if self._live(long=False):
                await self._fill()
                batch = self._take(long=False)
                if not batch:
                    continue
                parked = long_task is not None and await self._park(long_task)
                if parked:
                    self.preemptions += 1
                try:
                    await self._execute(batch, long=False)
                finally:
                    if parked:
                        self._unpark()
                continue
            waits = {asyncio.create_task(self._arrived.wait())}
            if long_task is not None:
                waits.add(long_task)
            self._arrived.clear()
            if not self._live(long=False) and not (long_task is None and self._live(long=True)):
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waits:
                if waiter is not long_task:
                    waiter.cancel()
