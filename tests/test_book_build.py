"""The built book: strict build from the committed runs, offline assets, and a real browser look."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from emolib.book import build_book

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    index = build_book(output=out)
    assert index.is_file()
    return index.parent


def test_every_toc_page_is_built(built):
    toc = (ROOT / "_toc.yml").read_text()
    for f in re.findall(r"file: (\S+)", toc) + [re.search(r"root: (\S+)", toc).group(1)]:
        assert (built / f"{f}.html").is_file(), f


def test_no_external_scripts_or_stylesheets(built):
    pattern = re.compile(r"<(?:script|link)[^>]+(?:src|href)=[\"'](?:https?:)?//", re.I)
    for page in built.rglob("*.html"):
        bad = pattern.findall(page.read_text(errors="ignore"))
        assert not bad, f"{page.relative_to(built)} loads external assets: {bad[:3]}"
    assert (built / "_static" / "mathjax" / "tex-svg.js").is_file()


def test_numbers_in_prose_come_from_the_runs(built):
    html = (built / "book" / "intro.html").read_text()
    assert "problematic" not in html  # a missing metric would render as a problematic node


def _driver():
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


@pytest.mark.parametrize("page", ["book/intro.html", "book/runs/gemma-3-270m/02_extraction.html"])
def test_page_renders_in_a_real_browser(built, page):
    import http.server
    import socketserver
    import threading
    from functools import partial

    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(built))
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        driver = _driver()
        try:
            driver.get(f"http://127.0.0.1:{httpd.server_address[1]}/{page}")
            driver.implicitly_wait(2)
            assert driver.find_elements("css selector", ".bd-sidebar-primary, #pst-primary-sidebar, nav.bd-links"), \
                "the sidebar is missing"
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.src, i.complete, i.naturalWidth])")
            broken = [src for src, done, width in images if not done or width == 0]
            assert not broken, f"images that did not load: {broken}"
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / (page.replace("/", "_") + ".png")))
        finally:
            driver.quit()
            httpd.shutdown()
