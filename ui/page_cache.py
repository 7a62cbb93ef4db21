"""The page, built once per address it is reached at, instead of once per visit.

Gradio builds the page's HTML for every `GET /` in pure Python (gradio/routes.py `main`: a deep copy of the
config, the root URL written into it, the API description, a megabyte of JSON through a template). Here that took
0.10 s at the median per visit, holding the GIL, so a crowd arriving at once slowed every running request, and a
page checked every 0.1 s took half the server. What it builds depends only on the blocks, which do not change
after launch (this app has no `gr.render`), and on the address the page was asked for (`get_root_url`: the URL's
scheme, host and path, `x-forwarded-host` and `x-forwarded-proto`, the ASGI root path), so one answer per address
is kept. Deep links (`?deep_link=`) load a session's state and are always built afresh, as are answers that set
a cookie (a login) and anything but a plain 200.

It sits inside Gradio's own middleware (passed to FastAPI's constructor through `launch(app_kwargs=...)`), so
compression and CORS still apply to every answer.
"""

from __future__ import annotations

from collections import OrderedDict

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_PATHS = ("/",)
# Each kept page is about 1 MB; addresses come from request headers, so their number must be bounded.
MAX_ADDRESSES = 16
ADDRESS_HEADERS = (b"host", b"x-forwarded-host", b"x-forwarded-proto")


class PageCache:
    """ASGI middleware: answers `GET /` from the pages already built for the same address."""

    def __init__(self, app: ASGIApp, max_addresses: int = MAX_ADDRESSES) -> None:
        self.app = app
        self.max_addresses = max_addresses
        self.pages: OrderedDict[tuple, list[Message]] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = page_key(scope)
        if key is None:
            return await self.app(scope, receive, send)
        kept = self.pages.get(key)
        if kept is not None:
            self.pages.move_to_end(key)
            for message in kept:
                await send(message)
            return None
        messages: list[Message] = []

        async def send_and_keep(message: Message) -> None:
            messages.append(message)
            await send(message)

        await self.app(scope, receive, send_and_keep)
        if cacheable(messages):
            self.pages[key] = messages
            while len(self.pages) > self.max_addresses:
                self.pages.popitem(last=False)
        return None


def page_key(scope: Scope) -> tuple | None:
    """What the built page depends on, or None for a request whose answer is not kept."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in PAGE_PATHS:
        return None
    query = scope.get("query_string", b"")
    if b"deep_link" in query:
        return None
    headers = dict(scope.get("headers", ()))
    return (
        scope["path"], query, scope.get("scheme"), scope.get("root_path", ""), tuple(scope.get("server") or ()),
        *(headers.get(name) for name in ADDRESS_HEADERS),
    )


def cacheable(messages: list[Message]) -> bool:
    """A complete 200 answer in one body message that sets no cookie."""
    if len(messages) != 2 or messages[0]["type"] != "http.response.start" or messages[0]["status"] != 200:
        return False
    if any(name.lower() == b"set-cookie" for name, _ in messages[0].get("headers", ())):
        return False
    body = messages[1]
    return body["type"] == "http.response.body" and not body.get("more_body", False)


def page_cache() -> Middleware:
    """For `launch(app_kwargs={"middleware": [page_cache()]})`."""
    return Middleware(PageCache)
