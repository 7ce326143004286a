"""The documentation site: it builds strictly and offline, and every page opens in Chromium with no console error
and no request leaving the machine."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
from browser import chromium_driver

ROOT = Path(__file__).resolve().parents[1]
#: every guide the issue asks for, by file; other pages under docs/guide/ are welcome and are checked too
GUIDES = ("evaluate", "explain", "trust", "inside", "microscope", "attacks", "explore", "own-model", "distributed")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``mkdocs build --strict`` into a temporary folder (a broken link or reference fails it)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("mkdocs_jupyter")
    out = tmp_path_factory.mktemp("site")
    p = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(out), "NO_MKDOCS_2_WARNING": "1"},
    )
    assert p.returncode == 0, p.stderr[-4000:]
    return out


def _pages(site: Path) -> list[str]:
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html") if p.name != "404.html")


def test_site_has_every_guide_tutorial_and_reference_page(site):
    pages = _pages(site)
    assert {f"guide/{g}.html" for g in GUIDES} <= set(pages)
    assert {
        "index.html",
        "getting-started.html",
        "methods.html",
        "benchmarks.html",
        "cli.html",
        "reference/attribution.html",
        "reference/core.html",
    } <= set(pages)
    assert len([p for p in pages if p.startswith("tutorials/")]) >= 5
    # a page added under docs/guide/ is in the navigation without being listed anywhere
    nav = (site / "index.html").read_text()
    for g in (ROOT / "docs" / "guide").glob("*.md"):
        assert f'href="guide/{g.stem}.html"' in nav, g.name
    # the reference is generated from the docstrings: gradcam's parameters are described there
    ref = (site / "reference" / "attribution.html").read_text()
    assert 'id="cnnlens.attribution.gradcam"' in ref
    gradcam = ref.split('id="cnnlens.attribution.gradcam"', 1)[1].split('class="doc doc-object doc-function"', 1)[0]
    for param in ("relu", "channels_last", "layer", "target"):
        assert f"<code>{param}</code>" in gradcam, param
    # nothing in the pages loads from another host (fonts, scripts, styles, images)
    for page in pages:
        html = (site / page).read_text()
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, page


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no lines on the test's stderr
        pass


@pytest.mark.browser
@pytest.mark.slow
def test_every_page_loads_without_console_errors_or_outside_requests(site):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    # any host but this machine resolves to nothing: a request that tries to leave fails (and is logged) instead
    driver = chromium_driver(flags=("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",), performance=True)
    try:
        driver.set_page_load_timeout(60)
        problems = {}
        pages = _pages(site)
        for page in pages:
            driver.get_log("performance")  # drop what the previous page logged
            driver.get(base + page)
            driver.execute_script("return document.readyState")
            title = driver.title
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            urls = []
            for entry in driver.get_log("performance"):
                msg = json.loads(entry["message"])["message"]
                if msg["method"] == "Network.requestWillBeSent":
                    urls.append(msg["params"]["request"]["url"])
            outside = [
                u
                for u in urls
                if urlparse(u).scheme not in ("data", "blob", "about", "chrome", "devtools")
                and urlparse(u).hostname != "127.0.0.1"
            ]
            broken = driver.execute_script(
                "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                ".map(i => i.getAttribute('src'))"
            )
            if errors or outside or broken or "cnnlens" not in title:
                problems[page] = {"errors": errors, "outside": outside, "broken": broken, "title": title}
        assert not problems, problems
        assert len(pages) >= 25
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
        server.shutdown()
        server.server_close()
