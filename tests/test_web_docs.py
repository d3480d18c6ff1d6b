"""The API documentation (/docs: Swagger UI) is served from the fastapi-offline package's files, behind the same
guard and credentials as the API, and renders the API's operations in a real headless Chromium with no request
leaving 127.0.0.1 (the daemon may have no internet, and the page holds the API's credentials).

Footage: Intel IoT DevKit sample videos (CC BY 4.0) in ../shared/data/videos.
"""
from __future__ import annotations

import base64
import re
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import pytest

from monitor.web.app import DOCS_ASSETS, ROUTES
from testkit.chromium import Browser, Page
from tests.webapp import Served, file_camera, make_config, request
from tests.webapp import demo_weights as build_demo_weights

USER = "admin"
PASSWORD = "docs-Pässwort 7"
GOOD = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
DOC_PATHS = ["/docs", "/docs/oauth2-redirect", "/openapi.json",
             *(f"{DOCS_ASSETS}/{name}" for name in ASSETS)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("docs")
    (tmp / "password").write_text(PASSWORD + "\n", encoding="utf-8")
    cfg = make_config(tmp, build_demo_weights(tmp_path_factory.getbasetemp()), [file_camera(videos_dir, "cam1")],
                      server={"auth": {"mode": "basic", "username": USER, "password_file": str(tmp / "password"),
                                       "max_failures": 0}})
    with Served(cfg, wait=False) as s:
        yield s


def _package_file(name: str) -> bytes:
    return resources.files("fastapi_offline").joinpath("static", name).read_bytes()


def test_docs_and_their_assets_are_routes_of_the_guard() -> None:
    for path in DOC_PATHS:
        route = next((r for r in ROUTES if r.pattern.match(path)), None)
        assert route is not None and route.methods == ("GET", "HEAD"), (path, route)
    assert not any(r.pattern.match("/docs/other") for r in ROUTES)
    # no ReDoc: its bundle fetches its logo from cdn.redoc.ly (this test's first version caught it in Chromium)
    assert not any(r.pattern.match("/redoc") for r in ROUTES)


def test_docs_need_credentials_when_auth_is_on(served: Served) -> None:
    port = served.port
    for path in DOC_PATHS:
        for method in ("GET", "HEAD"):
            refused = request(port, method, path)
            assert refused.status == 401, (method, path, refused)
            assert refused.headers["WWW-Authenticate"].startswith("Basic "), (method, path)
            assert request(port, method, path, headers={"Authorization": "Basic eDp5"}).status == 401, (method, path)
            ok = request(port, method, path, headers=GOOD)
            assert ok.status == 200, (method, path, ok)
            assert ok.body == b"" if method == "HEAD" else ok.body, (method, path)
    for name in ASSETS:                 # the package's own files, as they are
        assert request(port, "GET", f"{DOCS_ASSETS}/{name}", headers=GOOD).body == _package_file(name), name
    missing = request(port, "GET", f"{DOCS_ASSETS}/nope.js", headers=GOOD)
    assert missing.status == 404 and missing.json() == {"error": "Not Found"}, missing
    assert request(port, "POST", "/docs", b"", GOOD).status == 405


def _references(html: str) -> list[str]:
    """Every URL the documentation page names: src=, href=, and the spec's URL in the page's script."""
    return re.findall(r'(?:src|href)="([^"]*)"', html) + re.findall(r"url: '([^']*)'", html)


def test_docs_page_names_only_local_files(served: Served) -> None:
    html = request(served.port, "GET", "/docs", headers=GOOD).body.decode()
    assert set(_references(html)) == {*(f"{DOCS_ASSETS}/{name}" for name in ASSETS), "/openapi.json"}, html
    assert not re.search(r"https?:|[\"'(]//", html), html      # no absolute or scheme-relative URL
    # Swagger UI's validator badge would send the API's description to validator.swagger.io
    assert '"validatorUrl": null' in html


def _requests(browser: Browser, page: Page) -> list[str]:
    return [ev["params"]["request"]["url"] for ev in list(browser.events)
            if ev.get("sessionId") == page.session and ev.get("method") == "Network.requestWillBeSent"]


def _open(browser: Browser, url: str) -> Page:
    page = browser.page("about:blank")
    page.send("Network.enable")
    # the browser's own Basic credentials for every request of the page (the spec's fetch too)
    page.send("Network.setExtraHTTPHeaders", {"headers": GOOD})
    page.navigate(url)
    return page


def _operations(served: Served) -> list[tuple[str, str, Any]]:
    spec = request(served.port, "GET", "/openapi.json", headers=GOOD).json()
    return [(method.upper(), path, op.get("summary")) for path, ops in spec["paths"].items()
            for method, op in ops.items()]


def test_docs_render_every_operation_in_chromium_with_no_request_leaving(served: Served, tmp_path: Path) -> None:
    operations = _operations(served)
    assert len(operations) >= 15
    origin = f"http://127.0.0.1:{served.port}/"
    with Browser(tmp_path) as browser:
        swagger = _open(browser, f"{origin}docs")
        shown = swagger.wait(f"document.querySelectorAll('.opblock').length >= {len(operations)} && "
                             "[...document.querySelectorAll('.opblock')].map((b) => "
                             "b.querySelector('.opblock-summary-method').textContent + ' ' + "
                             "b.querySelector('.opblock-summary-path').getAttribute('data-path'))", timeout=20)
        assert shown and sorted(shown) == sorted(f"{m} {p}" for m, p, _ in operations), shown
        # a query model documented as parameters: /api/events' camera, since and limit
        swagger.click('#operations-default-events_api_events_get .opblock-summary-control')
        names = swagger.wait("[...document.querySelectorAll('#operations-default-events_api_events_get "
                             ".parameter__name')].map((e) => e.textContent.trim())", timeout=10)
        assert names and {"camera", "since", "limit"} <= {n.split()[0] for n in names}, names
        assert swagger.errors() == []
        urls = _requests(browser, swagger)
    assert browser.events_dropped == 0
    elsewhere = [u for u in urls if not u.startswith(origin) and urllib.parse.urlsplit(u).scheme not in
                 ("data", "blob")]
    assert not elsewhere, elsewhere
    fetched = {urllib.parse.urlsplit(u).path for u in urls}
    assert {"/docs", "/openapi.json", f"{DOCS_ASSETS}/swagger-ui-bundle.js", f"{DOCS_ASSETS}/swagger-ui.css"} <= fetched
    print(f"\n/docs: {len(operations)} operations rendered; {len(urls)} requests, all to {origin}")


def test_openapi_documents_every_query_parameter_and_answers_400_not_422(served: Served) -> None:
    spec = request(served.port, "GET", "/openapi.json", headers=GOOD).json()
    query = {(method.upper(), path): sorted(p["name"] for p in op.get("parameters", []) if p["in"] == "query")
             for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert {k: v for k, v in query.items() if v} == {
        ("GET", "/api/events"): ["camera", "lang", "limit", "scope", "since"], ("POST", "/api/classify"): ["explain", "lang"],
        ("GET", "/api/status"): ["lang"],
        ("POST", "/api/cameras/{camera}/label"): ["class", "head"], ("POST", "/api/events/{event_id}/label"): ["right"],
        ("POST", "/api/cameras/{camera}/heatmap"): ["on"]}
    limit = next(p for p in spec["paths"]["/api/events"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["minimum"] == 1 and limit["schema"]["maximum"] == 1000 and limit["description"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            # FastAPI's 422 is never answered: a request it cannot validate gets 400 {"error": ...}
            assert "HTTPValidationError" not in str(op["responses"]), (method, path)
            if any(p["in"] == "query" for p in op.get("parameters", [])):
                assert op["responses"]["400"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"}, (method, path)
