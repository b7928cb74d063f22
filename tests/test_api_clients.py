"""Real clients against a live server: the seed documents' curl / requests / sseclient examples, env variables,
the legacy openai 0.28 module, langchain-openai, shell_gpt and the Node SDK.

Client sandboxes live in .clients/ (run_tests.sh installs them); with HEARTH_REQUIRE_CLIENTS=1 a missing one fails.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / ".clients"


def sandbox(name: str) -> Path:
    path = CLIENTS / name
    if not path.exists():
        if os.environ.get("HEARTH_REQUIRE_CLIENTS") == "1":
            pytest.fail(f"client sandbox {path} is missing (run ./run_tests.sh)")
        pytest.skip(f"{path} not installed (./run_tests.sh installs it)")
    return path


def chat_reference(api, messages, **extra):
    body = {"messages": messages, "temperature": 0, **extra}
    return requests.post(api.url("/v1/chat/completions"), json=body, timeout=60).json()["choices"][0]["message"]["content"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_seed_curl_examples(api):
    base = api.url("/v1")
    examples = [
        ("completions", {"prompt": "This is a cake recipe:\n\n1.", "max_tokens": 20, "temperature": 1, "top_p": 0.9, "seed": 10}),
        ("chat/completions", {"messages": [{"role": "user", "content": "Hello!"}], "mode": "instruct",
                              "instruction_template": "Alpaca", "max_tokens": 8}),
        ("chat/completions", {"messages": [{"role": "user", "content": "Hello! Who are you?"}], "mode": "chat",
                              "character": "Example", "max_tokens": 8}),
    ]  # fmt: skip
    for path, body in examples:
        out = subprocess.run(
            ["curl", "-s", f"{base}/{path}", "-H", "Content-Type: application/json", "-d", json.dumps(body)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert json.loads(out)["choices"][0]
    streamed = subprocess.run(
        ["curl", "-s", "-N", f"{base}/chat/completions", "-H", "Content-Type: application/json", "-d",
         json.dumps({"messages": [{"role": "user", "content": "Hello!"}], "mode": "instruct",
                     "instruction_template": "Alpaca", "stream": True, "max_tokens": 8})],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert streamed.startswith("data: {") and streamed.endswith("data: [DONE]\n\n")


def test_seed_requests_chat_example(api):
    """text-generation-webui's 'Python chat example', one turn of its loop."""
    url = api.url("/v1/chat/completions")
    headers = {"Content-Type": "application/json"}
    history = [{"role": "user", "content": "Hello! Who are you?"}]
    data = {"mode": "chat", "character": "Example", "messages": history, "max_tokens": 10}
    response = requests.post(url, headers=headers, json=data, verify=False)
    assistant_message = response.json()["choices"][0]["message"]["content"]
    history.append({"role": "assistant", "content": assistant_message})
    assert isinstance(assistant_message, str)


def test_seed_sseclient_chat_example(api):
    """'Python chat example with streaming': each event's choices[0].message.content, until [DONE]."""
    import sseclient

    url = api.url("/v1/chat/completions")
    history = [{"role": "user", "content": "Tell me a story"}]
    data = {"mode": "instruct", "stream": True, "messages": history, "max_tokens": 16, "temperature": 0}
    stream_response = requests.post(url, headers={"Content-Type": "application/json"}, json=data, verify=False,
                                    stream=True)  # fmt: skip
    client = sseclient.SSEClient(stream_response)
    assistant_message = ""
    for event in client.events():
        if event.data == "[DONE]":  # OpenAI's end-of-stream marker, which the documented example does not expect
            break
        payload = json.loads(event.data)
        chunk = payload["choices"][0]["message"]["content"]
        assistant_message += chunk
    assert assistant_message == chat_reference(api, history, mode="instruct", max_tokens=16)


def test_seed_sseclient_completions_example(api):
    import sseclient

    data = {"prompt": "This is a cake recipe:\n\n1.", "max_tokens": 20, "temperature": 1, "top_p": 0.9, "seed": 10,
            "stream": True}  # fmt: skip
    stream_response = requests.post(api.url("/v1/completions"), headers={"Content-Type": "application/json"},
                                    json=data, verify=False, stream=True)  # fmt: skip
    text = ""
    for event in sseclient.SSEClient(stream_response).events():
        if event.data == "[DONE]":
            break
        text += json.loads(event.data)["choices"][0]["text"]
    whole = requests.post(api.url("/v1/completions"), json={**data, "stream": False}, timeout=60).json()
    assert text == whole["choices"][0]["text"]  # same seed, same text


def test_sdk_reads_openai_env_variables(api):
    code = textwrap.dedent(
        """
        from openai import OpenAI
        client = OpenAI()
        print(client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=3).choices[0].finish_reason)
        """
    )
    env = {**os.environ, "OPENAI_BASE_URL": api.url("/v1"), "OPENAI_API_KEY": "sk-111111"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() in ("stop", "length"), out.stderr


def test_legacy_openai_028_api_base(api):
    path = sandbox("openai-legacy")
    code = textwrap.dedent(
        f"""
        import openai
        openai.api_key = "sk-111111111111111111111111111111111111111111111111"
        openai.api_base = "{api.url('/v1')}"
        openai.api_version = "2023-05-15"
        r = openai.ChatCompletion.create(model="x", messages=[{{"role": "user", "content": "hi"}}], max_tokens=4)
        parts = [c["choices"][0]["delta"].get("content", "") for c in openai.ChatCompletion.create(
            model="x", messages=[{{"role": "user", "content": "hi"}}], max_tokens=4, stream=True, temperature=0)]
        c = openai.Completion.create(model="x", prompt="Once", max_tokens=3)
        print(r["choices"][0]["message"]["role"], len(openai.Model.list()["data"]) > 0, c["object"], len(parts) > 0)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["assistant", "True", "text_completion", "True"]


def test_langchain_openai(api):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=api.url("/v1"), api_key="x", model="tiny-llama", temperature=0, max_tokens=12,
                     max_retries=0)  # fmt: skip
    whole = llm.invoke("Tell me a joke").content
    streamed = "".join(chunk.content for chunk in llm.stream("Tell me a joke"))
    assert streamed == whole == chat_reference(api, [{"role": "user", "content": "Tell me a joke"}], max_tokens=12)


def readme_sgpt_recipe() -> tuple[dict, str]:
    """The README's shell_gpt command line: (its environment variables, its question)."""
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("API_BASE_URL="))
    words = shlex.split(line)
    assert words[-2] == "sgpt", line
    return dict(word.split("=", 1) for word in words[:-2]), words[-1]


def test_shell_gpt_as_the_readme_gives_it(api, tmp_path):
    path = sandbox("shell-gpt")
    recipe, _ = readme_sgpt_recipe()
    assert recipe["API_BASE_URL"] == "http://127.0.0.1:5000/v1" and recipe["DEFAULT_MODEL"] == "hearth-demo"
    # Only the address and the model differ here: this server runs on another port with the tiny test model, whose
    # 512-token context cannot hold sgpt's markdown-mode system prompt (hence --no-md, a shorter one) with the
    # README's question (hence a shorter one; the variables are what the recipe is about).
    question = "Say hello"
    recipe.update(API_BASE_URL=api.url("/v1"), DEFAULT_MODEL="tiny-llama")
    env = {**os.environ, "PYTHONPATH": str(path), "HOME": str(tmp_path), **recipe}
    out = subprocess.run([sys.executable, "-m", "sgpt", "--no-md", question], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    role = json.loads((tmp_path / ".config" / "shell_gpt" / "roles" / "ShellGPT.json").read_text())
    messages = [{"role": "system", "content": role["role"]}, {"role": "user", "content": question}]
    # sgpt strips and prints the streamed reply; it must equal the same request answered directly.
    assert out.stdout.strip() == chat_reference(api, messages).strip()


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_node_sdk(api, tmp_path):
    path = sandbox("node")
    script = tmp_path / "client.cjs"
    script.write_text(textwrap.dedent(
        f"""
        const OpenAI = require({json.dumps(str(path / "node_modules" / "openai"))});
        const client = new OpenAI({{ baseURL: {json.dumps(api.url('/v1'))}, apiKey: "x", maxRetries: 0 }});
        (async () => {{
          const r = await client.chat.completions.create({{ model: "x", messages: [{{ role: "user", content: "hi" }}],
                                                             max_tokens: 6, temperature: 0 }});
          const stream = await client.chat.completions.create({{ model: "x", messages: [{{ role: "user", content: "hi" }}],
                                                                  max_tokens: 6, temperature: 0, stream: true }});
          let text = "";
          for await (const chunk of stream) text += chunk.choices[0]?.delta?.content || "";
          console.log(JSON.stringify({{ whole: r.choices[0].message.content, streamed: text }}));
        }})().catch((e) => {{ console.error(e); process.exit(1); }});
        """
    ))  # fmt: skip
    out = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["whole"] == result["streamed"]
