"""The browser UI in headless Chromium, served by `python server.py` with tiny models (Playwright, sync API).

The tests marked `browser` need `apt-get install chromium` and pip `playwright` (never `playwright install`).
Without them they skip, or fail when HEARTH_REQUIRE_CLIENTS=1 (as run_tests.sh sets). HEARTH_SCREENSHOT=1 also saves
docs/screenshot-chat.png (the demo model's chat, for the README).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
LOCAL_HOSTS = ("127.0.0.1", "localhost")
SCREENSHOT = ROOT / "docs" / "screenshot-chat.png"


def _require_browser():
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is missing (pip install -r requirements-dev.txt)"
    if problem is None and not Path(CHROMIUM).is_file():
        problem = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if problem is not None:
        if os.environ.get("HEARTH_REQUIRE_CLIENTS") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


class OutboundTrap:
    """A fake HTTP(S) proxy: every connection to it is a request the server tried to send off the machine."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.seen.append(conn.recv(200).decode("latin-1").splitlines()[0])
                except (OSError, IndexError):
                    self.seen.append("(connection)")

    def env(self) -> dict[str, str]:
        """Proxy variables that send every outside request here (loopback excepted)."""
        return {k: self.url for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")} | {
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}  # fmt: skip


class Hearth:
    """`python server.py` with the web UI and the API in a subprocess; URLs are read from what it prints."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.args, self.env = args, env
        self.output: list[str] = []
        self.start()

    def start(self):
        """Start the server and wait for both URLs."""
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **self.env}
        self.proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "server.py"), *self.args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.ui_url = self.api_url = None
        deadline = time.monotonic() + 120
        for line in self.proc.stdout:
            self.output.append(line)
            if m := re.search(r"Web UI: (\S+)", line):
                self.ui_url = m.group(1)
            if m := re.search(r"OpenAI-compatible API URL: (\S+)", line):
                self.api_url = m.group(1)
            if (self.ui_url and self.api_url) or time.monotonic() > deadline:
                break
        if not (self.ui_url and self.api_url):
            raise AssertionError("server.py did not start:\n" + "".join(self.output))
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc):
        for line in proc.stdout:
            self.output.append(line)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """SIGTERM, as Ctrl-C or a service manager would (SIGKILL: a crash)."""
        self.proc.send_signal(sig)
        return self.proc.wait(30)


@pytest.fixture(scope="module")
def trap():
    return OutboundTrap()


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("user_data")


@pytest.fixture(scope="module")
def hearth(models_root, user_data, trap, tmp_path_factory):
    _require_browser()
    settings = tmp_path_factory.mktemp("settings") / "settings.yaml"
    # No prefix reuse: the Stop test compares two seeded replies of the same prompt, which must be bit-identical.
    settings.write_text(f"chat:\n  user_data_dir: {json.dumps(str(user_data))}\ngeneration:\n  max_new_tokens: 120\n"
                        "model:\n  prefix_cache_mb: 0\n")
    args = ["--model-dir", str(models_root), "--model", "tiny-llama", "--settings", str(settings),
            "--listen-port", "0", "--api", "--api-port", "0", "--threads", "1"]  # fmt: skip
    server = Hearth(args, trap.env())
    yield server
    assert server.stop() == 0, "".join(server.output[-30:])
    assert trap.seen == [], f"the server tried to reach the internet: {trap.seen}"


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page; at the end, no request may have left the machine."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    outside: list[str] = []
    pg.on("request", lambda r: outside.append(r.url) if _host(r.url) not in LOCAL_HOSTS else None)
    yield pg
    context.close()
    assert outside == [], f"the page fetched from outside: {outside}"


# ----- helpers -----------------------------------------------------------------------------------------------


def _host(url: str) -> str:
    return re.sub(r"^[a-z]+://([^/:]+).*$", r"\1", url) if "://" in url else "127.0.0.1"  # data:, blob: stay local


def open_ui(page, url: str):
    """Load the page and wait until the first chat is shown (the page-load event has run)."""
    from playwright.sync_api import expect

    page.goto(url, wait_until="load")
    expect(page.locator("#context-info")).to_contain_text("tokens", timeout=30_000)


def choose(page, label: str, option: str):
    """Pick `option` in the dropdown labelled `label`, then wait for the UI to settle."""
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def set_mode(page, mode: str):
    page.locator("#mode").get_by_label(mode, exact=True).check()
    wait_idle(page)


def set_parameters(page, *, ban_eos: bool = True, max_new_tokens: int | None = None, seed: int | None = None):
    """On the Parameters tab: ban EOS (replies run to max_new_tokens, never empty); maybe set length and seed."""
    page.get_by_role("tab", name="Parameters").click()
    page.get_by_label("Ban the eos_token").set_checked(ban_eos)
    for selector, value in (("#max-new-tokens input[type=number]", max_new_tokens), ("#seed input", seed)):
        if value is not None:
            page.locator(selector).fill(str(value))
            page.locator(selector).press("Enter")
    page.get_by_role("tab", name="Chat").click()


def bot_texts(page) -> list[str]:
    return page.locator('#chat [data-testid="bot"]').all_inner_texts()


def user_texts(page) -> list[str]:
    return page.locator('#chat [data-testid="user"]').all_inner_texts()


def busy(page) -> bool:
    """True while any Gradio event is pending or streaming (its status tracker is not hidden)."""
    return page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=status-tracker]')]"
        ".some(t => !t.classList.contains('hide') && (t.closest('#chat') || t.closest('#context-info')))"
    )


def wait_idle(page, changed=lambda: True, timeout: float = 60):
    """Wait until `changed()` holds and nothing is streaming any more."""
    deadline = time.monotonic() + timeout
    time.sleep(0.2)
    while time.monotonic() < deadline:
        if changed() and not busy(page):
            return
        time.sleep(0.1)
    raise AssertionError("the UI did not settle")


def send(page, text: str):
    """Type a message and press Send; wait for the whole reply."""
    before = len(user_texts(page))
    page.fill("#chat-input textarea", text)
    page.click("#send")
    wait_idle(page, lambda: len(user_texts(page)) > before and len(bot_texts(page)) > before)


def watch_reply_lengths(page):
    """Record each length the newest reply passes through (to see it stream), and each context line shown."""
    page.evaluate(
        """() => { window.__lengths = []; window.__contexts = []; const chat = document.querySelector('#chat');
        const watch = (el, fn) => new MutationObserver(fn).observe(el, {subtree: true, childList: true,
                                                                        characterData: true});
        watch(chat, () => { const bots = chat.querySelectorAll('[data-testid="bot"]');
          if (!bots.length) return; const n = bots[bots.length - 1].innerText.length, seen = window.__lengths;
          if (!seen.length || seen[seen.length - 1] !== n) seen.push(n); });
        const info = document.querySelector('#context-info');
        watch(info, () => window.__contexts.push(info.innerText)); }"""
    )


def saved_chats(user_data: Path, mode: str, character: str) -> list[dict]:
    folder = user_data / "history" / mode / character
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return [json.loads(p.read_text()) | {"id": p.stem} for p in files]


# ----- tests -------------------------------------------------------------------------------------------------


def test_ui_builds_and_serves_without_outside_resources(models_root, tmp_path, capsys):
    """No browser needed: the app builds, serves its page on a free port, prints its URL and closes."""
    from conftest import make_runtime
    from modules.ui.app import launch_ui

    runtime = make_runtime(models_root, **{"server.listen_port": 0, "chat.user_data_dir": str(tmp_path)})
    try:
        stop = launch_ui(runtime)
        url = re.search(r"Web UI: (\S+)", capsys.readouterr().out).group(1)
        assert url.startswith("http://127.0.0.1:")
        config = requests.get(url + "/config", timeout=10).json()
        ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert {"chat", "send", "stop", "regenerate", "mode", "character", "model-load", "preset"} <= ids
        for path in ("", "/config", "/theme.css"):
            assert not re.search(r"fonts\.(googleapis|gstatic)\.com", requests.get(url + path, timeout=10).text)
        stop()
    finally:
        runtime.close()


@pytest.mark.browser
def test_chat_streams_reply_while_api_answers(hearth, page, user_data):
    open_ui(page, hearth.ui_url)
    set_parameters(page, max_new_tokens=440)  # a long reply, so the stream is easy to watch
    set_mode(page, "chat")
    assert bot_texts(page) == ["Hello! What can I do for you?"]  # Assistant's greeting
    watch_reply_lengths(page)
    page.fill("#chat-input textarea", "Hello there")
    page.click("#send")
    page.wait_for_function("() => window.__lengths.some(n => n > 0)", timeout=30_000)
    # The browser's reply is streaming; an API client is served at the same time by the same scheduler.
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    answer = requests.post(hearth.api_url + "/chat/completions", json=body, timeout=30)
    assert answer.status_code == 200 and answer.json()["model"] == "tiny-llama"
    assert busy(page), "the API request should have been answered while the browser reply was still streaming"
    wait_idle(page, lambda: len(bot_texts(page)) == 2)
    lengths = page.evaluate("() => window.__lengths")
    assert len([n for n in lengths if n > 0]) >= 3, lengths  # arrived piece by piece
    assert user_texts(page) == ["Hello there"] and bot_texts(page)[-1].strip()
    contexts = page.evaluate("() => window.__contexts")  # the prompt's size, shown when the reply started
    assert any(re.search(r"Context: \d+ / 512 tokens in context · tiny-llama", c) for c in contexts), contexts
    saved = saved_chats(user_data, "chat", "Assistant")[-1]
    assert [m["role"] for m in saved["messages"]] == ["assistant", "user", "assistant"]
    assert saved["messages"][1]["content"] == "Hello there"


@pytest.mark.browser
def test_switch_character_shows_greeting_then_regenerate(hearth, page, user_data):
    open_ui(page, hearth.ui_url)
    set_parameters(page, max_new_tokens=24)
    set_mode(page, "chat")
    choose(page, "Character", "Example")
    greeting = "Oh, hello! Come in, come in."
    assert len(bot_texts(page)) == 1 and greeting in bot_texts(page)[0]
    assert "Ember" in page.inner_text("#character-card") and greeting in page.inner_text("#character-card")
    page.wait_for_function(  # the character's picture is shown (served by the UI, not fetched from outside)
        "() => { const img = document.querySelector('#character-picture img');"
        " return img && img.complete && img.naturalWidth > 0; }", timeout=10_000)  # fmt: skip
    send(page, "How do **lanterns** work?\n```python\nlight(wick)\n```")
    first = bot_texts(page)[-1]
    user = page.locator('#chat [data-testid="user"]')
    assert user.locator("strong").inner_text() == "lanterns"  # Markdown and code blocks are rendered
    assert "light(wick)" in user.locator("pre code").inner_text()
    page.click("#regenerate")
    wait_idle(page, lambda: bot_texts(page)[-1] != first)
    assert len(user_texts(page)) == 1 and len(bot_texts(page)) == 2
    saved = saved_chats(user_data, "chat", "Example")[-1]["messages"]
    assert len(saved) == 3 and saved[-1]["content"] != first
    set_mode(page, "instruct")  # no character takes part in instruct mode: the card says so, no picture
    assert "Instruct mode" in page.inner_text("#character-card") and "Ember" not in page.inner_text("#character-card")
    assert not page.locator("#character-picture img").is_visible()
    set_mode(page, "chat")
    assert "Ember" in page.inner_text("#character-card")


@pytest.mark.browser
def test_stop_cancels_the_reply(hearth, page, user_data):
    from playwright.sync_api import expect

    open_ui(page, hearth.ui_url)
    set_parameters(page, max_new_tokens=470, seed=7)  # a fixed seed: the same prompt gives the same reply
    page.click("#new-chat")  # instruct mode, the Assistant: a short prompt, room for a long reply
    wait_idle(page, lambda: user_texts(page) == [])
    send(page, "Tell me a very long story")
    full = saved_chats(user_data, "instruct", "Assistant")[-1]["messages"][-1]["content"]
    page.click("#remove-last")  # the exchange goes, the message returns to the input box
    wait_idle(page, lambda: user_texts(page) == [] and page.input_value("#chat-input textarea") != "")
    assert page.input_value("#chat-input textarea") == "Tell me a very long story"
    assert page.locator("#stop").is_disabled()  # nothing runs: Stop is not offered
    watch_reply_lengths(page)
    page.click("#send")
    page.wait_for_function("() => window.__lengths.some(n => n > 0)", timeout=30_000)
    page.click("#stop")
    wait_idle(page, lambda: len(bot_texts(page)) == 1)
    expect(page.locator("#stop")).to_be_disabled()
    stopped = saved_chats(user_data, "instruct", "Assistant")[-1]["messages"][-1]["content"]
    assert stopped and full.startswith(stopped) and len(stopped) < len(full)


@pytest.mark.browser
def test_enter_sends_and_shift_enter_breaks_the_line(hearth, page, user_data):
    open_ui(page, hearth.ui_url)
    page.click("#new-chat")
    wait_idle(page, lambda: user_texts(page) == [])
    box = page.locator("#chat-input textarea")
    box.click()
    box.type("first line")
    box.press("Shift+Enter")
    box.type("second line")
    assert box.input_value() == "first line\nsecond line" and user_texts(page) == []
    box.press("Enter")
    wait_idle(page, lambda: len(bot_texts(page)) == 1)
    assert box.input_value() == ""
    sent = saved_chats(user_data, "instruct", "Assistant")[-1]["messages"][-2]["content"]
    assert sent == "first line\nsecond line"


@pytest.mark.browser
@pytest.mark.parametrize("key", [None, "sk-docs-1"])
def test_api_docs_page_renders_its_operations(api_runtime, browser, key):
    """/docs in Chromium, offline: Swagger UI reads the OpenAPI 3.1 document, with and without an API key."""
    from playwright.sync_api import expect

    from conftest import LiveServer, with_server_settings
    from extensions.openai.app import create_app

    server = LiveServer(create_app(with_server_settings(api_runtime, api_key=key)))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(server.url("/docs"), wait_until="load")
        expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
        paths = requests.get(server.url("/openapi.json"), timeout=10).json()["paths"]
        assert page.locator(".opblock").count() == sum(len(ops) for ops in paths.values())
        assert page.locator("text=Unable to render").count() == 0
        expect(page.locator("button.authorize")).to_be_visible()
    finally:
        context.close()
        server.stop()


@pytest.mark.browser
def test_load_model_from_model_tab(hearth, page):
    from playwright.sync_api import expect

    open_ui(page, hearth.ui_url)
    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#model-status")).to_contain_text("Loaded: tiny-llama")
    choose(page, "Model", "tiny-gpt2")
    page.click("#model-load")
    expect(page.locator("#model-status")).to_contain_text("Loaded tiny-gpt2 in", timeout=60_000)
    expect(page.locator("#model-status")).to_contain_text("Instruction template:")
    page.get_by_role("tab", name="Chat").click()
    expect(page.locator("#context-info")).to_contain_text("tiny-gpt2")
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answer = requests.post(hearth.api_url + "/chat/completions", json=body, timeout=30)
    assert answer.json()["model"] == "tiny-gpt2"  # one runtime: the API serves what the UI loaded
    page.get_by_role("tab", name="Model").click()
    choose(page, "Model", "tiny-llama")
    page.click("#model-load")
    expect(page.locator("#model-status")).to_contain_text("Loaded tiny-llama in", timeout=60_000)


@pytest.mark.browser
def test_model_tab_loads_a_pool_entry_and_the_chat_picks_it(hearth, page):
    from playwright.sync_api import expect

    open_ui(page, hearth.ui_url)
    page.get_by_role("tab", name="Model").click()
    choose(page, "Model", "tiny-gpt2")
    entry = page.get_by_role("combobox", name="Pool entry", exact=True)
    entry.fill("second")
    entry.press("Enter")
    page.click("#model-load")
    expect(page.locator("#model-status")).to_contain_text("Loaded tiny-gpt2 in", timeout=60_000)
    expect(page.locator("#model-status")).to_contain_text("second: tiny-gpt2")
    expect(page.locator("#model-status")).to_contain_text("Loaded: tiny-llama")  # the default entry kept its model
    page.get_by_role("tab", name="Chat").click()
    choose(page, "Model", "second")
    expect(page.locator("#context-info")).to_contain_text("tiny-gpt2")  # the model the picked entry serves
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert requests.post(hearth.api_url + "/chat/completions", json=body, timeout=30).json()["model"] == "tiny-llama"
    answer = requests.post(hearth.api_url + "/chat/completions", json={**body, "model": "second"}, timeout=30)
    assert answer.json()["model"] == "second" and answer.headers["X-Hearth-Model"] == "second"
    page.get_by_role("tab", name="Model").click()
    choose(page, "Pool entry", "second")
    page.click("#model-unload")
    expect(page.locator("#model-status")).to_contain_text("Unloaded tiny-gpt2")
    gone = requests.post(hearth.api_url + "/chat/completions", json={**body, "model": "second"}, timeout=30)
    assert gone.status_code == 200 and gone.json()["model"] == "tiny-llama"  # --model: other names go to the default


@pytest.mark.browser
def test_restart_finds_the_conversation(hearth, browser, page, user_data, trap):
    from playwright.sync_api import expect

    open_ui(page, hearth.ui_url)
    set_parameters(page)
    set_mode(page, "chat")
    choose(page, "Character", "Example")
    page.click("#new-chat")
    wait_idle(page, lambda: user_texts(page) == [])
    send(page, "Remember the lantern")
    reply = bot_texts(page)[-1]
    chat_id = saved_chats(user_data, "chat", "Example")[-1]["id"]
    (user_data / "history" / "chat" / "Example" / "damaged.json").write_text('{"messages": [')
    hearth.stop(signal.SIGKILL)  # a crash: nothing is saved on the way out, so the chat must already be on disk
    hearth.start()
    page.goto("about:blank")
    open_ui(page, hearth.ui_url)
    set_mode(page, "chat")
    choose(page, "Character", "Example")
    assert user_texts(page) == ["Remember the lantern"] and bot_texts(page)[-1] == reply
    expect(page.locator("#history-notice")).to_contain_text("damaged.json")  # reported, not fatal
    assert page.input_value("#history input").startswith(chat_id)
    page.fill("#history-name textarea, #history-name input", "Lantern talk")
    page.click("#history-rename")
    expect(page.locator("#history input")).to_have_value(re.compile("^Lantern talk"))
    renamed = user_data / "history" / "chat" / "Example" / "Lantern talk.json"
    assert renamed.is_file()
    page.click("#history-delete")
    page.click("#history-delete-confirm")
    wait_idle(page, lambda: not renamed.exists())
    assert "Remember the lantern" not in user_texts(page)
    assert trap.seen == []


@pytest.fixture(scope="module")
def demo_hearth(trap, tmp_path_factory):
    """`python server.py --api` as a newcomer starts it: no --model and an empty models folder (the demo model)."""
    _require_browser()
    settings = tmp_path_factory.mktemp("demo-settings") / "settings.yaml"
    settings.write_text(f"chat:\n  user_data_dir: {json.dumps(str(tmp_path_factory.mktemp('demo-user-data')))}\n")
    args = ["--model-dir", str(tmp_path_factory.mktemp("empty-models")), "--settings", str(settings),
            "--listen-port", "0", "--api", "--api-port", "0"]  # fmt: skip
    server = Hearth(args, trap.env())
    yield server
    assert server.stop() == 0, "".join(server.output[-30:])
    assert trap.seen == [], f"the server tried to reach the internet: {trap.seen}"


@pytest.mark.browser
def test_demo_model_answers_in_browser(demo_hearth, page):
    """The issue's "done when": a fresh start answers "What is 17 + 25?" with 42 in the browser and over the API."""
    from playwright.sync_api import expect

    assert any("serving the built-in demo model hearth-demo" in line for line in demo_hearth.output)
    open_ui(page, demo_hearth.ui_url)
    expect(page.locator("#context-info")).to_contain_text("hearth-demo")
    page.get_by_role("tab", name="Parameters").click()  # the model's generation_config asks for greedy decoding
    expect(page.locator("#params-status")).to_contain_text("hearth-demo's generation_config: temperature 0")
    assert page.locator("#temperature input[type=number]").input_value() == "0"
    page.get_by_role("tab", name="Chat").click()
    send(page, "What is 17 + 25?")  # instruct mode, the default
    assert user_texts(page) == ["What is 17 + 25?"] and bot_texts(page) == ["42"]
    send(page, "Reverse the words: red green blue")  # a second question in the same chat
    assert bot_texts(page)[-1] == "blue green red"
    send(page, "Who are you?")
    assert bot_texts(page)[-1].startswith("I am hearth-demo")
    if os.environ.get("HEARTH_SCREENSHOT") == "1":
        page.screenshot(path=str(SCREENSHOT))
    body = {"messages": [{"role": "user", "content": "What is 17 + 25?"}]}
    answer = requests.post(demo_hearth.api_url + "/chat/completions", json=body, timeout=30).json()
    assert answer["model"] == "hearth-demo" and answer["choices"][0]["message"]["content"] == "42"
    set_mode(page, "chat")  # the Assistant character greets; the reply loses the space after "AI:"
    assert bot_texts(page) == ["Hello! What can I do for you?"]
    send(page, "What is 17 + 25?")
    assert bot_texts(page)[-1] == "42"
