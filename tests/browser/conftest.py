"""One studio process (`python app.py`, the embedded model) for the whole browser suite, driven by Debian's
chromium through Playwright. Each test gets a fresh page; the screenshots of the last run stay in
`tests/browser/screenshots/` (git-ignored), one per check.

The app and the browser are module fixtures: every browser test lives in `test_page.py`, and the app's 1.2 GB
go when those tests end instead of idling through the rest of the suite.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"
VIEWPORT = {"width": 1280, "height": 900}
# Clicks and fills answer within a second; a generation on the embedded model within a few.
ACTION_TIMEOUT_MS = 30_000


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip("the browser suite drives Debian's chromium: apt-get install chromium (.ci/run does)")
    return CHROMIUM


@pytest.fixture(scope="session")
def studio_url(chromium, app_url) -> str:
    """The app the whole suite shares (`app_url`); without chromium the browser suite does not start it."""
    return app_url


@pytest.fixture(scope="module")
def browser_context(chromium, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
            accept_downloads=True,
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        yield context
        context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test, so the page fixture knows at teardown whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser_context, screenshot_folder, request):
    """A fresh page; when the test fails, the page as it was then is kept as `failed-<test>.png`."""
    page = browser_context.new_page()
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        name = re.sub(r"[^\w.-]+", "-", request.node.name)
        page.screenshot(path=screenshot_folder / f"failed-{name}.png", full_page=showing_no_message(page))
    page.close()


@pytest.fixture(scope="session")
def screenshot_folder() -> Path:
    """Emptied at the start of a run, so every file in it comes from this run."""
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir()
    return SCREENSHOTS


@pytest.fixture
def keep_screenshot(page, screenshot_folder):
    """`keep_screenshot(name)`: the page as it is now, saved as `<name>.png`."""

    def keep(name: str) -> Path:
        path = screenshot_folder / f"{name}.png"
        page.screenshot(path=path, full_page=showing_no_message(page))
        return path

    return keep


def showing_no_message(page) -> bool:
    """Chromium's full-page capture leaves out Gradio's fixed-position messages: with one showing, the window
    as the person sees it is kept instead."""
    return page.get_by_test_id("toast-body").count() == 0
