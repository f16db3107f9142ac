"""The built book as a reader sees it: every page opened in headless Chromium.

Runs after the book is built (``make book``; ``make test`` builds it first) and is skipped when ``_build/html`` or
Chromium is missing, so ``pytest tests`` alone stays fast. ``make browser`` runs it with ``--browser-required``
semantics (``SEGCAL_BROWSER_CHECK=1``): then a missing book or browser is a failure, not a skip.

For every page: no error output or traceback, math rendered by MathJax (no raw ``\\(``), every image loaded, every
internal link pointing to a file that exists, the launch buttons (Colab, Binder) on chapter pages. A full-page
screenshot of every page is saved under ``_build/screenshots/``.

Chromium is Debian's (``apt-get install chromium``), driven by Playwright without downloading a browser.
"""

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
REQUIRED = os.environ.get("SEGCAL_BROWSER_CHECK") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


def pages() -> list[Path]:
    if not HTML.is_dir():
        return []
    skip = {"genindex.html", "search.html"}
    return sorted(p for p in HTML.rglob("*.html") if p.name not in skip and "_static" not in p.parts
                  and "_sources" not in p.parts and not _redirect_only(p))


def _redirect_only(page: Path) -> bool:
    # index.html only forwards to the root page (checked on its own); evaluating it races the redirect.
    return page.read_text(errors="replace").lstrip().startswith('<meta http-equiv="Refresh"')


def _missing_reason() -> str | None:
    if not pages():
        return f"the book is not built ({HTML} missing): run `make book` first"
    if CHROMIUM is None:
        return "chromium is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (extra 'dev')"
    return None


REASON = _missing_reason()
if REASON and REQUIRED:
    pytest.fail(f"browser check required (SEGCAL_BROWSER_CHECK=1) but {REASON}", pytrace=False)
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

# Evaluated in the page once it has loaded and MathJax has typeset.
PAGE_REPORT = """() => {
  const main = document.querySelector('main') || document.body;
  const text = main.innerText;
  // Text outside code, where a "$" or "\\(" can only be TeX that did not render.
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  let prose = '';
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.parentElement.closest('pre, code, mjx-container, script, style')) prose += n.textContent;
  }
  const imgs = [...document.images].filter(i => i.closest('main'));
  return {
    rawMath: /\\\\\\(|\\\\\\[|\\$/.test(prose),
    mathjax: document.querySelectorAll('mjx-container').length,
    mathNodes: document.querySelectorAll('.math').length,
    errors: [...document.querySelectorAll('.output.error, .output.traceback, .output.stderr, .system-message')]
              .map(e => e.innerText.slice(0, 300)),
    traceback: /Traceback \\(most recent call last\\)/.test(text),
    brokenImages: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    altIsPath: imgs.filter(i => /\\.(png|jpg|svg)$/.test(i.getAttribute('alt') || '')).map(i => i.alt),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    launch: [...document.querySelectorAll('a')].map(a => a.href).filter(h => /colab|mybinder/.test(h)),
  };
}"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    profile = ROOT / "_build" / ".chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)  # a fresh profile every run
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                    args=FLAGS, viewport={"width": 1300, "height": 900})
        yield ctx
        ctx.close()


def _internal_target(page: Path, href: str) -> Path | None:
    url = urlparse(href)
    if url.scheme or href.startswith(("#", "mailto:", "//")):
        return None
    return (page.parent / unquote(url.path)).resolve() if url.path else None


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(HTML)))
def test_page_reads_well(browser, page):
    tab = browser.new_page()
    console_errors = []
    tab.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    tab.goto(page.as_uri(), wait_until="load")
    if tab.locator(".math").count():
        tab.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
        tab.evaluate("() => MathJax.startup.promise")
    report = tab.evaluate(PAGE_REPORT)
    shown = Path(unquote(urlparse(tab.url).path))  # index.html redirects to the landing page
    name = str(page.relative_to(HTML)).replace("/", "_").removesuffix(".html")
    tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    tab.close()

    assert not report["errors"], f"error output on the page: {report['errors']}"
    assert not report["traceback"], "a traceback is printed on the page"
    if report["mathNodes"]:
        assert report["mathjax"] > 0, "the page has math but MathJax rendered none (offline MathJax missing?)"
    assert not report["rawMath"], "raw TeX delimiters are visible: math did not render"
    assert not report["brokenImages"], f"images that did not load: {report['brokenImages']}"
    assert not report["altIsPath"], f"images whose alt text is a file name (no caption/alt): {report['altIsPath']}"
    missing = sorted({h for h in report["links"] if (t := _internal_target(shown, h)) is not None and not t.exists()})
    assert not missing, f"internal links to missing files: {missing}"
    if shown.parent.name == "chapters":
        assert any("colab" in h for h in report["launch"]), "no Colab launch button"
        assert any("mybinder" in h for h in report["launch"]), "no Binder launch button"
    mathjax_errors = [e for e in console_errors if "mathjax" in e.lower()]
    assert not mathjax_errors, mathjax_errors
