"""Open a report in Debian's headless Chromium and say what a person would see go wrong; serve the explorer in a
subprocess and walk its pages (what the browser tests share)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def check_page(index: Path, screenshot: Path | None = None) -> dict:
    """Load ``index`` and return {images, broken, console_errors, sections, external, widths (natural px),
    shown (displayed px), linked (images wrapped in a link to themselves), nav (scroll/client width, height,
    links, one line's height), page_scroll (horizontal overflow of the page)}."""
    driver = chromium_driver()
    try:
        driver.set_page_load_timeout(60)
        driver.get(Path(index).resolve().as_uri())
        info = driver.execute_script(
            """
            const imgs = Array.from(document.images);
            return {
              images: imgs.length,
              broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
              sections: Array.from(document.querySelectorAll('section h2')).map(h => h.textContent),
              external: Array.from(document.querySelectorAll('[src],[href]'))
                 .map(e => e.getAttribute('src') || e.getAttribute('href'))
                 .filter(u => /^(https?:)?\\/\\//.test(u)),
              widths: imgs.map(i => i.naturalWidth),
              shown: imgs.map(i => i.getBoundingClientRect().width),
              linked: imgs.filter(i => i.parentElement.tagName === 'A'
                                   && i.parentElement.getAttribute('href') === i.getAttribute('src')).length,
              nav: (() => { const n = document.querySelector('nav');
                            return n ? {scroll: n.scrollWidth, client: n.clientWidth, height: n.offsetHeight,
                                        links: n.querySelectorAll('a').length,
                                        line: n.querySelector('a') ? n.querySelector('a').offsetHeight : 0}
                                     : null; })(),
              page_scroll: document.documentElement.scrollWidth - document.documentElement.clientWidth,
            };
            """
        )
        info["console_errors"] = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
        return info
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)


def chromium_driver(flags: tuple[str, ...] = (), performance: bool = False):
    """A headless Debian Chromium driven by selenium (skips when it is not installed; fails under CI).

    ``flags``: more command-line switches; ``performance``: keep the DevTools network log
    (``driver.get_log("performance")``). The caller quits it (``driver.quit()``) and removes ``driver.profile_dir``.
    """
    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        msg = "Debian's chromium and chromium-driver are not installed (`make install-test` installs them)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="cnnlens-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
        *flags,
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", **({"performance": "ALL"} if performance else {})})
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    driver.profile_dir = profile
    return driver


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def explorer_server(tmp_path: Path, args: list[str], timeout: float = 120, env: dict | None = None) -> Iterator[str]:
    """`cnnlens explore ARGS --port <free port>` in a subprocess (its output in ``tmp_path/server.log``); yields
    its base URL once its scan is ready (at most ``timeout`` s); always stopped."""
    import httpx

    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlens", "explore", *args, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, COLUMNS="200", **(env or {})),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError("the server exited: " + (tmp_path / "server.log").read_text()[-2000:])
            try:
                if httpx.get(base + "/api/status", timeout=2).json()["state"] == "ready":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the scan did not finish in {timeout:.0f} s")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def wait_for(driver, cond, timeout=60, what="condition"):
    """``cond()``'s first true value, polled every 0.15 s; after ``timeout`` s an error naming ``what``, the page,
    its status lines and its console."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            v = cond()
        except Exception:  # noqa: BLE001 - element not there yet
            v = None
        if v:
            return v
        time.sleep(0.15)
    statuses = driver.execute_script("return Array.from(document.querySelectorAll('.status')).map(e => e.textContent)")
    raise AssertionError(
        f"timed out waiting for {what}; page: {driver.current_url}; status lines: {statuses}; "
        f"console: {driver.get_log('browser')}"
    )


def broken_images(driver) -> list[str]:
    """The src of every shown image that did not load (after scrolling lazy images into view)."""
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    wait_for(
        driver,
        lambda: driver.execute_script(
            "return Array.from(document.images).filter(i => !i.hidden).every(i => i.complete)"
        ),
        what="images",
    )
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !i.hidden)"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
