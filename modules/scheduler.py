"""One worker thread owns the model; any thread may submit. Each request gets its own Handle.

The worker admits waiting sequences while the loader has room (FIFO), advances every active sequence by one
token per step, decides token-level finishes (EOS, stop ids, max_tokens, context), and frees cancelled
sequences before the next step.
"""
from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from modules.errors import ModelChanged, ModelNotLoaded, QueueFull, ServerShuttingDown
from modules.generation import FinishReason, GenerationRequest
from modules.handle import ErrorItem, FinishItem, Handle, Pacing, TokenItem, failed
from modules.loaders.base import Loader, SequenceSpec, TokenEvent

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(eq=False)
class _Seq:
    """Worker-side bookkeeping for one choice of one request."""

    seq_id: int
    index: int
    handle: Handle
    spec: SequenceSpec
    stop_ids: frozenset[int]
    generated: int = 0
    queued_at: float = field(default_factory=time.monotonic)


class Arrival:
    """A request announced by Scheduler.expect(); `done()` (idempotent) once it is submitted or has failed."""

    def __init__(self, scheduler: "Scheduler"):
        self._scheduler: Scheduler | None = scheduler

    def done(self) -> None:
        """No longer on its way."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler._arrived()


class Scheduler:
    """Queue in, per-request event streams out; the only code that calls loader.start/step/release."""

    def __init__(self, max_queue: int = 64, gather_s: float = 0.02, settle_s: float = 0.003,
                 pacing: Pacing = Pacing()):  # fmt: skip
        self.max_queue = max_queue
        self.pacing = pacing
        self.gather_s = gather_s  # the longest a queued request waits for the rest of its burst
        self.settle_s = settle_s  # within a burst (2+ queued), a gap this long since the last one ends it
        self._last_queued = 0.0
        self._preparing = 0
        self._loader: Loader | None = None
        self._cond = threading.Condition()
        self._waiting: deque[list[_Seq]] = deque()  # one entry per request: its choices, admitted together
        self._active: dict[int, _Seq] = {}
        self._to_cancel: set[int] = set()
        self._tasks: deque[tuple[Callable, Future]] = deque()
        self._ids = itertools.count(1)
        self._paused = False
        self._swapping = False  # a model swap is draining the old model; submit() waits for the new one
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="hearth-worker", daemon=True)
        self._thread.start()

    # ---- any thread -------------------------------------------------------------------------------------
    @property
    def loader(self) -> Loader | None:
        """The loaded model, or None."""
        return self._loader

    def submit(self, request: GenerationRequest) -> Handle:
        """Queue a generation; raises ModelNotLoaded, ModelChanged, QueueFull or ServerShuttingDown.

        During a model swap this waits for the new model, so the caller gets ModelChanged (prepare the request
        again for the new model) instead of a request that would fail in the queue."""
        with self._cond:
            self._cond.wait_for(lambda: not self._swapping or self._closed)
        loader = self._loader
        if loader is None:
            raise ModelNotLoaded("no model is loaded")
        if request.model_id is not None and request.model_id != loader.info.name:
            raise ModelChanged(f"the model changed to {loader.info.name} while the request was prepared; retry")
        seq_ids = [next(self._ids) for _ in range(request.n)]
        handle = Handle(request, seq_ids, loader.decode, self.cancel, self.pacing)
        seqs = [self._make_seq(handle, loader, sid, i) for i, sid in enumerate(seq_ids)]
        with self._cond:
            if self._closed:
                raise ServerShuttingDown("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry shortly")
            self._waiting.append(seqs)
            self._last_queued = time.monotonic()
            self._cond.notify_all()
        return handle

    def expect(self) -> "Arrival":
        """Count a request as on its way to submit() (being parsed, rendered, tokenized) until `done()`.

        While any is, the worker holds newly queued requests back for up to `gather_s`, so that clients who arrive
        together are prefilled in one forward instead of the first alone and the rest in a second (measured: a burst
        of 8 reached the queue over 17-30 ms; each extra prefill pass costs ~10 ms and stalls the running batch)."""
        with self._cond:
            self._preparing += 1
        return Arrival(self)

    def _arrived(self) -> None:
        with self._cond:
            self._preparing -= 1
            self._cond.notify_all()

    def cancel(self, seq_ids) -> None:
        """Cancel sequences (waiting or active); safe to call twice."""
        with self._cond:
            self._to_cancel.update(seq_ids)
            self._cond.notify_all()

    def cancel_all(self) -> int:
        """Cancel everything waiting or running; returns how many sequences were affected."""
        with self._cond:
            ids = set(self._active) | {s.seq_id for seqs in self._waiting for s in seqs}
            self._to_cancel.update(ids)
            self._cond.notify_all()
        return len(ids)

    def run_exclusive(self, fn: Callable[[Loader | None], T], timeout: float | None = None) -> T:
        """Run fn(loader) on the worker between two steps and return its result."""
        if threading.current_thread() is self._thread:
            return fn(self._loader)
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise ServerShuttingDown("the server is shutting down")
            self._tasks.append((fn, future))
            self._cond.notify_all()
        return future.result(timeout)

    def stats(self) -> dict[str, int]:
        """Counts of waiting requests, active sequences and requests on their way (see expect)."""
        with self._cond:
            return {"waiting": len(self._waiting), "active": len(self._active), "preparing": self._preparing}

    def pause(self) -> None:
        """Stop admitting new sequences (running ones continue)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Admit again."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def swap_loader(self, loader: Loader | None, timeout: float) -> Loader | None:
        """Put `loader` in place once what is queued or running has finished on the old model; return the old one.

        New submissions wait meanwhile (then see the new model). After `timeout` seconds the running sequences are
        cancelled and the still-queued requests fail with ModelChanged.
        """
        with self._cond:
            self._swapping = True
        try:
            if self._loader is not None and not self._drain(timeout):
                log.warning("cancelled running requests after %.0f s to swap models", timeout)
            return self.set_loader(loader)
        finally:
            with self._cond:
                self._swapping = False
                self._cond.notify_all()

    def _drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or active; after `timeout` cancel the active. True if none was cut."""
        with self._cond:
            idle = self._cond.wait_for(lambda: not self._active and (self._paused or not self._waiting), timeout)
            if not idle:
                self._to_cancel.update(self._active)
                self._cond.notify_all()
                self._cond.wait_for(lambda: not self._active)
        return idle

    def set_loader(self, loader: Loader | None) -> Loader | None:
        """Swap the model on the worker (call while paused and idle); returns the previous one."""

        def swap(old):
            if loader is not None:
                loader.prepare()
            self._loader = loader
            return old

        return self.run_exclusive(swap)

    def close(self) -> None:
        """Fail everything still queued and stop the worker."""
        with self._cond:
            self._closed = True
            self._to_cancel.update(self._active)
            self._cond.notify_all()
        self._thread.join(timeout=10)

    # ---- worker thread ----------------------------------------------------------------------------------
    def _make_seq(self, handle: Handle, loader: Loader, seq_id: int, index: int) -> _Seq:
        request = handle.request
        info = loader.info
        stop_ids = set(request.stop_token_ids)
        eos = set(info.eos_token_ids)
        grammar = request.constraint
        if not request.ban_eos or grammar is not None:  # a grammar ends where it is complete, on EOS
            stop_ids |= eos
        seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(63)
        spec = SequenceSpec(
            seq_id=seq_id,
            prompt_ids=request.prompt_ids,
            sampling=request.sampling,
            seed=seed + index,  # n choices with one seed differ, yet each is reproducible
            suppress_ids=tuple(sorted(stop_ids)) if grammar is None else (),
            suppress_until=request.min_tokens,
            banned_ids=tuple(sorted(eos)) if request.ban_eos and grammar is None else (),
            logprobs=request.logprobs,
            matcher=grammar.new_matcher() if grammar is not None else None,  # copied here, in the request thread
        )
        return _Seq(seq_id, index, handle, spec, frozenset(stop_ids))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    # One reading of the hold per check: read twice, a hold that ended between the two readings
                    # left the queue waiting for a notify that might never come (seen: 8 streams stuck 15 minutes).
                    hold = self._hold_left()
                    if self._has_work(hold):
                        break
                    self._cond.wait(hold or None)
                if self._closed:
                    break
                cancelled, self._to_cancel = self._to_cancel, set()
                tasks, self._tasks = list(self._tasks), deque()
            self._cancel(cancelled)
            for fn, future in tasks:
                self._run_task(fn, future)
            self._admit()
            if self._active:
                self._step()
        self._shutdown()

    def _has_work(self, hold: float) -> bool:
        admissible = self._waiting and not self._paused and self._loader is not None and not hold
        return bool(self._closed or self._to_cancel or self._tasks or self._active or admissible)

    def _hold_left(self) -> float:
        """Seconds the queue may still wait for the rest of a burst; 0 when it is to be admitted now.

        It waits while requests are being prepared, and, once two or more are queued, until none came for
        `settle_s` (the next client may not have reached the server yet); never past `gather_s` from the first."""
        if not self._waiting:
            return 0.0
        now = time.monotonic()
        left = self._waiting[0][0].queued_at + self.gather_s - now
        if left <= 0:
            return 0.0
        if self._preparing:
            return left
        if len(self._waiting) > 1:
            return max(0.0, min(left, self._last_queued + self.settle_s - now))
        return 0.0

    def _run_task(self, fn: Callable, future: Future) -> None:
        try:
            future.set_result(fn(self._loader))
        except BaseException as exc:  # handed to the caller, who decides
            future.set_exception(exc)

    def _cancel(self, seq_ids: set[int]) -> None:
        if not seq_ids:
            return
        with self._cond:
            for seqs in list(self._waiting):
                if any(s.seq_id in seq_ids for s in seqs):
                    self._waiting.remove(seqs)
                    for s in seqs:
                        s.handle.deliver(FinishItem(s.index, FinishReason.CANCELLED))
            self._cond.notify_all()  # a model swap may be waiting for the queue to empty
        for seq_id in seq_ids & set(self._active):
            self._finish(self._active[seq_id], FinishReason.CANCELLED)

    def _admit(self) -> None:
        loader = self._loader
        with self._cond:
            if self._hold_left():
                return  # the whole queue goes in together once the hold ends
        while True:
            with self._cond:
                if self._paused or loader is None or not self._waiting:
                    return
                if loader.active() + len(self._waiting[0]) > loader.capabilities.max_batch and self._active:
                    return
                seqs = self._waiting.popleft()
                stale = seqs[0].handle.request.model_id not in (None, loader.info.name)
                if not stale:  # active in the same breath, so a swap never sees the request in neither place
                    self._active.update((s.seq_id, s) for s in seqs)
                self._cond.notify_all()
            if stale:
                for s in seqs:
                    s.handle.deliver(ErrorItem(ModelChanged(f"the model changed to {loader.info.name}; retry")))
                continue
            for s in seqs:
                loader.start(s.spec)

    def _step(self) -> None:
        try:
            events = self._loader.step()
        except Exception as exc:  # a model error must not kill the worker: fail what ran, keep serving
            log.exception("generation step failed")
            self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")
            return
        for event in events:
            seq = self._active.get(event.seq_id)
            if seq is not None:
                self._route(seq, event, len(events))

    def _route(self, seq: _Seq, event: TokenEvent, batch: int) -> None:
        if event.error is not None:
            self._loader.release(seq.seq_id)  # a no-op when the loader already dropped it (a failed prefill)
            seq.handle.deliver(failed(event.error))
            self._forget(seq)
            return
        seq.generated += 1
        request = seq.handle.request
        reason = None
        stop_token = event.token_id in seq.stop_ids and (seq.generated > request.min_tokens or event.complete)
        if stop_token or event.complete:  # a complete grammar's last token, unless a stop id, is part of the text
            reason = FinishReason.STOP
        elif request.max_tokens is not None and seq.generated >= request.max_tokens:
            reason = FinishReason.LENGTH
        elif len(request.prompt_ids) + seq.generated >= self._loader.info.context_length:
            reason = FinishReason.LENGTH
        seq.handle.deliver(TokenItem(seq.index, event, is_stop_token=stop_token, batch=batch))
        if reason is not None:
            self._finish(seq, reason)

    def _finish(self, seq: _Seq, reason: FinishReason) -> None:
        # Free the slot first, so whoever sees the finish also sees the capacity it released.
        self._loader.release(seq.seq_id)
        self._forget(seq)
        seq.handle.deliver(FinishItem(seq.index, reason))

    def _forget(self, seq: _Seq) -> None:
        with self._cond:
            self._active.pop(seq.seq_id, None)
            self._cond.notify_all()

    def _fail_all(self, message: str) -> None:
        for seq in list(self._active.values()):
            seq.handle.deliver(failed(message))
            self._forget(seq)
        try:
            self._loader.reset()
        except Exception:  # the loader is already broken; nothing more to free
            log.exception("loader reset failed")

    def _shutdown(self) -> None:
        error = ErrorItem(ServerShuttingDown("the server is shutting down"))
        with self._cond:
            pending = [s for seqs in self._waiting for s in seqs] + list(self._active.values())
            self._waiting.clear()
            self._active.clear()
            tasks, self._tasks = list(self._tasks), deque()
        for seq in pending:
            seq.handle.deliver(error)
        if self._loader is not None:
            self._loader.reset()  # the loader may outlive this scheduler (tests, a restart)
        for _, future in tasks:
            future.set_exception(ServerShuttingDown("the server is shutting down"))

