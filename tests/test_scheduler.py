"""The generation engine through the scheduler, with tiny real models and the real loader."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from modules.errors import ModelChanged, ModelNotLoaded, QueueFull
from modules.generation import FinishReason, GenerationRequest, SamplingParams
from modules.handle import TokenItem

GREEDY = SamplingParams(temperature=0)
PROMPTS = ["The quick brown fox", "Numbers: 1 2 3", "Once upon a time", "User: What is", "café naïve", "def main():"]


def request(loader, text="Hello there, what is", **kwargs) -> GenerationRequest:
    kwargs.setdefault("sampling", GREEDY)
    kwargs.setdefault("max_tokens", 24)
    return GenerationRequest(tuple(loader.encode(text)), **kwargs)


def test_greedy_stream_equals_non_stream(served):
    scheduler, loader = served
    whole = scheduler.submit(request(loader)).result()
    deltas = list(scheduler.submit(request(loader)).events())
    assert "".join(d.text for d in deltas) == whole.choices[0].text
    assert whole.choices[0].text == loader.decode(whole.choices[0].token_ids)
    assert deltas[-1].finish_reason == whole.choices[0].finish_reason


def test_max_tokens_gives_length_and_usage(served):
    scheduler, loader = served
    req = request(loader, max_tokens=7, ban_eos=True)
    result = scheduler.submit(req).result()
    assert result.choices[0].finish_reason is FinishReason.LENGTH
    assert len(result.choices[0].token_ids) == 7
    assert result.usage.prompt_tokens == len(req.prompt_ids) and result.usage.completion_tokens == 7


def test_same_seed_same_text(served):
    scheduler, loader = served
    req = request(loader, sampling=SamplingParams(temperature=1.0, top_p=0.95, seed=1234), n=2)
    first = [c.text for c in scheduler.submit(req).result().choices]
    second = [c.text for c in scheduler.submit(req).result().choices]
    assert first == second and first[0] != first[1]  # n choices differ, each reproducible


def test_same_seed_same_text_across_processes(llama_dir, llama, scheduler):
    scheduler.set_loader(llama)
    req = request(llama, sampling=SamplingParams(temperature=0.9, seed=99), max_tokens=16)
    here = scheduler.submit(req).result().choices[0].text
    code = f"""
import json, sys
sys.path[:0] = [{str(Path(__file__).parent.parent)!r}]
from modules.loaders.transformers_loader import TransformersLoader
from modules.scheduler import Scheduler
from modules.generation import GenerationRequest, SamplingParams
loader = TransformersLoader.load(__import__('pathlib').Path({str(llama_dir)!r}), 'x', {{'threads': 2}})
s = Scheduler(); s.set_loader(loader)
r = GenerationRequest({req.prompt_ids!r}, SamplingParams(temperature=0.9, seed=99), max_tokens=16)
print(json.dumps(s.submit(r).result().choices[0].text)); s.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_stop_string_split_across_tokens_never_leaks(served):
    scheduler, loader = served
    base = scheduler.submit(request(loader, max_tokens=30, ban_eos=True)).result().choices[0]
    ids = list(base.token_ids)
    # Find a stop string that spans a token boundary: the end of one token and the start of the next.
    for k in range(2, len(ids) - 2):
        left, right = loader.decode(ids[:k]), loader.decode(ids[: k + 1])
        full = loader.decode(ids)
        if len(left) >= 2 and len(right) > len(left) + 1 and "\ufffd" not in right:
            stop = left[-2:] + right[len(left) : len(left) + 2]
            break
    else:
        pytest.skip("no suitable token boundary")
    expected = full[: full.find(stop)]
    deltas = list(scheduler.submit(request(loader, max_tokens=30, ban_eos=True, stop=(stop,))).events())
    streamed = "".join(d.text for d in deltas)
    assert streamed == expected
    assert stop not in streamed and deltas[-1].finish_reason is FinishReason.STOP


def test_stop_token_ids_end_with_stop(served):
    scheduler, loader = served
    base = scheduler.submit(request(loader, max_tokens=12, ban_eos=True)).result().choices[0]
    target = base.token_ids[5]
    first = base.token_ids.index(target)
    result = scheduler.submit(request(loader, max_tokens=12, ban_eos=True, stop_token_ids=(target,))).result()
    choice = result.choices[0]
    assert choice.finish_reason is FinishReason.STOP
    assert choice.token_ids == base.token_ids[:first]
    assert result.usage.completion_tokens == first + 1  # the stop token was generated, not shown


def test_min_tokens_suppresses_early_stop(served):
    scheduler, loader = served
    base = scheduler.submit(request(loader, max_tokens=12, ban_eos=True)).result().choices[0]
    target = base.token_ids[0]
    result = scheduler.submit(
        request(loader, max_tokens=12, ban_eos=True, stop_token_ids=(target,), min_tokens=4)
    ).result()
    assert len(result.choices[0].token_ids) >= 4


def test_logprobs_match_tokens(served):
    scheduler, loader = served
    result = scheduler.submit(request(loader, logprobs=3, max_tokens=8, ban_eos=True)).result()
    choice = result.choices[0]
    assert [lp.token_id for lp in choice.logprobs] == list(choice.token_ids)
    for lp in choice.logprobs:
        assert len(lp.top) == 3 and lp.top[0][1] >= lp.top[-1][1]
        assert lp.top[0][0] == lp.token_id  # greedy picks the most likely token
        assert lp.logprob <= 0


def test_concurrent_submissions_stay_isolated(served):
    scheduler, loader = served
    solo = {p: scheduler.submit(request(loader, p, max_tokens=20)).result().choices[0].text for p in PROMPTS}
    results: dict[str, str] = {}

    def run(prompt):
        results[prompt] = "".join(d.text for d in scheduler.submit(request(loader, prompt, max_tokens=20)).events())

    threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == solo


def test_chunked_prefill_gives_same_text(llama_dir, llama, scheduler):
    from modules.loaders.transformers_loader import TransformersLoader

    scheduler.set_loader(llama)
    long_prompt = " ".join(PROMPTS * 3)
    expected = scheduler.submit(request(llama, long_prompt)).result().choices[0].text
    chunked = TransformersLoader.load(llama_dir, "tiny-llama", {"prefill_chunk": 5, "threads": 2})
    scheduler.set_loader(chunked)
    assert scheduler.submit(request(chunked, long_prompt)).result().choices[0].text == expected


def test_cancel_frees_the_worker_within_a_step(served):
    scheduler, loader = served
    handle = scheduler.submit(request(loader, max_tokens=None, ban_eos=True))
    events = handle.events()
    next(events)
    queued = handle.inbox.qsize()  # tokens made while this thread waited for the CPU are not late
    handle.cancel()
    deadline = time.monotonic() + 5
    while scheduler.stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert scheduler.stats()["active"] == 0 and loader.active() == 0
    tokens = 0
    while not handle.inbox.empty():
        tokens += isinstance(handle.inbox.get(), TokenItem)
    assert tokens - queued <= 2  # at most the step already running when cancel arrived
    # The worker still serves.
    assert scheduler.submit(request(loader, max_tokens=3)).result().choices[0].text is not None


def test_abandoned_stream_is_cancelled(served):
    scheduler, loader = served
    events = scheduler.submit(request(loader, max_tokens=None, ban_eos=True)).events()
    next(events)
    events.close()  # what a disconnecting HTTP client does to the generator
    deadline = time.monotonic() + 5
    while scheduler.stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert scheduler.stats()["active"] == 0


def test_context_length_ends_with_length(llama, scheduler):
    scheduler.set_loader(llama)
    prompt_len = len(llama.encode("Hello"))
    result = scheduler.submit(request(llama, "Hello", max_tokens=None, ban_eos=True)).result()
    assert result.choices[0].finish_reason is FinishReason.LENGTH
    assert prompt_len + result.usage.completion_tokens == llama.info.context_length


def test_queue_full(llama, scheduler):
    scheduler.set_loader(llama)
    scheduler.max_queue = 1
    scheduler.pause()
    scheduler.submit(request(llama))
    with pytest.raises(QueueFull):
        scheduler.submit(request(llama))
    scheduler.resume()


def test_no_model_and_model_changed(llama, scheduler):
    with pytest.raises(ModelNotLoaded):
        scheduler.submit(request(llama))
    scheduler.set_loader(llama)
    with pytest.raises(ModelChanged):
        scheduler.submit(request(llama, model_id="another-model"))


class ExplodingLoader:
    """Wraps a real loader; its step() raises once, to prove one failure does not kill the worker."""

    def __init__(self, inner):
        self.inner = inner
        self.boom = True

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self):
        if self.boom:
            self.boom = False
            raise RuntimeError("simulated device failure")
        return self.inner.step()


def test_step_failure_fails_requests_but_worker_survives(llama, scheduler):
    from modules.errors import GenerationFailed

    scheduler.set_loader(ExplodingLoader(llama))
    with pytest.raises(GenerationFailed, match="simulated"):
        scheduler.submit(request(llama)).result()
    assert scheduler.submit(request(llama, max_tokens=3)).result().usage.completion_tokens >= 1


def test_run_exclusive_runs_on_worker(llama, scheduler):
    scheduler.set_loader(llama)
    names = scheduler.run_exclusive(lambda loader: (threading.current_thread().name, loader.info.name))
    assert names == ("hearth-worker", "tiny-llama")


def test_next_token_probs(llama, scheduler):
    scheduler.set_loader(llama)
    ids = llama.encode("Hello there")
    raw = scheduler.run_exclusive(lambda m: m.next_token_probs(ids, None, 5))
    greedy = scheduler.submit(request(llama, "Hello there", max_tokens=1, ban_eos=True)).result()
    assert raw[0][0] == greedy.choices[0].token_ids[0]
    top2 = scheduler.run_exclusive(lambda m: m.next_token_probs(ids, SamplingParams(top_k=2), 5))
    assert len(top2) == 2 and abs(sum(p for _, p in top2) - 1) < 1e-5


def test_swap_finishes_queued_requests_on_the_old_model(llama, gpt2, scheduler):
    """Requests queued when a swap starts (24 for 8 batch slots) run to the end on the model they were made for."""
    scheduler.set_loader(llama)
    scheduler.max_queue = 64
    made_for_llama = dict(max_tokens=16, ban_eos=True, model_id="tiny-llama")
    handles = [scheduler.submit(request(llama, f"Hello {i}", **made_for_llama)) for i in range(24)]
    assert scheduler.stats()["waiting"] > 0
    assert scheduler.swap_loader(gpt2, 60) is llama and scheduler.loader is gpt2
    assert [h.result().usage.completion_tokens for h in handles] == [16] * 24  # none failed with ModelChanged


def test_submit_during_a_swap_waits_then_reports_the_change(llama, gpt2, scheduler):
    """A request prepared for the old model while a swap drains gets ModelChanged once the new model is in."""
    scheduler.set_loader(llama)
    running = scheduler.submit(request(llama, "Hello", max_tokens=60, ban_eos=True))
    swapped = threading.Thread(target=scheduler.swap_loader, args=(gpt2, 60))
    swapped.start()
    time.sleep(0.1)
    with pytest.raises(ModelChanged, match="tiny-gpt2"):
        scheduler.submit(request(llama, "Hi", model_id="tiny-llama"))
    assert scheduler.loader is gpt2 and running.result().usage.completion_tokens == 60
    swapped.join(60)
    assert scheduler.submit(request(gpt2, "Hi", max_tokens=2, model_id="tiny-gpt2")).result().choices


def test_swap_timeout_cancels_what_still_runs(llama, gpt2, scheduler):
    scheduler.set_loader(llama)
    long = scheduler.submit(request(llama, "Hello", max_tokens=None, ban_eos=True))
    time.sleep(0.1)
    assert scheduler.swap_loader(gpt2, 0.2) is llama and scheduler.loader is gpt2
    assert long.result().choices[0].finish_reason is FinishReason.CANCELLED


def test_a_request_waits_for_one_still_on_its_way_then_both_prefill_together(llama, scheduler, monkeypatch):
    scheduler.set_loader(llama)
    scheduler.gather_s = 10.0  # far longer than the test: only done() may end the hold
    waiting_at_start = []
    start = llama.start
    monkeypatch.setattr(llama, "start", lambda spec: (waiting_at_start.append(len(llama.engine.prefilling)),
                                                       start(spec)))  # fmt: skip
    arrival = scheduler.expect()
    first = scheduler.submit(request(llama, max_tokens=3))
    time.sleep(0.3)
    assert waiting_at_start == [] and scheduler.stats() == {"waiting": 1, "active": 0, "preparing": 1}
    second = scheduler.submit(request(llama, PROMPTS[1], max_tokens=3))
    arrival.done()
    arrival.done()  # idempotent
    assert len(first.result().choices[0].token_ids) == 3 and len(second.result().choices[0].token_ids) == 3
    assert waiting_at_start == [0, 1]  # the second was queued for prefill before the first had a step
    assert scheduler.stats()["preparing"] == 0


def test_the_hold_ends_after_gather_s_and_a_lone_request_is_not_held(llama, scheduler):
    scheduler.set_loader(llama)
    scheduler.gather_s = 0.3
    arrival = scheduler.expect()  # never done: a client that went away mid-upload, say
    started = time.monotonic()
    scheduler.submit(request(llama, max_tokens=2)).result()
    assert time.monotonic() - started >= 0.3
    arrival.done()
    scheduler.gather_s = 10.0
    started = time.monotonic()
    scheduler.submit(request(llama, max_tokens=2)).result()
    assert time.monotonic() - started < 5  # nothing on its way: admitted at once


def test_a_hold_that_ends_while_the_worker_looks_does_not_strand_the_queue(llama, scheduler, monkeypatch):
    """The hold read once as 50 ms, then as over: the worker must wake by itself, not wait for a notify."""
    from modules.scheduler import Scheduler

    scheduler.set_loader(llama)
    readings = iter([0.05])
    real = Scheduler._hold_left
    monkeypatch.setattr(Scheduler, "_hold_left",
                        lambda self: (next(readings, None) or 0.0) if self._waiting else real(self))  # fmt: skip
    handle = scheduler.submit(request(llama, max_tokens=2))
    waiter = threading.Thread(target=handle.result, daemon=True)
    waiter.start()
    waiter.join(5)
    assert not waiter.is_alive(), "the queue waited for a wake-up that never came"


def test_paced_streams_carry_several_tokens_per_delta_and_equal_unpaced(llama, scheduler):
    from modules.handle import Pacing

    scheduler.set_loader(llama)
    prompts = PROMPTS[:4]
    solo = [scheduler.submit(request(llama, p, max_tokens=40, ban_eos=True, logprobs=2)).result() for p in prompts]
    scheduler.pacing = Pacing(interval=0.05, min_batch=4)
    handles = [scheduler.submit(request(llama, p, max_tokens=40, ban_eos=True, logprobs=2)) for p in prompts]
    for handle, alone in zip(handles, solo):
        deltas = list(handle.events())
        assert "".join(d.text for d in deltas) == alone.choices[0].text
        ids = [t for d in deltas for t in d.token_ids]
        assert ids == list(alone.choices[0].token_ids)
        assert [lp.token_id for d in deltas for lp in d.logprobs] == ids  # each token keeps its logprob
        assert deltas[-1].finish_reason is FinishReason.LENGTH
        assert max(len(d.token_ids) for d in deltas) > 1
    scheduler.pacing = Pacing(interval=30.0, min_batch=4)
    started = time.monotonic()
    scheduler.submit(request(llama, PROMPTS[0], max_tokens=40, ban_eos=True)).result()
    assert time.monotonic() - started < 10  # a stream alone is not paced: it never waits out the 30 s


def test_a_paced_stream_ends_without_waiting_out_its_interval(llama):
    from modules.handle import FinishItem, Handle, Pacing
    from modules.loaders.base import TokenEvent

    handle = Handle(request(llama, max_tokens=5), [1], llama.decode, lambda ids: None, Pacing(interval=30.0))
    ids = llama.encode(" one two three")
    events = handle.events()
    handle.deliver(TokenItem(0, TokenEvent(1, ids[0]), batch=8))
    first = next(events)  # the first token is never held back
    assert first.token_ids == (ids[0],)
    started = time.monotonic()
    threading.Timer(0.2, lambda: [handle.deliver(TokenItem(0, TokenEvent(1, t), batch=8)) for t in ids[1:]]
                    + [handle.deliver(FinishItem(0, FinishReason.LENGTH))]).start()  # fmt: skip
    rest = list(events)
    assert time.monotonic() - started < 10  # woken by the finish, not by the 30 s interval
    assert [t for d in rest for t in d.token_ids] == list(ids[1:]) and rest[-1].finish_reason is FinishReason.LENGTH
    assert "".join(d.text for d in [first, *rest]) == llama.decode(ids)


def test_under_load_tokens_that_came_during_the_interval_arrive_as_one_delta(llama):
    from modules.handle import FinishItem, Handle, Pacing
    from modules.loaders.base import TokenEvent

    handle = Handle(request(llama, max_tokens=5), [1], llama.decode, lambda ids: None, Pacing(interval=1.0))
    ids = llama.encode(" one two three four")
    events = handle.events()
    handle.deliver(TokenItem(0, TokenEvent(1, ids[0]), batch=8))
    assert next(events).token_ids == (ids[0],)

    def worker():
        for token in ids[1:]:
            handle.deliver(TokenItem(0, TokenEvent(1, token), batch=8))
            time.sleep(0.02)
        time.sleep(1.5)
        handle.deliver(FinishItem(0, FinishReason.LENGTH))

    threading.Thread(target=worker).start()
    second = next(events)  # without pacing this would be ids[1] alone, as soon as it came
    assert second.token_ids == tuple(ids[1:]) and second.finish_reason is None
    assert next(events).finish_reason is FinishReason.LENGTH
