"""The llama.cpp loader on tiny real GGUF models converted in the session from the tiny HF Llama (no downloads).

References come from transformers running the same weights the GGUF holds (f32, or rounded to f16; computed in fp32).
Random tiny models have near-ties: two tokens whose logits differ by less than the rounding between two libraries.
Greedy paths are compared token by token up to the first step where the reference's top two are closer than TIE;
the prompts used here have none within their lengths (checked, so a change of model shows up as such).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import threading

import pytest
import requests

from conftest import LiveServer, greedy_tokens, make_runtime

if not (importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("gguf")):
    why = "needs llama-cpp-python and gguf (pip install -r requirements-dev.txt, as run_tests.sh does)"
    if os.environ.get("HEARTH_REQUIRE_CLIENTS") == "1":
        pytest.fail(why, pytrace=False)
    pytest.skip(why, allow_module_level=True)

from gguf_models import convert_llama  # noqa: E402

from modules.errors import ModelChanged, ModelLoadError  # noqa: E402
from modules.generation import SamplingParams  # noqa: E402
from modules.loaders.base import SequenceSpec  # noqa: E402

TIE = 0.01  # logits closer than this may be ordered either way by two correct implementations
PROMPTS = ["Numbers: 1 2 3", "A small team shares one machine", "Hello there café 🙂", "The capital of France is"]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
OPTIONS = {"max_batch_size": 8, "threads": 2}


@pytest.fixture(scope="session")
def gguf_root(llama_dir, tmp_path_factory):
    """A models folder: the tiny Llama as f32, f16 and q8_0 GGUF files, a split copy in a folder, two broken files."""
    root = tmp_path_factory.mktemp("gguf-models")
    for dtype in ("f32", "f16", "q8_0"):
        convert_llama(llama_dir, root / f"tiny-{dtype}.gguf", dtype)
    (root / "tiny-split").mkdir()
    convert_llama(llama_dir, root / "tiny-split" / "tiny.gguf", "f16", split_tensors=8)
    (root / "not-gguf.gguf").write_bytes(b"PK\x03\x04" + bytes(64))
    data = (root / "tiny-f16.gguf").read_bytes()
    (root / "truncated.gguf").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="session")
def gguf_f16(gguf_root):
    from modules.loaders.llama_cpp_loader import LlamaCppLoader

    return LlamaCppLoader.load(gguf_root / "tiny-f16.gguf", "tiny-f16", OPTIONS)


class Reference:
    """transformers on the GGUF's weights: greedy paths with their top-2 margins, logprobs."""

    def __init__(self, llama_dir, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(llama_dir)
        self.model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
        if dtype == "f16":
            with torch.no_grad():
                for p in self.model.parameters():
                    if p.dim() == 2:  # what the GGUF stores as f16 (norms stay f32)
                        p.copy_(p.half().float())

    def greedy(self, ids: list[int], n: int, stop: bool = False) -> tuple[list[int], list[float]]:
        """(tokens, top-2 margin at each step) of greedy decoding after `ids`; `stop`: end at EOS as Hearth does."""
        import torch

        out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True,
                                  **({} if stop else {"eos_token_id": None}))  # fmt: skip
        margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
        return out.sequences[0, len(ids) :].tolist(), margins

    def logprobs(self, ids: list[int]):
        """log-softmax rows [T, V]: row t scores the token after ids[: t + 1]."""
        import torch

        with torch.no_grad():
            return torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)


@pytest.fixture(scope="session")
def references(llama_dir):
    return {dtype: Reference(llama_dir, dtype) for dtype in ("f32", "f16")}


def agree_until_tie(got: list[int], want: list[int], margins: list[float]) -> None:
    """`got` equals `want` up to the first near-tie of the reference (and the tie is not at the start)."""
    tie = next((i for i, m in enumerate(margins) if m < TIE), len(want))
    assert tie >= 4, f"the reference has a near-tie at step {tie}: pick another prompt"
    assert got[:tie] == want[:tie]


# ---- the loader ----------------------------------------------------------------------------------------------
def test_detected_and_listed(gguf_root):
    from modules.loaders.registry import detect_loader
    from modules.model_dir import list_models

    assert detect_loader(gguf_root / "tiny-f16.gguf") == "llama.cpp" == detect_loader(gguf_root / "tiny-split")
    names = {e.name: e.loader for e in list_models(gguf_root)}
    assert names["tiny-q8_0.gguf"] == "llama.cpp" and names["tiny-split"] == "llama.cpp"


def test_info_tokens_and_template_match_the_transformers_loader(gguf_f16, llama):
    info, hf = gguf_f16.info, llama.info
    assert info.loader == "llama.cpp" and info.dtype == "f16" and info.context_length == 512
    assert set(info.eos_token_ids) == set(hf.eos_token_ids) and info.eos_token_ids[0] == hf.bos_token_id + 1
    assert (info.bos_token, info.bos_token_id, info.eos_token) == (hf.bos_token, hf.bos_token_id, hf.eos_token)
    assert info.chat_template == hf.chat_template and info.vocab_size == hf.vocab_size


TEXTS = ["The quick brown fox", "café naïve 東京 🙂 “quotes”", "<s><|user|>\nhi<|end|>\n", "  two  spaces\n\ttab",
         "def main():\n    print(\"hello world\")"]  # fmt: skip


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_transformers(gguf_f16, llama, text):
    for special in (False, True):
        ids = gguf_f16.encode(text, add_special_tokens=special)
        assert ids == llama.encode(text, add_special_tokens=special)
    for skip in (False, True):
        assert gguf_f16.decode(ids, skip_special_tokens=skip) == llama.decode(ids, skip_special_tokens=skip)
    assert b"".join(gguf_f16.token_bytes(i) for i in ids) == b"".join(llama.token_bytes(i) for i in ids)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_greedy_equals_transformers_batched_and_solo(gguf_root, references, dtype):
    from modules.loaders.llama_cpp_loader import LlamaCppLoader

    loader = LlamaCppLoader.load(gguf_root / f"tiny-{dtype}.gguf", dtype, {**OPTIONS, "prefix_cache_mb": 0})
    try:
        batched = greedy_tokens(loader, PROMPTS, 16)
        solo = [greedy_tokens(loader, [p], 16)[0] for p in PROMPTS]
        prompts = [loader.encode(p) for p in PROMPTS]
    finally:
        loader.unload()
    assert batched == solo
    for ids, got in zip(prompts, batched):
        agree_until_tie(got, *references[dtype].greedy(ids, 16))
    with pytest.raises(ModelChanged):
        loader.encode("after unload")  # a request thread racing a model swap gets a retryable error, not a crash


def test_q8_0_chooses_close_to_the_fp32_best_at_every_step(gguf_root, references):
    from modules.loaders.llama_cpp_loader import LlamaCppLoader

    ref = references["f32"]
    loader = LlamaCppLoader.load(gguf_root / "tiny-q8_0.gguf", "q8", OPTIONS)
    try:
        for prompt in PROMPTS:
            ids = loader.encode(prompt)
            path = ids + ref.greedy(ids, 16)[0]  # the fp32 greedy path, fed to both (teacher forcing)
            choices = [item.top[0][0] for item in loader.prompt_logprobs(path, 1)[len(ids) :]]
            rows = ref.logprobs(path)[len(ids) - 1 : -1]
            gaps = [float(row.max() - row[c]) for row, c in zip(rows, choices)]
            assert max(gaps) < 0.5 and gaps.count(0.0) >= 0.75 * len(gaps), gaps
    finally:
        loader.unload()


def test_prompt_logprobs_and_next_token_probs_match_transformers(gguf_f16, llama, references):
    ids = gguf_f16.encode("The quick brown fox jumps over the lazy dog")
    got, want = gguf_f16.prompt_logprobs(ids, 3), llama.prompt_logprobs(ids, 3)
    assert [g.token_id for g in got] == ids and got[0].logprob == pytest.approx(want[0].logprob, abs=0.02)
    assert [g.logprob for g in got] == pytest.approx([w.logprob for w in want], abs=0.02)
    assert [t for t, _ in got[5].top] == [t for t, _ in want[5].top]
    probs = dict(gguf_f16.next_token_probs(ids, None, 5))
    for token, p in llama.next_token_probs(ids, None, 5):
        assert probs[token] == pytest.approx(p, abs=0.01)


def test_sampling_is_seeded_and_uses_hearths_samplers(gguf_f16):
    def sample(seed, **params):
        spec = SequenceSpec(0, tuple(gguf_f16.encode("Once upon a time")), SamplingParams(**params), seed=seed)
        gguf_f16.start(spec)
        tokens = [e.token_id for _ in range(12) for e in gguf_f16.step()]
        gguf_f16.release(0)
        return tokens

    assert sample(7, temperature=1.0) == sample(7, temperature=1.0) != sample(8, temperature=1.0)
    banned = sample(7, temperature=1.0, logit_bias={5: 100.0})
    assert banned == [5] * 12  # logit_bias goes through the same batch sampler as Transformers models


def test_prefix_of_a_finished_sequence_is_reused(gguf_f16):
    first = "Once upon a time there was a hearth in a small house"
    engine = gguf_f16.engine
    before = engine.reused_tokens
    greedy_tokens(gguf_f16, [first], 4)
    fresh = greedy_tokens(gguf_f16, [first + ", and the fire"], 8)
    assert engine.reused_tokens - before >= len(gguf_f16.encode(first)) - 1
    engine.reset()
    assert greedy_tokens(gguf_f16, [first + ", and the fire"], 8) == fresh  # same tokens without the shared cells


def test_a_full_kv_cache_fails_one_sequence_and_the_others_go_on(gguf_root):
    from modules.loaders.llama_cpp_loader import LlamaCppLoader

    loader = LlamaCppLoader.load(gguf_root / "tiny-f16.gguf", "small", {**OPTIONS, "ctx_size": 256})
    try:
        assert loader.info.context_length == 256
        prompt = tuple(loader.encode("The quick brown fox jumps over the lazy dog. " * 6))
        assert 2 * (len(prompt) + 40) <= 256 < 3 * (len(prompt) + 40)  # room for two of the three
        for i in range(3):
            loader.start(SequenceSpec(i, prompt, SamplingParams(temperature=0), seed=0))
        errors, counts = {}, [0, 0, 0]
        for _ in range(40):
            for event in loader.step():
                if event.error:
                    errors[event.seq_id] = event.error
                else:
                    counts[event.seq_id] += 1
        assert len(errors) == 1 and "KV cache" in next(iter(errors.values()))
        assert sorted(counts)[1:] == [40, 40] and loader.active() == 2
    finally:
        loader.unload()


def test_split_model_in_a_folder_loads(gguf_root, gguf_f16):
    from modules.loaders.llama_cpp_loader import LlamaCppLoader

    parts = sorted(p.name for p in (gguf_root / "tiny-split").iterdir())
    assert len(parts) > 1 and parts[0] == f"tiny-00001-of-{len(parts):05d}.gguf"
    loader = LlamaCppLoader.load(gguf_root / "tiny-split", "split", OPTIONS)
    try:
        assert greedy_tokens(loader, PROMPTS[:1], 8) == greedy_tokens(gguf_f16, PROMPTS[:1], 8)
    finally:
        loader.unload()


def test_bad_files_are_one_line_load_errors(gguf_root, tmp_path):
    from modules.loaders.llama_cpp_loader import LlamaCppLoader

    shutil.copytree(gguf_root / "tiny-split", tmp_path / "incomplete")
    (tmp_path / "incomplete" / "tiny-00002-of-00003.gguf").unlink()
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(gguf_root / "tiny-f16.gguf", tmp_path / "two" / name)
    cases = [(gguf_root / "not-gguf.gguf", "not a GGUF file"), (gguf_root / "truncated.gguf", "could not load"),
             (tmp_path / "incomplete", "missing tiny-00002-of-00003.gguf"),
             (tmp_path / "two", "several GGUF")]  # fmt: skip
    for path, message in cases:
        with pytest.raises(ModelLoadError, match=message) as exc:
            LlamaCppLoader.load(path, path.name, OPTIONS)
        assert "\n" not in exc.value.message


def test_missing_library_names_the_install_command(monkeypatch):
    import sys

    from modules.loaders.llama_cpp_loader import import_llama_cpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if it were not installed
    with pytest.raises(ModelLoadError, match=r"pip install -r requirements-gguf\.txt") as exc:
        import_llama_cpp()
    assert "\n" not in exc.value.message and "GGUF models need llama-cpp-python" in exc.value.message


# ---- through the API ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["f32", "f16"])
def gguf_api(request, gguf_root, references):
    from extensions.openai.app import create_app

    runtime = make_runtime(gguf_root)
    runtime.models.load(f"tiny-{request.param}.gguf")
    server = LiveServer(create_app(runtime))
    yield server, runtime, references[request.param]
    server.stop()
    runtime.close()


def post(server, path, body):
    response = requests.post(server.url(path), json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def stream_text(server, path, body) -> str:
    import json

    text = []
    with requests.post(server.url(path), json={**body, "stream": True}, stream=True, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    text.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
    return "".join(text)


def test_completions_by_text_and_ids_stream_and_not(gguf_api):
    server, _, ref = gguf_api
    for prompt in PROMPTS[:2]:
        ids = ref.tokenizer.encode(prompt)  # as Hearth encodes a completion's prompt (the tokenizers agree)
        tokens, margins = ref.greedy(ids, 12, stop=True)
        body = {"prompt": prompt, "max_tokens": 12, "temperature": 0}
        text = post(server, "/v1/completions", body)["choices"][0]["text"]
        assert min(margins) >= TIE and text == ref.tokenizer.decode(tokens, skip_special_tokens=True)
        assert post(server, "/v1/completions", {**body, "prompt": ids})["choices"][0]["text"] == text
        assert stream_text(server, "/v1/completions", body) == text


def test_chat_through_the_gguf_template(gguf_api):
    server, _, ref = gguf_api
    info = requests.get(server.url("/v1/internal/model/info"), timeout=10).json()
    assert info["loader"] == "llama.cpp" and info["instruction_template"] == "model (model)"
    ids = ref.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    tokens, margins = ref.greedy(list(ids), 12, stop=True)
    body = {"messages": CHAT, "max_tokens": 12, "temperature": 0}
    answer = post(server, "/v1/chat/completions", body)
    assert answer["usage"]["prompt_tokens"] == len(ids)
    want = ref.tokenizer.decode(tokens, skip_special_tokens=True)
    assert min(margins) >= TIE and answer["choices"][0]["message"]["content"] == want
    assert stream_text(server, "/v1/chat/completions", body) == want


def test_logprobs_and_echo_close_to_transformers(gguf_api):
    server, runtime, ref = gguf_api
    prompt = PROMPTS[0]
    ids = ref.tokenizer.encode(prompt)  # as Hearth encodes a completion's prompt (the tokenizers agree)
    body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 2, "echo": True}
    logprobs = post(server, "/v1/completions", body)["choices"][0]["logprobs"]["token_logprobs"]
    tokens = ref.greedy(ids, 6, stop=True)[0]
    rows = ref.logprobs(ids + tokens)
    want = [float(rows[t - 1, tok]) for t, tok in enumerate(ids + tokens) if t > 0]
    first = float(ref.logprobs([runtime.models.info.bos_token_id])[0, ids[0]])  # scored after BOS alone
    assert logprobs == pytest.approx([first, *want], abs=0.02)


def test_concurrent_requests_equal_one_at_a_time(gguf_api):
    server, _, _ = gguf_api
    bodies = [{"prompt": p, "max_tokens": 10, "temperature": 0} for p in PROMPTS]
    alone = [post(server, "/v1/completions", b)["choices"][0]["text"] for b in bodies]
    together = [None] * len(bodies)

    def run(i):
        together[i] = post(server, "/v1/completions", bodies[i])["choices"][0]["text"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


@pytest.mark.parametrize("name, message", [("not-gguf.gguf", "not a GGUF file"), ("truncated.gguf", "could not load")])
def test_a_corrupt_file_is_refused_while_the_model_keeps_serving(gguf_api, name, message):
    server, runtime, _ = gguf_api
    before = runtime.models.info.name
    failed = requests.post(server.url("/v1/internal/model/load"), json={"model_name": name}, timeout=60)
    assert failed.status_code == 400 and message in failed.json()["error"]["message"]
    assert "\n" not in failed.json()["error"]["message"] and runtime.models.info.name == before
    assert post(server, "/v1/completions", {"prompt": "Hello", "max_tokens": 3})["choices"][0]["text"] is not None


def test_the_gguf_benchmark_vocabulary_makes_each_prompt_word_one_token(llama_dir, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    from modules.loaders.llama_cpp_loader import LlamaCppLoader

    sys.path.insert(0, str(ROOT / "bench"))
    from gguf_serve import bench_vocab, prompt_words

    path = convert_llama(llama_dir, tmp_path / "bench.gguf", "f16", vocab=bench_vocab(669))  # the tiny model's size
    loader = LlamaCppLoader.load(path, "bench", OPTIONS)
    try:
        words = " " + prompt_words(32, offset=97)
        assert len(loader.encode(words)) == 32 and loader.decode(loader.encode(words)) == words
    finally:
        loader.unload()
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gguf_serve.py"), "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    assert "llama_cpp.server" in out and "--quant" in out
