"""The web router on its own (no Ray): pages, assets, headers, and that every file a page references exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.web import CSP, STATIC_DIR, router


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


@pytest.mark.parametrize("path, script", [("/", "/static/chat.js"), ("/status", "/static/status.js")])
def test_pages_are_html_with_their_script_and_headers(client, path, script):
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert f'src="{script}"' in r.text
    assert r.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name, kind", [("chat.js", "text/javascript"), ("markdown.js", "text/javascript"),
                                        ("style.css", "text/css")])
def test_assets_have_content_types_and_revalidate(client, name, kind):
    r = client.get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(kind)
    assert r.headers["cache-control"] == "no-cache"
    assert r.content == (Path(STATIC_DIR) / name).read_bytes()
    again = client.get(f"/static/{name}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_head_is_answered_without_a_body(client):
    r = client.head("/static/style.css")
    assert r.status_code == 200 and r.content == b""


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/../web.py", "/static/%2e%2e/web.py",
                                  "/static/..%2fweb.py", "/static/", "/static/a%00b"])
def test_unknown_or_escaping_paths_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "def " not in r.text  # never the source of a module outside static/


def test_only_get_and_head(client):
    assert client.post("/static/style.css").status_code == 405


def _references() -> list[tuple[str, str]]:
    """(file, referenced /static/ name) for every src/href in the pages and every import in the scripts."""
    refs = []
    for f in sorted(Path(STATIC_DIR).iterdir()):
        text = f.read_text()
        refs += [(f.name, m) for m in re.findall(r'(?:src|href)="/static/([^"]+)"', text)]
        refs += [(f.name, m) for m in re.findall(r'from "/static/([^"]+)"', text)]
    return refs


def test_every_referenced_asset_exists_and_is_served(client):
    refs = _references()
    assert {name for _, name in refs} >= {"chat.js", "status.js", "style.css", "markdown.js", "sse.js", "api.js",
                                          "series.js", "charts.js"}
    for source, name in refs:
        assert client.get(f"/static/{name}").status_code == 200, f"{source} references missing /static/{name}"


def test_scripts_never_write_html():
    """The pages build DOM with textContent only: no HTML parsing sinks anywhere in the shipped scripts."""
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|createContextualFragment"
                       r"|\beval\(|new Function")
    for f in Path(STATIC_DIR).glob("*.js"):
        assert not sinks.search(f.read_text()), f"{f.name} uses an HTML/script sink"
