"""The browser UI with a serving file: the chat answered by an API model (another Hearth upstream), and the
Compare tab (two arms of a split side by side, names hidden until the vote, the vote in the preference log)."""
from __future__ import annotations

import json

import pytest
import requests
import yaml

from test_ui_browser import Hearth, choose, open_ui, send, bot_texts, set_parameters, wait_idle  # noqa: F401
from test_ui_browser import browser, page, trap  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def pool_hearth(models_root, api, trap, tmp_path_factory):  # noqa: F811
    from test_ui_browser import _require_browser

    _require_browser()
    folder = tmp_path_factory.mktemp("compare")
    log = folder / "preferences.jsonl"
    serving = {"models": {"llama": {"model": "tiny-llama"}, "gpt2": {"model": "tiny-gpt2"},
                          "cloud": {"device": "api", "base_url": api.base_url + "/v1"},
                          "ab": {"split": {"llama": 1, "gpt2": 1}}},
               "default": "llama", "preference_log": str(log)}  # fmt: skip
    (folder / "serving.yaml").write_text(yaml.safe_dump(serving))
    (folder / "settings.yaml").write_text(f"chat:\n  user_data_dir: {json.dumps(str(folder / 'user'))}\n")
    args = ["--model-dir", str(models_root), "--serve", str(folder / "serving.yaml"), "--settings",
            str(folder / "settings.yaml"), "--listen-port", "0", "--api", "--api-port", "0", "--threads", "1"]
    server = Hearth(args, trap.env())
    server.log = log
    yield server
    assert server.stop() == 0, "".join(server.output[-30:])


@pytest.mark.browser
def test_chat_with_an_api_model(pool_hearth, page):  # noqa: F811
    from playwright.sync_api import expect

    open_ui(page, pool_hearth.ui_url)
    set_parameters(page, max_new_tokens=6)
    choose(page, "Model", "cloud")
    send(page, "Hello there")
    assert bot_texts(page)[-1].strip()
    expect(page.locator("#context-info")).to_contain_text("Answered by cloud through its upstream API")


@pytest.mark.browser
def test_compare_tab_hides_names_until_the_vote_and_records_it(pool_hearth, page):  # noqa: F811
    from playwright.sync_api import expect

    open_ui(page, pool_hearth.ui_url)
    set_parameters(page, max_new_tokens=6)
    page.get_by_role("tab", name="Compare").click()
    page.fill("#arena-prompt textarea", "Name a colour")
    page.click("#arena-compare")
    expect(page.locator("#vote-0")).to_be_enabled(timeout=60_000)
    shown = page.locator("#arena-a").inner_text() + page.locator("#arena-b").inner_text()
    assert "llama" not in shown and "gpt2" not in shown and shown.strip()
    page.click("#vote-0")
    expect(page.locator("#arena-reveal")).to_contain_text("Model A was", timeout=30_000)
    expect(page.locator("#vote-0")).to_be_disabled()
    record = json.loads(pool_hearth.log.read_text().splitlines()[-1])
    assert record["type"] == "comparison" and record["winner"] == "model_a"
    assert sorted([record["model_a"], record["model_b"]]) == ["gpt2", "llama"]
    assert record["messages"] == [{"role": "user", "content": "Name a colour"}]
    revealed = page.locator("#arena-reveal").inner_text()
    assert f"Model A was {record['model_a']}" in revealed.replace("*", "")
    page.click("#arena-export")
    link = page.locator("#arena-file a[href$='preferences-trl.jsonl']")
    expect(link).to_have_count(1, timeout=30_000)
    pairs = [json.loads(line) for line in requests.get(link.get_attribute("href"), timeout=10).content.decode().splitlines()]
    assert {"prompt": record["messages"], "chosen": [{"role": "assistant", "content": record["response_a"]}],
            "rejected": [{"role": "assistant", "content": record["response_b"]}]} in pairs
