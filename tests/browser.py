"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright.

Playwright is pointed at the system executable, so no browser build is ever downloaded. Where no
chromium is installed (``make test`` installs it as root with apt-get), the tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CANDIDATES = ("chromium", "chromium-browser", "/usr/lib/chromium/chromium")


def chromium_executable() -> str | None:
    """Path of the system Chromium (``ADBANDIT_CHROMIUM`` overrides), or None."""
    override = os.environ.get("ADBANDIT_CHROMIUM")
    if override:
        return override if os.path.exists(override) else None
    for name in CANDIDATES:
        path = shutil.which(name) or (name if os.path.isabs(name) and os.path.exists(name) else None)
        if path:
            return path
    return None


@contextmanager
def chromium_page(viewport: tuple[int, int] = (1280, 900)) -> Iterator[object]:
    """A fresh Playwright page in headless system Chromium; skips the test when none is installed."""
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no chromium installed (make test installs Debian's chromium with apt-get as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            yield page
        finally:
            browser.close()
