"""The pages' own logic in headless Chromium, without a cluster: the Markdown renderer (no HTML injection),
the SSE parser, the status history, and how the chat page shows API errors and sends the key.

The static files come from the real web router (through FastAPI's TestClient); API answers that a unit test
needs (401, 429, an in-band cold-start error) are canned HTTP responses."""

from __future__ import annotations

import json
import os
import shutil
import time
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.web import router

BASE = "http://tide.test"
CHROMIUM = os.environ.get("TIDE_CHROMIUM", "/usr/bin/chromium")


def launch_browser(p):
    """Debian's Chromium driven by Playwright; skipped only where CI does not require the browser."""
    if not shutil.which(CHROMIUM):
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("TIDE_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return p.chromium.launch(executable_path=CHROMIUM, headless=True)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("TIDE_REQUIRE_BROWSER"):
            pytest.fail("playwright is not installed (pip install -e '.[test]')")
        pytest.skip("playwright is not installed")
    with sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    app = FastAPI()
    app.include_router(router)
    files = TestClient(app)

    def serve(route, request):
        url = urlsplit(request.url)
        r = files.request(request.method, url.path)
        route.fulfill(status=r.status_code, headers=dict(r.headers), body=r.content)

    context = browser.new_context(base_url=BASE)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.route(f"{BASE}/**", serve)
    pg.route(f"{BASE}/v1/models", lambda route: route.fulfill(
        json={"object": "list", "data": [{"id": "tiny", "object": "model"}, {"id": "cold", "object": "model"}]}))
    yield pg
    context.close()
    assert not errors, f"script errors in the page: {errors}"


PAYLOADS = [
    "<script>window.__pwned = 1</script>",
    "<img src=x onerror=\"window.__pwned = 1\">",
    "**<img src=x onerror=window.__pwned=1>**",
    "[click](javascript:window.__pwned=1)",
    "[x](data:text/html,<script>alert(1)</script>)",
    "```\"><img src=x onerror=window.__pwned=1>\n<svg onload=window.__pwned=1>\n```",
    "``` onmouseover=x\ncode\n```",
    "`<iframe src=javascript:alert(1)>`",
    "> <a href=\"javascript:alert(1)\">q</a>\n- <b onclick=alert(1)>li</b>",
    "# <style>body{display:none}</style>",
    "https://example.com/\"onmouseover=\"alert(1)",
]
ALLOWED_TAGS = {"P", "BR", "STRONG", "EM", "CODE", "PRE", "A", "UL", "OL", "LI", "BLOCKQUOTE", "HR",
                "H3", "H4", "H5", "H6"}

RENDER = """async (text) => {
  const { renderMarkdown } = await import('/static/markdown.js');
  const host = document.createElement('div');
  host.append(renderMarkdown(text));
  document.body.append(host);           // live in the document, so handlers would fire if any existed
  await new Promise((r) => setTimeout(r, 50));
  const els = [...host.querySelectorAll('*')];
  const out = {
    tags: els.map((e) => e.tagName),
    attrs: els.flatMap((e) => [...e.attributes].map((a) => a.name + '=' + a.value)),
    hrefs: [...host.querySelectorAll('a')].map((a) => a.href),
    text: host.textContent, pwned: window.__pwned ?? null,
  };
  host.remove();
  return out;
}"""


@pytest.mark.parametrize("payload", PAYLOADS)
def test_markdown_never_turns_model_output_into_html(page, payload):
    page.goto("/")
    out = page.evaluate(RENDER, payload)
    assert set(out["tags"]) <= ALLOWED_TAGS, out["tags"]
    for attr in out["attrs"]:
        name = attr.split("=", 1)[0]
        assert name in {"href", "target", "rel", "class", "data-lang"}, attr
        assert not name.startswith("on")
    assert all(h.startswith(("http://", "https://")) for h in out["hrefs"]), out["hrefs"]
    assert out["pwned"] is None
    if "<" in payload:
        assert "<" in out["text"]  # the markup is still there, as visible text
    if "javascript:" in payload or "data:" in payload:
        assert out["hrefs"] == []


def test_markdown_renders_what_answers_use(page):
    page.goto("/")
    text = ("## Plan\nSome **bold**, *italic* and `x < y` here,\nnext line.\n\n"
            "```python\nif a < b:\n    print('<b>')\n```"
            "\n- one\n- two with [a link](https://example.com/docs)\n\n3. three\n4. four\n\n> quoted\n\n---\nend")
    html = page.evaluate("""async (text) => {
      const { renderMarkdown } = await import('/static/markdown.js');
      const host = document.createElement('div');
      host.append(renderMarkdown(text));
      return {
        tags: [...host.children].map((e) => e.tagName),
        code: host.querySelector('pre code').textContent, lang: host.querySelector('pre code').className,
        inline: host.querySelector('p code').textContent, strong: host.querySelector('strong').textContent,
        em: host.querySelector('em').textContent, items: [...host.querySelectorAll('li')].map((l) => l.textContent),
        link: [host.querySelector('a').href, host.querySelector('a').rel, host.querySelector('a').target],
        olStart: host.querySelector('ol').start, brs: host.querySelector('p').querySelectorAll('br').length,
      };
    }""", text)
    assert html["tags"] == ["H4", "P", "PRE", "UL", "OL", "BLOCKQUOTE", "HR", "P"]
    assert html["code"] == "if a < b:\n    print('<b>')"
    assert html["lang"] == "language-python"
    assert (html["inline"], html["strong"], html["em"]) == ("x < y", "bold", "italic")
    assert html["items"] == ["one", "two with a link", "three", "four"]
    assert html["link"] == ["https://example.com/docs", "noopener noreferrer nofollow", "_blank"]
    assert html["olStart"] == 3 and html["brs"] == 1


def test_unclosed_fence_mid_stream_is_code(page):
    page.goto("/")
    tags = page.evaluate("""async () => {
      const { renderMarkdown } = await import('/static/markdown.js');
      const f = renderMarkdown('look:\\n```js\\nconst a = 1;');
      return [...f.children].map((e) => e.tagName + ':' + e.textContent);
    }""")
    assert tags == ["P:look:", "PRE:const a = 1;"]


def test_sse_parser_handles_split_chunks_comments_and_crlf(page):
    page.goto("/")
    events = page.evaluate("""async () => {
      const { SSEParser } = await import('/static/sse.js');
      const p = new SSEParser();
      const out = [];
      for (const c of [': waiting for a replica of m (1s)\\n', '\\nda', 'ta: {"a":', '1}\\n\\n',
                       'data: x\\r\\ndata: y\\r\\n\\r\\n',
                       'data: [DONE]']) out.push(...p.feed(c));
      out.push(...p.end());
      return out;
    }""")
    assert events == [{"type": "comment", "text": "waiting for a replica of m (1s)"},
                      {"type": "data", "data": '{"a":1}'}, {"type": "data", "data": "x\ny"},
                      {"type": "data", "data": "[DONE]"}]


def test_status_history_keeps_the_window_and_prints_unknowns_as_dash(page):
    page.goto("/")
    out = page.evaluate("""async () => {
      const { History, formatValue, niceMax } = await import('/static/series.js');
      const h = new History(600);
      h.add(0, {running: 1, desired: null, tokens_per_s: 'x'});
      h.add(300, {running: 2, waiting: 3});
      h.add(650, {running: 1, ttft_p50_ms: 1234.5});
      return {
        ts: h.samples.map((s) => s.t), running: h.series('running').map((p) => p.v),
        desired: h.series('desired').map((p) => p.v), latest: h.latest().ttft_p50_ms,
        fmt: [formatValue('ttft_p50_ms', 1234.5), formatValue('ttft_p50_ms', 18.2), formatValue('tokens_per_s', null),
              formatValue('kv_cache_usage', 0.25), formatValue('waiting', undefined), formatValue('running', NaN)],
        nice: [niceMax(0), niceMax(0.3), niceMax(3), niceMax(7), niceMax(1234)],
      };
    }""")
    assert out["ts"] == [300, 650]  # the sample at t=0 fell out of the 600 s window
    assert out["running"] == [2, 1] and out["desired"] == [None, None] and out["latest"] == 1234.5
    assert out["fmt"] == ["1.23 s", "18 ms", "–", "25 %", "–", "–"]
    assert out["nice"] == [1, 0.5, 5, 10, 2000]


def _send(page, text="hi"):
    page.wait_for_selector("#model option[value=tiny]", state="attached")
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_selector(".msg.assistant:not([data-state=streaming])")
    return page.locator(".msg.assistant").last


def _error(route, status, code, message, typ, headers=None):
    route.fulfill(status=status, headers=headers or {},
                  json={"error": {"message": message, "type": typ, "param": None, "code": code}})


@pytest.mark.parametrize("status, code, typ, headers, words", [
    (401, "invalid_api_key", "authentication_error", {}, "needs a valid API key"),
    (429, "too_many_held_requests", "rate_limit_error", {"Retry-After": "7"}, "Try again in 7 seconds"),
    (503, "cold_start_timeout", "service_unavailable_error", {"Retry-After": "12"}, "still starting"),
    (404, "model_not_found", "invalid_request_error", {}, "is not served here"),
    (400, None, "invalid_request_error", {}, "rejected: max_tokens must be at least 1"),
])
def test_chat_shows_http_errors_in_words(page, status, code, typ, headers, words):
    page.route(f"{BASE}/v1/chat/completions",
               lambda route: _error(route, status, code, "max_tokens must be at least 1", typ, headers))
    page.goto("/")
    msg = _send(page)
    assert msg.get_attribute("data-state") == "error"
    assert words in msg.locator(".error-text").inner_text()
    assert page.locator(".msg.user.unsent").count() == 1  # the failed turn is not part of the conversation


def test_chat_shows_a_cold_start_then_an_in_band_error(page):
    body = (": waiting for a replica of cold (1s)\n\n"
            'data: {"error": {"message": "Model `cold` is starting and was not ready after 60s. Retry in 20s.", '
            '"type": "service_unavailable_error", "param": null, "code": "cold_start_timeout"}}\n\n')
    page.route(f"{BASE}/v1/chat/completions",
               lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    page.goto("/")
    msg = _send(page)
    assert msg.get_attribute("data-state") == "error"
    assert "still starting" in msg.locator(".error-text").inner_text()


def test_streamed_payload_is_shown_as_text_and_history_is_sent_back(page):
    deltas = ["Hello <img src=x onerror=\"window.__pwned=1\">", " and <script>window.__pwned=1</script>", " **ok**"]
    sent = []

    def stream(route, request):
        sent.append(json.loads(request.post_data))
        chunks = [{"choices": [{"index": 0, "delta": {"content": d}, "finish_reason": None}]} for d in deltas]
        chunks.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})
        route.fulfill(status=200, content_type="text/event-stream",
                      body="".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n")

    page.route(f"{BASE}/v1/chat/completions", stream)
    page.goto("/")
    msg = _send(page, "first")
    assert msg.get_attribute("data-state") == "done"
    body = msg.locator(".body")
    assert body.locator("img, script").count() == 0
    assert "<img src=x" in body.inner_text() and body.locator("strong").inner_text() == "ok"
    assert page.evaluate("window.__pwned ?? null") is None
    assert "3 tokens" in msg.locator(".meta").inner_text()
    _send(page, "second")
    assert [m["content"] for m in sent[1]["messages"]] == ["first", "".join(deltas), "second"]
    assert sent[0]["stream"] is True and sent[0]["model"] == "tiny"


def test_key_is_kept_and_sent_on_every_api_call(page):
    seen = []

    def record(route, request):
        seen.append((urlsplit(request.url).path, request.headers.get("authorization")))
        route.fallback()

    page.goto("/")
    page.fill("#api-key", "sk-test-1")
    page.dispatch_event("#api-key", "change")
    page.route(f"{BASE}/v1/chat/completions", lambda route: _error(route, 401, None, "bad key", "authentication_error"))
    page.route(f"{BASE}/v1/**", record)  # registered last, so it sees each call first and then falls back
    page.route(f"{BASE}/tide/status", lambda route, request: (
        seen.append(("/tide/status", request.headers.get("authorization"))),
        route.fulfill(json={"models": {"tiny": {"running": 1, "replicas": 1}}})))
    page.reload()  # the key survives a reload (localStorage)
    assert page.input_value("#api-key") == "sk-test-1"
    _send(page)
    page.goto("/status")
    page.wait_for_selector("[data-model=tiny] .state:text('ready')")
    paths = {p for p, _ in seen}
    assert {"/v1/models", "/v1/chat/completions", "/tide/status"} <= paths
    assert all(auth == "Bearer sk-test-1" for _, auth in seen), seen


def test_status_page_shows_numbers_dashes_decisions_and_drops_gone_models(page):
    polls = []

    def status(route):
        polls.append(1)
        models = {"tiny": {"state": "ready", "desired": 2, "running": 1, "replicas": 2, "held": 0,
                           "expected_start_s": 14.0, "waiting": 3, "engine_running": 5, "kv_cache_usage": 0.125,
                           "tokens_per_s": 812.25, "ttft_p50_ms": 23.4,
                           "last_decision": {"action": "scale_up", "reason": "demand 9 > 4", "time": 90.0}}}
        if len(polls) == 1:  # only the first answer has this one; later it is gone from the fleet
            models["old"] = {"running": 0, "replicas": 0, "held": 0, "expected_start_s": 20.0}
        route.fulfill(json={"time": 100.0, "models": models})

    page.route(f"{BASE}/tide/status", status)
    page.goto("/status")
    tiny = page.locator("[data-model=tiny]")
    page.wait_for_selector("[data-model=old] .state:text('scaled to zero')")
    assert page.locator("[data-model=old] .f-tokens_per_s").inner_text() == "–"  # unknown, not 0
    assert page.locator("[data-model=old] .f-replicas").inner_text() == "0 / –"
    assert tiny.locator(".f-replicas").inner_text() == "1 / 2"
    assert [tiny.locator(f".f-{f}").inner_text() for f in ("waiting", "engine_running", "tokens_per_s",
                                                           "ttft_p50_ms", "kv_cache_usage")] == \
        ["3", "5", "812", "23 ms", "13 %"]
    assert tiny.locator(".decision").inner_text() == "Last autoscaler decision 10 s ago: scale_up (demand 9 > 4)"
    page.wait_for_selector("[data-model=old]", state="detached", timeout=6000)
    page.wait_for_selector("[data-model=tiny] canvas[data-chart=replicas]:not([data-points='0'])")
    chart = tiny.locator("canvas[data-chart=replicas]")
    deadline = time.monotonic() + 10
    while int(chart.get_attribute("data-points")) < 4 and time.monotonic() < deadline:  # 2 lines x 2 polls
        page.wait_for_timeout(200)
    assert int(chart.get_attribute("data-points")) >= 4
    assert tiny.locator("canvas").count() == 4
    assert page.locator("#notice").is_hidden()
