"""Admission: the one place that decides which work the models do, in which order, and for how long.

A request's work for a model is a job in that model's lane. One model worker, a daemon thread of its own, takes
turns between the lanes that have work (round robin), so one pair's flood never starves another; each turn does
one bounded piece of work:

- one model call of at most CHUNK_WORK sentences x beam (a sentence counted once per UNIT_CHARS), gathered from the
  lane's jobs with the first one's beam (concurrent requests share a call; a long request takes several turns),
  each job prepared first (its texts cleaned and split into sentences once, by the model's own `prepare`, and
  counted against --max-pieces, PREPARE_CHARS a turn; its warnings), or
- one call of a function (an html text's segments, attention weights).

Everything that reads a request's text beyond its length happens here, in the worker, never on the event loop.
At most --max-queue jobs wait or run per model (more: 503 with Retry-After, and a flood for one pair never takes
the places of another's); a job has a deadline (--timeout; later: 504, and
its remaining work is dropped). When a shared model call raises, each of its requests is tried again alone, so a
failing text fails only its own request; an error that is not charmt's own is logged here and answered as
"translation failed" with the model's name. The worker is a daemon thread that checks a stop flag between turns:
stopping the server never waits for a model call.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..decode import PreparedInputs
from ..errors import CharmtError
from .limits import RETRY_AFTER_S, Limits, Refusal

if TYPE_CHECKING:
    from ..decode import Hypothesis
    from .models import ServedModel

log = logging.getLogger("charmt")

BATCH_WAIT_S = 0.005  # how long an idle worker waits for concurrent requests to join the first one
CHUNK_WORK = 128  # sentences x beam per model call (a long sentence counts once per UNIT_CHARS): one turn's length
UNIT_CHARS = 100
PREPARE_CHARS = 16_384  # characters split into sentences and counted in one turn (at least one text)


@dataclass(eq=False)
class _Job:
    model: ServedModel
    deadline: float = 0.0
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    done: bool = False  # answered or withdrawn: no longer counted, no longer in its lane


@dataclass(eq=False)
class _Call(_Job):
    fn: Callable[[], Any] = lambda: None


@dataclass(eq=False)
class _Translation(_Job):
    texts: list[str] = field(default_factory=list)
    beam: int = 1
    n_best: int = 1
    want_warnings: bool = False
    sentences: list[list[str]] = field(default_factory=list)  # per text, as far as prepared: its model inputs
    pieces: int = 0  # how many inputs that is
    costs: list[int] = field(default_factory=list)  # per text at beam 1, in CHUNK_WORK's units
    warnings: list[str] = field(default_factory=list)
    results: list = field(default_factory=list)
    next: int = 0  # the first text not yet given to the model


class Admission:
    """The models' lanes, the queue bound, the deadlines and the model worker."""

    def __init__(self, models: list[ServedModel], limits: Limits, *, batch_wait_s: float = BATCH_WAIT_S,
                 chunk_work: int = CHUNK_WORK):
        self.limits, self.batch_wait_s, self.chunk_work = limits, batch_wait_s, chunk_work
        self._lanes: dict[tuple[str, str], collections.deque[_Job]] = {m.pair: collections.deque() for m in models}
        self._order = list(self._lanes)
        self._next = 0  # the lane whose turn comes next
        self._count = 0  # jobs admitted and not done
        self._cond = threading.Condition()
        self._stop: threading.Event | None = None  # the running worker's stop flag

    # --- the event loop's side ----------------------------------------------------------------------------

    def deadline(self) -> float:
        """When a request that starts now must be answered (time.monotonic)."""
        return time.monotonic() + self.limits.timeout_s

    def queued(self) -> int:
        """Jobs waiting or running, all models together."""
        with self._cond:
            return self._count

    async def translate(self, model: ServedModel, texts: list[str], *, beam: int, n_best: int, deadline: float,
                        warnings: bool = False) -> tuple[list[list[Hypothesis]], list[str]]:
        """Up to `n_best` hypotheses per text, best first, and (with `warnings`) what the model warns about them."""
        if not texts:
            return [], []
        job = _Translation(model, texts=list(texts), beam=beam, n_best=n_best, want_warnings=warnings,
                           results=[[] for _ in texts])
        return await self._admit(job, deadline)

    async def call(self, model: ServedModel, fn: Callable[[], Any], *, deadline: float) -> Any:
        """`fn()`, run by the model worker in `model`'s lane."""
        return await self._admit(_Call(model, fn=fn), deadline)

    async def _admit(self, job: _Job, deadline: float):
        loop = asyncio.get_running_loop()
        job.loop, job.future, job.deadline = loop, loop.create_future(), deadline
        with self._cond:
            if len(self._lanes[job.model.pair]) >= self.limits.max_queue:
                raise Refusal(503, f"the server is busy: {self.limits.max_queue} requests are waiting for model "
                                   f"{job.model.name} (--max-queue); try again shortly",
                              headers={"Retry-After": str(RETRY_AFTER_S)})
            if self._stop is None:
                self._stop = threading.Event()
                threading.Thread(target=self._work, args=(self._stop,), name="charmt-model", daemon=True).start()
            self._lanes[job.model.pair].append(job)
            self._count += 1
            self._cond.notify()
        try:
            return await asyncio.wait_for(job.future, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise self._late() from None
        finally:
            self._retire(job)  # answered, late, or its client went away: its work is dropped

    def _late(self) -> Refusal:
        return Refusal(504, f"the translation did not finish within {self.limits.timeout_s:g} s (--timeout): the "
                            "server is busy or the request is large; send fewer or shorter texts, or try again later")

    def stop(self) -> None:
        """Stop the worker after its current turn (it never waits for it) and refuse the jobs still waiting."""
        with self._cond:
            if self._stop is not None:
                self._stop.set()
                self._stop = None
            waiting = [job for lane in self._lanes.values() for job in lane]
            for lane in self._lanes.values():
                lane.clear()
            for job in waiting:
                job.done = True
            self._count = 0
            self._cond.notify_all()
        for job in waiting:
            _answer(job, Refusal(503, "the server is stopping; try again later"), ok=False)

    # --- the worker's side --------------------------------------------------------------------------------

    def _retire(self, job: _Job) -> bool:
        """Take `job` out of its lane and the count; False when that was already done."""
        with self._cond:
            if job.done:
                return False
            job.done = True
            self._lanes[job.model.pair].remove(job)
            self._count -= 1
            return True

    def _finish(self, job: _Job, value, *, ok: bool = True) -> None:
        if self._retire(job):
            _answer(job, value, ok=ok)

    def _failure(self, model: ServedModel, err: Exception) -> Exception:
        if isinstance(err, CharmtError):  # charmt's own words (a refusal, a remedy): for the client
            return err
        log.error("translation failed (model %s)", model.name, exc_info=err)
        return Refusal(500, f"translation failed (model {model.name}); the server's log says why")

    def _work(self, stop: threading.Event) -> None:
        rested = False  # whether the worker waited for company since it last found nothing to do
        while True:
            with self._cond:
                while not stop.is_set() and not any(self._lanes.values()):
                    rested = False
                    self._cond.wait()
                if stop.is_set():
                    return
                jobs = self._pick() if rested else None
            if jobs is None:  # let the requests that arrive together share a model call
                stop.wait(self.batch_wait_s)
                rested = True
                continue
            try:
                self._turn(jobs)
            except Exception:  # a bug here must not end the worker: every later request would wait forever
                log.exception("the model worker failed; it goes on with the next request")

    def _pick(self) -> list[_Job]:
        """The front of the next lane with work (round robin)."""
        for k in range(len(self._order)):
            pair = self._order[(self._next + k) % len(self._order)]
            if self._lanes[pair]:
                self._next = (self._next + k + 1) % len(self._order)
                return list(self._lanes[pair])
        return []

    def _turn(self, jobs: list[_Job]) -> None:
        now = time.monotonic()
        for job in [j for j in jobs if now > j.deadline]:  # late: its waiter has answered 504 or is about to
            self._finish(job, self._late(), ok=False)
        jobs = [j for j in jobs if not j.done]
        if not jobs:
            return
        if isinstance(jobs[0], _Call):
            job = jobs[0]
            try:
                value = job.fn()
            except Exception as err:  # noqa: BLE001 (answered to its own request)
                self._finish(job, self._failure(job.model, err), ok=False)
            else:
                self._finish(job, value)
            return
        chunk = self._gather(jobs)
        if chunk:
            self._run(chunk)

    def _prepare(self, job: _Translation, budget: int) -> int:
        """Prepare and count the job's next texts, about `budget` characters of them (each split into sentences
        here, once, as the model call will take them), refusing it as soon as it holds too many pieces; then note
        its warnings. Returns the characters."""
        translator = job.model.translator
        used = 0
        while len(job.sentences) < len(job.texts) and (used < budget or not used):
            text = job.texts[len(job.sentences)]
            job.sentences.append([sentence for _, sentence in translator.prepare([text]).sentences])
            job.pieces += len(job.sentences[-1])
            job.costs.append(max(len(job.sentences[-1]), -(-len(text) // UNIT_CHARS)))
            used += len(text) + 1
            self.limits.check_pieces(job.pieces)
        if len(job.sentences) == len(job.texts) and job.want_warnings:  # the same as for the texts, from the pieces
            job.warnings = translator.input_warnings([s for sentences in job.sentences for s in sentences], split=False)
        return used

    def _gather(self, jobs: list[_Job]) -> list[tuple[_Translation, int, int]]:
        """(job, first text, end) slices for one model call: the lane's jobs in order that share the first one's
        beam, each prepared when reached, up to CHUNK_WORK sentences x beam (a text is never cut)."""
        chunk: list[tuple[_Translation, int, int]] = []
        budget, prepared = self.chunk_work, 0
        for job in jobs:
            if not isinstance(job, _Translation) or job.done or (chunk and job.beam != chunk[0][0].beam):
                continue  # another beam or a function: the head of a later turn
            if len(job.sentences) < len(job.texts):
                if prepared >= PREPARE_CHARS:
                    break
                try:
                    prepared += self._prepare(job, PREPARE_CHARS - prepared)
                except Exception as err:  # noqa: BLE001 (answered to its own request)
                    self._finish(job, self._failure(job.model, err), ok=False)
                    continue
                if len(job.sentences) < len(job.texts):  # this turn's preparation is spent
                    break
            start = job.next
            while job.next < len(job.texts):
                cost = max(1, job.costs[job.next]) * job.beam
                if cost > budget and (chunk or job.next > start):
                    break
                budget -= cost
                job.next += 1
            if job.next > start:
                chunk.append((job, start, job.next))
            if job.next < len(job.texts):  # this call is full
                break
        return chunk

    def _run(self, chunk: list[tuple[_Translation, int, int]]) -> None:
        model = chunk[0][0].model
        texts = [sentences for job, start, end in chunk for sentences in job.sentences[start:end]]
        prepared = PreparedInputs(len(texts), [(i, s) for i, sentences in enumerate(texts) for s in sentences], [])
        try:  # beam and n_best were checked on admission (limits.search_problem)
            results = model.translator.translate_prepared(
                prepared, beam=chunk[0][0].beam, n_best=max(job.n_best for job, _, _ in chunk),
                batch_size=self.chunk_work, length_penalty=self.limits.length_penalty)
        except Exception as err:  # noqa: BLE001
            if len(chunk) > 1:  # which request holds the text that fails? each alone, so only that one fails
                for part in chunk:
                    self._run([part])
            else:
                self._finish(chunk[0][0], self._failure(model, err), ok=False)
            return
        found = iter(results)
        for job, start, end in chunk:
            for i in range(start, end):
                job.results[i] = next(found)[: job.n_best]  # beam search finds the same best ones whatever n_best
            if end == len(job.texts):
                self._finish(job, (job.results, job.warnings))


def _answer(job: _Job, value, *, ok: bool) -> None:
    """Hand `value` (or raise it) to the request waiting in `job`'s event loop."""

    def settle() -> None:
        if not job.future.done():  # its waiter may have given up
            job.future.set_result(value) if ok else job.future.set_exception(value)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # that event loop has closed: nobody waits for the answer
        pass
