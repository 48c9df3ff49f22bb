"""The chat and status pages in headless Chromium against the session's real Tide (Ray + Serve + vLLM):
a streamed answer grows on screen, Stop aborts it in the engine, and the status page shows the replica.
Screenshots go to test-artifacts/web/ (kept by CI as artifacts, ignored by git)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "web"
CHROMIUM = os.environ.get("TIDE_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright; CI sets TIDE_REQUIRE_BROWSER=1 so a missing one fails, not skips."""
    required = bool(os.environ.get("TIDE_REQUIRE_BROWSER"))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        (pytest.fail if required else pytest.skip)("playwright is not installed (pip install -e '.[test]')")
    if not shutil.which(CHROMIUM):
        (pytest.fail if required else pytest.skip)(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"script errors in the page: {errors}"


def _status(page) -> dict:
    """/tide/status as the page itself fetches it (same origin, same API key)."""
    return page.evaluate("""async () => {
      const { apiFetch } = await import('/static/api.js');
      const r = await apiFetch('/tide/status', { cache: 'no-store' });
      return r.json();
    }""")


def _engine_counters(page, model: str) -> dict[str, float]:
    """The model's generated tokens and aborted requests from `/metrics` (summed over its replicas)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = page.evaluate("""async () => {
      const { apiFetch } = await import('/static/api.js');
      return (await apiFetch('/metrics', { cache: 'no-store' })).text();
    }""")
    out = {"vllm:generation_tokens_total": 0.0, "tide_requests_aborted_total": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in out and sample.labels.get("model_name") == model:
                out[sample.name] += sample.value
    return out


def _wait(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_chat_streams_stops_in_the_engine_and_status_shows_the_replica(tide_url, page, model_name):
    sent = []

    def no_eos(route, request):
        # The tiny model is random: it may emit EOS at any token. Ask the engine to ignore EOS so the answer is
        # still running when Stop is pressed (the page sends everything else itself).
        body = json.loads(request.post_data)
        sent.append(body)
        route.continue_(post_data=json.dumps({**body, "ignore_eos": True}))

    page.route("**/v1/chat/completions", no_eos)
    page.goto(f"{tide_url}/")
    page.wait_for_selector(f"#model option[value='{model_name}']", state="attached")
    page.select_option("#model", model_name)
    page.click(".settings summary")
    page.fill("#max-tokens", "960")
    page.dispatch_event("#max-tokens", "change")
    before = _engine_counters(page, model_name)
    page.fill("#prompt", "Write a long story about **tides**.")
    page.press("#prompt", "Enter")

    msg = page.locator(".msg.assistant").last
    # Record every length the answer shows, in the page itself (a round trip per look would miss steps).
    page.wait_for_selector(".msg.assistant[data-state=streaming]")
    # (page.evaluate, not wait_for_function: the page's CSP forbids the eval that a string predicate needs)
    page.evaluate("""() => new Promise((resolve, reject) => {
      window.__lengths = [];
      const msg = [...document.querySelectorAll('.msg.assistant')].at(-1);
      new MutationObserver(() => {
        const n = +msg.dataset.chars;
        if (n && n !== window.__lengths.at(-1)) window.__lengths.push(n);
        if (window.__lengths.length >= 4) resolve();
        else if (msg.dataset.state !== 'streaming') reject(new Error('ended before Stop: ' + msg.dataset.state));
      }).observe(msg, { attributes: true, attributeFilter: ['data-chars', 'data-state'] });
      setTimeout(() => reject(new Error('no streamed text after 60 s')), 60000);
    })""")
    page.click("#stop")
    lengths = page.evaluate("window.__lengths")
    assert lengths == sorted(set(lengths)) and len(lengths) >= 4  # text arrived in several steps, only growing
    page.wait_for_selector(".msg.assistant[data-state=stopped]", timeout=10_000)
    assert "stopped" in msg.locator(".meta").inner_text()
    assert page.locator("#send").is_visible() and page.locator("#stop").is_hidden()
    chars = int(msg.get_attribute("data-chars"))
    assert chars > 0 and msg.locator(".body").inner_text().strip()

    # Stop reached the engine: it counts an aborted request, nothing runs there any more, and it generated far
    # fewer than the 960 tokens it was asked for (EOS is ignored, so only an abort ends the request early).
    aborted = "tide_requests_aborted_total"
    _wait(lambda: _engine_counters(page, model_name)[aborted] > before[aborted], 20, "the engine to count the abort")
    _wait(lambda: _status(page)["models"][model_name].get("engine_running") == 0, 20, "the engine to drop the request")
    tokens = "vllm:generation_tokens_total"
    generated = _engine_counters(page, model_name)[tokens] - before[tokens]
    assert 0 < generated < 900, generated
    assert int(msg.get_attribute("data-chars")) == chars  # and nothing more reached the page
    assert sent[0]["stream"] is True and sent[0]["max_tokens"] == 960 and sent[0]["model"] == model_name

    # The conversation is kept: the next turn carries the stopped answer, and a short answer finishes normally.
    assert page.locator("#max-tokens").is_hidden()  # the settings popover closed when the page was used
    page.click(".settings summary")
    page.fill("#max-tokens", "12")
    page.dispatch_event("#max-tokens", "change")
    page.fill("#prompt", "And a short one?")
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-state=done]", timeout=60_000)
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]
    assert len(sent[1]["messages"][1]["content"]) > 0
    assert "cut at max tokens" in page.locator(".msg.assistant").last.locator(".meta").inner_text()
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)

    page.goto(f"{tide_url}/status")
    card = page.locator(f"[data-model='{model_name}']")
    page.wait_for_selector(f"[data-model='{model_name}'] .state[data-state=ready]", timeout=15_000)
    assert card.locator(".f-replicas").inner_text().startswith("1 /")
    chart = card.locator("canvas[data-chart=replicas]")
    _wait(lambda: int(chart.get_attribute("data-points")) >= 2, 15, "two samples on the replicas chart")
    assert page.locator("[data-model]").count() == len(_status(page)["models"])
    page.screenshot(path=str(ARTIFACTS / "status.png"), full_page=True)
