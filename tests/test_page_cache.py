"""The page is built once per address: later visits get the same bytes without Gradio building it again, and a
visit through another address (a proxy's forwarded host) gets a page that names its own root."""

from __future__ import annotations

import urllib.request

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ui.page_cache import PageCache


def counting_app(max_addresses: int = 16) -> tuple[TestClient, list[str]]:
    """A page that says which host it was built for, and a log of every build."""
    built: list[str] = []

    def page(request: Request) -> HTMLResponse:
        built.append(request.url.query)
        host = request.headers.get("x-forwarded-host", request.url.hostname)
        answer = HTMLResponse(f"root: {host}, build {len(built)}")
        if "login" in request.url.query:
            answer.set_cookie("access-token", "secret")
        return answer

    def failing(request: Request) -> PlainTextResponse:
        built.append("failing")
        return PlainTextResponse("no", status_code=500)

    app = Starlette(
        routes=[Route("/", page, methods=["GET", "POST"]), Route("/other", failing)],
        middleware=[Middleware(PageCache, max_addresses=max_addresses)],
    )
    return TestClient(app), built


def test_a_second_visit_is_not_built_again():
    client, built = counting_app()
    first, second = client.get("/"), client.get("/")
    assert first.text == second.text == "root: testserver, build 1"
    assert len(built) == 1


def test_each_address_gets_its_own_page():
    client, built = counting_app()
    proxied = client.get("/", headers={"x-forwarded-host": "example.org"})
    direct = client.get("/")
    assert proxied.text == "root: example.org, build 1"
    assert direct.text == "root: testserver, build 2"
    assert client.get("/", headers={"x-forwarded-host": "example.org"}).text == proxied.text
    assert len(built) == 2


def test_deep_links_logins_posts_and_failures_are_built_every_time():
    client, built = counting_app()
    for _ in range(2):
        client.get("/?deep_link=abc")
        client.get("/?login=1")
        client.post("/")
        client.get("/other")
    assert built.count("deep_link=abc") == 2
    assert built.count("login=1") == 2
    assert built.count("failing") == 2
    assert len(built) == 8


def test_addresses_kept_are_bounded():
    client, built = counting_app(max_addresses=2)
    for host in ("a", "b", "c", "a"):
        client.get("/", headers={"x-forwarded-host": host})
    assert built == [""] * 4  # "a" was pushed out by "c", so it was built again


def test_the_served_page_names_the_address_it_was_reached_at(app_url):
    """Through `python app.py`: a proxied visit after a direct one still gets its proxy's root."""
    urllib.request.urlopen(app_url).read()
    request = urllib.request.Request(app_url, headers={"X-Forwarded-Host": "studio.example.org",
                                                       "X-Forwarded-Proto": "https"})
    page = urllib.request.urlopen(request).read().decode()
    assert "https://studio.example.org" in page
    assert "127.0.0.1" not in page
