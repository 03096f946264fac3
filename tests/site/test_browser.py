"""A real browser reads every page: headless Chromium, served from 127.0.0.1.

Fails on JavaScript errors (console errors and uncaught exceptions), failed requests,
broken images, broken internal links (missing pages or anchors), unrendered math,
a number of visible search boxes other than one, and, at 1280 px, on any code block,
output, table, displayed equation or API signature wider than its box and on any notebook
figure whose smallest text is shown under 9 px (tests/site/layout.py), and at 390 px on a
page wider than the screen,
and saves a screenshot of every page under _build/screenshots/.

Without Chromium the check is skipped with a message; with CI=true it is never skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest

from tests.site.layout import (
    CODE_COLUMNS_JS,
    FIGURES_JS,
    MIN_FIGURE_TEXT_PX,
    OVERFLOW_JS,
    figure_text_px,
    notebook_figures,
)
from tests.site.pages import ROOT, html_pages

SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # The machine's network is closed: keep Chromium from dialling out on its own.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Console errors we accept, each with the reason. Keep this empty unless a cause cannot
# be fixed in the book itself.
ALLOWED_CONSOLE_ERRORS: dict[str, str] = {}


def chromium_path() -> str | None:
    env = os.environ.get("CHROMIUM")
    return env or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI=true but no chromium found: .ci/run must install Debian's chromium")
        pytest.skip("browser check skipped: no chromium on PATH (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


MATH_STATE_JS = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const math = Array.from(document.querySelectorAll('.math'));
  return {
    mathjax: !!(window.MathJax && MathJax.version),
    total: math.length,
    unrendered: math.filter(e => !e.querySelector('mjx-container')
                                 && !e.matches('mjx-container')).length,
    errors: document.querySelectorAll('mjx-merror').length,
  };
}
"""

IMAGES_JS = """
() => Array.from(document.images)
        .filter(img => !(img.complete && img.naturalWidth > 0))
        .map(img => img.getAttribute('src'))
"""

LINKS_JS = "() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"

# The theme's search controls (the sidebar field and the header button share this class)
# that a reader can see; the search page's own form is page content, not counted.
VISIBLE_SEARCH_BOXES_JS = """
() => Array.from(document.querySelectorAll('.search-button__button'))
        .filter(e => e.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}))
        .length
"""


def _anchor_exists(html_file: Path, fragment: str) -> bool:
    text = html_file.read_text(encoding="utf-8")
    fragment = urllib.parse.unquote(fragment)
    return re.search(rf'\b(id|name)="{re.escape(fragment)}"', text) is not None


@pytest.mark.parametrize("page", html_pages())
def test_page_in_browser(page, browser, site_url, html_dir):
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()

    def on_console(msg):
        if msg.type == "error" and not any(k in msg.text for k in ALLOWED_CONSOLE_ERRORS):
            problems.append(f"console error: {msg.text}")

    def on_request_failed(request):
        problems.append(f"request failed: {request.url} ({request.failure})")

    def on_response(response):
        if response.status >= 400:
            problems.append(f"HTTP {response.status}: {response.url}")

    tab.on("console", on_console)
    tab.on("pageerror", lambda exc: problems.append(f"uncaught exception: {exc}"))
    tab.on("requestfailed", on_request_failed)
    tab.on("response", on_response)

    tab.goto(f"{site_url}/{page}", wait_until="networkidle")
    # On a loaded machine "networkidle" can come while a long page is still being parsed
    # (no request for 500 ms), before its deferred scripts (MathJax) have run.
    tab.wait_for_load_state("load")
    math = tab.evaluate(MATH_STATE_JS)
    tab.wait_for_load_state("networkidle")

    if math["total"]:
        assert math["mathjax"], f"{page}: page has math but MathJax did not load"
    if math["unrendered"]:
        problems.append(f"{math['unrendered']} of {math['total']} math elements not rendered")
    if math["errors"]:
        problems.append(f"{math['errors']} MathJax errors")

    search_boxes = tab.evaluate(VISIBLE_SEARCH_BOXES_JS)
    if search_boxes != 1:
        problems.append(f"{search_boxes} visible search boxes, not exactly one")

    # Nothing a reader must read is cut off or scrolls sideways at 1280 px (a printed line is
    # measured unwrapped: layout.css wraps one for readers, but it is still too long).
    for block in tab.evaluate(OVERFLOW_JS):
        problems.append(f"{block['kind']} wider than its box by {block['over']} px "
                        f"({block['length']} chars): {block['line'][:60]!r}")

    # Every figure of a notebook is shown at a scale where its smallest text (the smallest
    # font size its cell asks for, at the dpi the PNG records) is at least 9 px.
    if page.startswith("notebooks/"):
        shown = tab.evaluate(FIGURES_JS)
        figures = notebook_figures(ROOT / page.replace(".html", ".ipynb"))
        if len(shown) != len(figures):
            problems.append(f"{len(shown)} figures on the page, {len(figures)} in the notebook")
        else:
            for figure, box in zip(figures, shown, strict=True):
                if box["shown"] == 0 or box["natural"] == 0:
                    continue  # in a collapsed toggle (full width when opened), or broken (below)
                px = figure_text_px(figure, box)
                if px < MIN_FIGURE_TEXT_PX:
                    problems.append(
                        f"figure of cell {figure['cell']}: {figure['font_pt']:g}-pt text shown "
                        f"at {px:.1f} px ({box['shown']:.0f} of {box['natural']} px wide), "
                        f"under {MIN_FIGURE_TEXT_PX:g} px")

    for src in tab.evaluate(IMAGES_JS):
        problems.append(f"broken image: {src}")

    for href in sorted(set(tab.evaluate(LINKS_JS))):
        if not href.startswith(site_url):
            continue  # external links are not fetched: the site must work offline
        url = urllib.parse.urlsplit(href)
        target = html_dir / urllib.parse.unquote(url.path).lstrip("/")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"broken link: {href}")
        elif url.fragment and target.suffix == ".html" and not _anchor_exists(target, url.fragment):
            problems.append(f"broken anchor: {href}")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / (page.removesuffix(".html").replace("/", "__") + ".png")
    tab.screenshot(path=str(shot), full_page=True)

    # On a phone (390 px) the page itself is no wider than the screen: wide code scrolls
    # inside its box, long names and URLs break (layout.css).
    tab.set_viewport_size({"width": 390, "height": 844})
    tab.wait_for_timeout(100)
    phone_width = tab.evaluate("() => document.documentElement.scrollWidth")
    if phone_width > 390:
        problems.append(f"at 390 px the page is {phone_width} px wide")
    context.close()

    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


# Every table of the claims ledger, as laid out: the table's width against its box, and for
# each row whether its claim, verdict and evidence cells lie inside the viewport.
LEDGER_LAYOUT_JS = """
() => {
  const width = document.documentElement.clientWidth;
  return Array.from(document.querySelectorAll('section#claims-ledger table')).map(t => {
    const box = t.closest('.pst-scrollable-table-container') || t.parentElement;
    const rows = Array.from(t.querySelectorAll('tbody tr'));
    const hidden = rows.filter(r => Array.from(r.querySelectorAll('td')).slice(1).some(td => {
      const b = td.getBoundingClientRect();
      return b.width < 40 || b.left < 0 || b.right > width + 1;
    })).length;
    return {overflow: t.scrollWidth - box.clientWidth, rows: rows.length, hidden: hidden};
  });
}
"""


@pytest.mark.parametrize("width", [1280, 390])
def test_claims_ledger_fits_desktop_and_phone(browser, site_url, width):
    """The ledger's tables do not overflow their box, and every row's claim, verdict and
    evidence are within the screen, at a desktop width and a phone's (390 px)."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    tab = context.new_page()
    tab.goto(f"{site_url}/book/claims.html", wait_until="load")
    tables = tab.evaluate(LEDGER_LAYOUT_JS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SCREENSHOTS / f"book__claims_{width}px.png"), full_page=False)
    context.close()
    assert tables, "no ledger tables found"
    assert sum(t["rows"] for t in tables) >= 10
    wide = [i for i, t in enumerate(tables) if t["overflow"] > 1]
    assert not wide, f"at {width} px, ledger tables {wide} are wider than their box: {tables}"
    cut = sum(t["hidden"] for t in tables)
    assert not cut, f"at {width} px, {cut} ledger rows have a cell outside the screen"


# The notebooks are written to 100 columns of code and printed output.
MIN_CODE_COLUMNS = 100


@pytest.mark.parametrize("width", [1280, 1700])
def test_code_column_holds_100_characters(browser, site_url, width):
    """A notebook's code box holds at least 100 monospace characters at 1280 px (contents in
    a drawer) and at 1700 px (contents beside the article), and prose keeps its measure."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    tab = context.new_page()
    tab.goto(f"{site_url}/notebooks/05_bn_ln_by_hand.html", wait_until="load")
    columns = tab.evaluate(CODE_COLUMNS_JS)
    prose = tab.evaluate("() => document.querySelector('.bd-article section > p')"
                         ".getBoundingClientRect().width")
    context.close()
    assert columns["columns"] >= MIN_CODE_COLUMNS, f"at {width} px: {columns}"
    assert prose <= 46 * 16 + 1, f"at {width} px a paragraph is {prose} px wide (cap 46rem)"


def test_page_contents_open_as_a_drawer_at_1280(browser, site_url):
    """At 1280 px the page's contents are not beside the article but one click away."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.goto(f"{site_url}/notebooks/05_bn_ln_by_hand.html", wait_until="load")
    tab.click("button.secondary-toggle")
    tab.wait_for_timeout(300)
    drawer = tab.evaluate("""() => {
      const d = document.getElementById('pst-secondary-sidebar-modal');
      const box = d.getBoundingClientRect();
      return {open: d.open, left: box.left, right: box.right,
              links: d.querySelectorAll('nav.page-toc a').length};
    }""")
    context.close()
    assert drawer["open"] and drawer["links"] >= 3, drawer
    assert 0 < drawer["left"] and drawer["right"] <= 1281, drawer


# TeX a reader should never see in search results: math delimiters, or a command that the
# book's math uses (the search page shows pages as text, before MathJax typesets them).
RAW_TEX = re.compile(r"\\[()\[\]]|\\(gamma|beta|mu|sigma|hat|frac|mathbf|times|partial|"
                     r"varepsilon|epsilon|sqrt|sum|delta|cdot|mathrm|operatorname)\b")


@pytest.mark.parametrize("query", ["gamma", "variance", "epsilon", "invariance"])
def test_search_results_show_no_raw_tex(browser, site_url, query):
    """Search result titles and snippets show math as text (γ, x̂, 1/m), not as TeX
    (book/_static/search_math.js)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.goto(f"{site_url}/search.html?q={query}", wait_until="load")
    tab.wait_for_function("() => /finished/i.test("
                          "document.getElementById('search-progress')?.innerText || '')"
                          " || document.querySelectorAll('#search-results li').length > 0")
    tab.wait_for_load_state("networkidle")
    tab.wait_for_timeout(300)
    results = tab.evaluate("() => Array.from(document.querySelectorAll('#search-results li'))"
                           ".map(li => li.textContent.replace(/\\s+/g, ' '))")
    converted = tab.evaluate("""() => [
      '\\\\hat x', 'C \\\\times H \\\\times W', '\\\\frac{1}{m}', '\\\\(\\\\mathbf{h}_t\\\\)',
      '\\\\sqrt{\\\\sigma^2 + \\\\varepsilon}'].map(window.allAboutNormTexToText)""")
    context.close()
    assert len(results) >= 3, f"search for {query!r}: {len(results)} results"
    snippets = [r for r in results if "..." in r or "…" in r]
    assert snippets, f"search for {query!r}: no result has a snippet"
    raw = [r[:160] for r in results if RAW_TEX.search(r)]
    assert not raw, f"search for {query!r}: raw TeX in {len(raw)} results: {raw[:3]}"
    assert converted == ["x\u0302", "C × H × W", "1/m", "h_t", "√σ^2 + ε"], converted


def test_search_result_titles_are_text(browser, site_url):
    """A section titled with math is listed by its text, "What γ and β are for"."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    query = urllib.parse.quote("What γ and β are for")  # a title matches a query as long
    tab.goto(f"{site_url}/search.html?q={query}", wait_until="load")  # as half of it
    tab.wait_for_function("() => document.querySelectorAll('#search-results li a').length")
    titles = tab.evaluate("() => Array.from(document.querySelectorAll('#search-results li a'))"
                          ".map(a => a.textContent)")
    context.close()
    assert any("γ and β" in t for t in titles), titles
    assert not [t for t in titles if "\\" in t], titles
