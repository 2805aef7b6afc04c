"""The built book: strict build from the committed runs, offline assets, and a real browser look."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import browser
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


def _toc_pages() -> list[str]:
    toc = (ROOT / "_toc.yml").read_text()
    return [re.search(r"root: (\S+)", toc).group(1)] + re.findall(r"file: (\S+)", toc)


def test_no_temporary_run_folders_in_the_html(built):
    from test_runs_published import TMP_RUN

    for page in built.rglob("*.html"):
        hits = TMP_RUN.findall(page.read_text(errors="ignore"))
        assert not hits, f"{page.relative_to(built)} mentions temporary run folders: {hits[:3]}"


def test_every_page_renders_in_a_real_browser(built):
    """Each page of the book, as a reader gets it: the sidebar, no console errors, every image loaded
    with a real width, as many images on a chapter page as its executed notebook holds, and code
    that wraps instead of scrolling sideways. Screenshots land in test-artifacts/."""
    from test_runs_published import image_outputs

    ARTIFACTS.mkdir(exist_ok=True)
    drv = browser.driver()
    counts = {}
    try:
        with browser.serve(built) as base:
            for page in _toc_pages():
                seen = browser.look(drv, f"{base}/{page}.html")
                assert seen["sidebar"], f"{page}: the sidebar is missing"
                notebook = ROOT / f"{page}.ipynb"
                want = image_outputs(notebook) if notebook.is_file() else 0
                if notebook.is_file():
                    assert want >= 1, f"{page}: its executed notebook holds no figure"
                browser.assert_readable(seen, page, min_images=want)
                counts[page] = len(seen["images"])
                drv.save_screenshot(str(ARTIFACTS / (page.replace("/", "_") + ".png")))
    finally:
        drv.quit()
    (ARTIFACTS / "images_per_page.txt").write_text("".join(f"{n}\t{p}\n" for p, n in counts.items()))
