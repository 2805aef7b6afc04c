"""A headless Chromium looking at a built book (shared by the browser tests)."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import socketserver
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest


def driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("headless Chromium is required: `make test` installs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1600"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on a loopback port; yields the base URL."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()


def look(drv, url: str) -> dict:
    """Open ``url`` and report what a reader gets: images (src, loaded, natural width), whether the
    sidebar is there, the page's widest horizontal overflow of code cells, and severe console errors."""
    drv.get(url)
    drv.implicitly_wait(2)
    drv.execute_script("return new Promise(r => { if (document.readyState === 'complete') r(); "
                       "else window.addEventListener('load', () => r()); })")
    images = drv.execute_script(
        "return Array.from(document.querySelectorAll('article img, main img'))"
        ".map(i => [i.src, i.complete, i.naturalWidth])")
    overflow = drv.execute_script(
        "return Math.max(0, ...Array.from(document.querySelectorAll('div.cell pre'))"
        ".map(p => p.scrollWidth - p.clientWidth))")
    sidebar = bool(drv.find_elements("css selector", ".bd-sidebar-primary, #pst-primary-sidebar, nav.bd-links"))
    errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    return {"images": images, "overflow": overflow, "sidebar": sidebar, "errors": errors}


def assert_readable(seen: dict, page: str, *, min_images: int = 0) -> None:
    """What every page must give a reader: its images loaded with a real width (at least
    ``min_images`` of them), no severe console errors, and code that does not scroll sideways."""
    broken = [src for src, done, width in seen["images"] if not done or width == 0]
    assert not broken, f"{page}: images that did not load: {broken}"
    assert len(seen["images"]) >= min_images, f"{page}: {len(seen['images'])} images shown, expected {min_images}"
    assert not seen["errors"], f"{page}: {seen['errors']}"
    assert seen["overflow"] <= 2, f"{page}: a code cell scrolls sideways by {seen['overflow']} px"
