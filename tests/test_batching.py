"""Continuous batching and prefix reuse (not timed: behaviour only)."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from modules.generation import FinishReason, GenerationRequest, SamplingParams

GREEDY = SamplingParams(temperature=0)
PROMPTS = [f"Request number {i}: the quick brown fox" + " jumps" * i for i in range(8)]


def greedy(loader, text, **kwargs):
    kwargs.setdefault("max_tokens", 20)
    return GenerationRequest(tuple(loader.encode(text)), GREEDY, ban_eos=True, **kwargs)


def test_eight_concurrent_greedy_equal_solo(served):
    scheduler, loader = served
    solo = [scheduler.submit(greedy(loader, p)).result().choices[0].text for p in PROMPTS]
    handles = [scheduler.submit(greedy(loader, p)) for p in PROMPTS]  # all admitted into one batch
    assert [h.result().choices[0].text for h in handles] == solo


def test_requests_join_a_running_batch(llama, scheduler):
    scheduler.set_loader(llama)
    long = scheduler.submit(greedy(llama, PROMPTS[0], max_tokens=200))
    events = long.events()
    next(events)
    late = scheduler.submit(greedy(llama, PROMPTS[1], max_tokens=5))
    late_text = late.result().choices[0].text  # finishes while the long one is still running
    deadline = time.monotonic() + 5
    while scheduler.stats()["active"] != 1 and time.monotonic() < deadline:
        time.sleep(0.001)  # the worker forgets the finished sequence just after sending its last token
    assert scheduler.stats()["active"] == 1
    assert late_text == scheduler.submit(greedy(llama, PROMPTS[1], max_tokens=5)).result().choices[0].text
    long.cancel()


def test_cancelled_request_leaves_and_others_finish(llama, scheduler):
    scheduler.set_loader(llama)
    solo = [scheduler.submit(greedy(llama, p, max_tokens=30)).result().choices[0].text for p in PROMPTS[:4]]
    handles = [scheduler.submit(greedy(llama, p, max_tokens=30)) for p in PROMPTS[:4]]
    victim = handles[1].events()
    next(victim)
    handles[1].cancel()
    results = [h.result() for i, h in enumerate(handles) if i != 1]
    assert [r.choices[0].text for r in results] == [solo[0], solo[2], solo[3]]
    assert llama.active() == 0


def test_max_batch_size_is_respected(llama_dir, scheduler):
    from modules.loaders.transformers_loader import TransformersLoader

    loader = TransformersLoader.load(llama_dir, "tiny-llama", {"max_batch_size": 2, "threads": 2})
    scheduler.set_loader(loader)
    peak = []
    handles = [scheduler.submit(greedy(loader, p, max_tokens=15)) for p in PROMPTS[:5]]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak.append(loader.active())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for h in handles:
        h.result()
    done.set()
    watcher.join()
    assert max(peak) <= 2


def test_prefix_reuse_gives_cold_text(llama_dir):
    from modules.loaders.transformers_loader import TransformersLoader
    from modules.scheduler import Scheduler

    history = "The system prompt says: you are a helpful assistant. " * 6
    turn1, turn2 = history + "User: hi", history + "User: hi Assistant:"
    cold_loader = TransformersLoader.load(llama_dir, "m", {"prefix_cache_mb": 0, "threads": 2})
    warm_loader = TransformersLoader.load(llama_dir, "m", {"threads": 2})
    texts = []
    for loader in (cold_loader, warm_loader):
        scheduler = Scheduler()
        scheduler.set_loader(loader)
        first = scheduler.submit(greedy(loader, turn1, max_tokens=5)).result()
        second = scheduler.submit(greedy(loader, turn2, max_tokens=12)).result()
        texts.append((first.choices[0].text, second.choices[0].text))
        scheduler.close()
    assert texts[0] == texts[1]
    assert cold_loader.engine.reused_tokens == 0
    assert warm_loader.engine.reused_tokens >= len(warm_loader.encode(turn1)) - 1


def test_queue_full_is_503_with_retry_after(models_root):
    from conftest import LiveServer, make_runtime
    from extensions.openai.app import create_app

    runtime = make_runtime(models_root, **{"model.max_queue": 1, "model.max_batch_size": 1})
    runtime.models.load("tiny-llama")
    server = LiveServer(create_app(runtime))
    try:
        runtime.scheduler.pause()  # nothing is admitted, so the queue fills
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        waiting = threading.Thread(target=requests.post, args=(server.url("/v1/chat/completions"),),
                                   kwargs={"json": body, "timeout": 60})  # fmt: skip
        waiting.start()
        deadline = time.monotonic() + 10
        while runtime.scheduler.stats()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        full = requests.post(server.url("/v1/chat/completions"), json=body, timeout=60)
        assert full.status_code == 503 and full.headers["Retry-After"] == "1"
        assert full.json()["error"]["code"] == "queue_full"
        runtime.scheduler.resume()
        waiting.join(60)
    finally:
        server.stop()
        runtime.close()


@pytest.mark.parametrize("n", [3])
def test_n_choices_share_the_batch(served, n):
    scheduler, loader = served
    result = scheduler.submit(greedy(loader, PROMPTS[2], max_tokens=10, n=n)).result()
    texts = {c.text for c in result.choices}
    assert len(result.choices) == n and len(texts) == 1  # greedy: every choice is the same
    assert all(c.finish_reason is FinishReason.LENGTH for c in result.choices)


def test_per_row_bias_bans_and_seeds_inside_one_batch(llama, scheduler):
    """Rows of one batch keep their own logit_bias, min_tokens, seed and stop strings (the batched sampler path)."""
    scheduler.set_loader(llama)
    eos = llama.info.eos_token_ids[0]
    forced = llama.encode(" fox")[-1]
    prompt = tuple(llama.encode(PROMPTS[2]))
    biased = GenerationRequest(prompt, SamplingParams(temperature=0, logit_bias={forced: 100.0}), max_tokens=5)
    pushed_to_eos = SamplingParams(temperature=0, logit_bias={eos: 100.0})  # EOS wins at once, unless suppressed
    at_least = GenerationRequest(prompt, pushed_to_eos, max_tokens=12, min_tokens=7)
    seeded = GenerationRequest(prompt, SamplingParams(temperature=1.0, seed=1234), max_tokens=16, ban_eos=True)
    solo_seeded = scheduler.submit(seeded).result().choices[0]
    first = scheduler.submit(greedy(llama, PROMPTS[3], max_tokens=16)).result().choices[0].text
    stop = first[5:8]
    handles = [scheduler.submit(r) for r in (biased, at_least, seeded, greedy(llama, PROMPTS[3], max_tokens=16,
                                                                        stop=(stop,)))]  # fmt: skip
    out = [h.result().choices[0] for h in handles]
    assert out[0].token_ids == (forced,) * 5
    assert len(out[1].token_ids) == 7 and out[1].finish_reason is FinishReason.STOP  # EOS right after min_tokens
    assert out[2].token_ids == solo_seeded.token_ids  # same seed, same text, alone or in a batch
    assert out[3].text == first[: first.find(stop)] and out[3].finish_reason is FinishReason.STOP


def _run_together(loader, specs, steps: int = 12) -> dict[int, list[int]]:
    """Start every spec at once and step; the first step must prefill them all (one padded forward)."""
    out: dict[int, list[int]] = {s.seq_id: [] for s in specs}
    for spec in specs:
        loader.start(spec)
    first = loader.step()
    assert sorted(e.seq_id for e in first) == sorted(out)
    for event in first:
        out[event.seq_id].append(event.token_id)
    for _ in range(steps - 1):
        for event in loader.step():
            out[event.seq_id].append(event.token_id)
    for spec in specs:
        loader.release(spec.seq_id)
    return out


def _cold(loader, specs) -> dict[int, list[int]]:
    out = {}
    for spec in specs:
        loader.reset()  # empties the prefix cache, so nothing is reused
        out.update(_run_together(loader, [spec]))
    loader.reset()
    return out


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_waiting_prompts_prefill_together_and_equal_solo(request, model):
    """Prompts of different lengths waiting together are prefilled in one padded forward; greedy text is unchanged."""
    from modules.loaders.base import SequenceSpec

    loader = request.getfixturevalue(model)
    specs = [SequenceSpec(900 + i, tuple(loader.encode(p)), GREEDY, seed=0) for i, p in enumerate(PROMPTS[:6])]
    solo = _cold(loader, specs)
    assert _run_together(loader, specs) == solo and loader.active() == 0


def test_second_turns_with_reused_prefixes_prefill_together(llama):
    """Rows that reuse cached prefixes of different lengths, and a fresh one, share one prefill; text as cold."""
    from modules.loaders.base import SequenceSpec

    first = [tuple(llama.encode(p)) for p in PROMPTS[:3]]
    _run_together(llama, [SequenceSpec(910 + i, ids, GREEDY, seed=0) for i, ids in enumerate(first)], steps=4)
    extra = tuple(llama.encode(" and then the dog"))
    second = [SequenceSpec(920 + i, ids + extra[: i + 2], GREEDY, seed=0) for i, ids in enumerate(first)]
    second.append(SequenceSpec(930, tuple(llama.encode(PROMPTS[7])), GREEDY, seed=0))
    reused = llama.engine.reused_tokens
    warm = _run_together(llama, second)
    assert llama.engine.reused_tokens - reused >= sum(len(ids) for ids in first)  # (the fresh one may share some)
    assert warm == _cold(llama, second)


def test_rows_leaving_in_one_step_are_dropped_together_and_others_continue(llama):
    """Three of five rows released between two steps: one compaction, and the other two still equal their solo text."""
    from modules.loaders.base import SequenceSpec

    specs = [SequenceSpec(940 + i, tuple(llama.encode(p)), GREEDY, seed=0) for i, p in enumerate(PROMPTS[:5])]
    survivors = [specs[1], specs[3]]
    solo = _cold(llama, survivors)
    out: dict[int, list[int]] = {s.seq_id: [] for s in specs}
    for spec in specs:
        llama.start(spec)
    for _ in range(4):
        for event in llama.step():
            out[event.seq_id].append(event.token_id)
    for spec in (specs[0], specs[2], specs[4]):
        llama.release(spec.seq_id)
    assert llama.active() == 2
    for _ in range(8):
        events = llama.step()
        assert sorted(e.seq_id for e in events) == [s.seq_id for s in survivors]
        for event in events:
            out[event.seq_id].append(event.token_id)
    batch = llama.engine.batch
    assert len(batch.rows) == 2 and batch.cache.layers[0].keys.shape[0] == 2 and batch.mask.shape[0] == 2
    for spec in survivors:
        llama.release(spec.seq_id)
    assert {s.seq_id: out[s.seq_id] for s in survivors} == solo
