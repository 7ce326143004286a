"""The explorer on a real-size model in a real browser: `cnnlens explore --model efficientnet-lite0` over a few
dozen photos in 20 ImageNet WordNet-ID folders (made from scikit-image's bundled photos), driven by Debian's headless
Chromium: overview → a confusion cell → a sample → every method → Units → the last layer → a unit page. The class
lists name only the classes in the data or the predictions, and nothing logs a console error.

Screenshots go to ``CNNLENS_SCREENSHOTS`` (default: the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from browser import broken_images, chromium_driver, explorer_server, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_PHOTOS = 20  # one per folder: every method on EfficientNet-Lite0 dominates the time


@pytest.fixture
def effnet_server(tmp_path):
    """`cnnlens explore` on EfficientNet-Lite0 and N_PHOTOS photos, on 127.0.0.1:<free port>; always stopped."""
    from photofolder import make_photo_folder

    make_photo_folder(tmp_path / "photos", N_PHOTOS, side=224)
    args = ["--model", "efficientnet-lite0", "--data", str(tmp_path / "photos"), "--cache", str(tmp_path / "cache")]
    with explorer_server(tmp_path, [*args, "--batch-size", "12"], timeout=300) as base:
        yield base


def test_effnet_from_the_overview_to_a_unit_page_names_only_present_classes(effnet_server, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base = effnet_server
    shots = Path(os.environ.get("CNNLENS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    o = httpx.get(base + "/api/overview", timeout=60).json()
    C = httpx.get(base + "/api/confusion.json", timeout=60).json()["confusion"]
    present = {i for i in range(1000) if sum(C[i]) or sum(row[i] for row in C)}
    assert o["num_classes"] == 1000 and o["present"] == len(present) < 60
    names = o["class_names"]
    driver = chromium_driver()
    try:
        driver.set_page_load_timeout(120)
        driver.get(base + "/")
        # the matrix's and the per-class table's classes are all present ones (no tench, no goldfish)
        shown = [e.get_attribute("title") for e in driver.find_elements(By.CSS_SELECTOR, "#confusion th.col")]
        assert shown and set(shown) <= {names[i] for i in present}
        rows = driver.find_elements(By.CSS_SELECTOR, "#per-class tbody tr")
        assert len(rows) == len(present)
        assert "tench" not in {r.find_element(By.TAG_NAME, "td").text for r in rows}
        search = driver.find_element(By.ID, "class-search")
        search.send_keys("goldfish")
        wait_for(
            driver,
            lambda: "never predicted" in driver.find_element(By.ID, "class-found").text,
            what="the class search naming an absent class",
        )
        search.clear()
        driver.execute_script("arguments[0].dispatchEvent(new Event('input'))", search)
        driver.save_screenshot(str(shots / "effnet-overview.png"))
        assert broken_images(driver) == []
        # a confusion cell, then its first sample
        cell = driver.find_elements(By.CSS_SELECTOR, "#confusion td.off a") or driver.find_elements(
            By.CSS_SELECTOR, "#confusion td a"
        )
        cell[0].click()
        wait_for(driver, lambda: "/cell/" in driver.current_url, what="the gallery")
        assert broken_images(driver) == []
        driver.find_element(By.CSS_SELECTOR, "#gallery .sample-link").click()
        wait_for(
            driver, lambda: driver.find_element(By.ID, "method-img").is_displayed(), timeout=120, what="the first map"
        )
        driver.find_element(By.ID, "run-all").click()  # every attribution method
        n_methods = len(Select(driver.find_element(By.ID, "method")).options)
        wait_for(
            driver,
            lambda: (
                len(driver.find_elements(By.CSS_SELECTOR, "#all-methods .card img")) == n_methods
                and all(
                    i.is_displayed() or "error" in i.find_element(By.XPATH, "..").text
                    for i in driver.find_elements(By.CSS_SELECTOR, "#all-methods .card img")
                )
            ),
            timeout=900,
            what="every method",
        )
        driver.save_screenshot(str(shots / "effnet-sample.png"))
        assert broken_images(driver) == []
        # Units → the last layer → a unit page
        driver.find_element(By.LINK_TEXT, "Units").click()
        wait_for(
            driver,
            lambda: driver.find_elements(By.CSS_SELECTOR, "#layers tbody tr"),
            timeout=300,
            what="the layer list",
        )
        last = driver.find_elements(By.CSS_SELECTOR, "#layers tbody tr")[-1].find_element(By.TAG_NAME, "a")
        layer = last.text
        last.click()
        wait_for(
            driver,
            lambda: driver.find_elements(By.CSS_SELECTOR, "#channels .unit-card"),
            timeout=120,
            what="the channel grid",
        )
        assert len(driver.find_elements(By.CSS_SELECTOR, "#channels .unit-card")) == 1280
        driver.save_screenshot(str(shots / "effnet-layer.png"))
        driver.find_elements(By.CSS_SELECTOR, "#channels .unit-card")[0].click()
        wait_for(
            driver,
            lambda: driver.find_element(By.TAG_NAME, "h1").text.startswith(f"Unit {layer} / 0"),
            timeout=300,
            what="the unit page",
        )
        u = httpx.get(base + f"/api/unit/{layer}/0", timeout=60).json()
        labels = {i for i in range(1000) if sum(C[i])}
        assert u["influence"] and {k for k, _ in u["influence"]} <= labels  # only classes in the data
        assert {n for n, _ in u["card"]["influence"]} <= {names[i] for i in labels}
        assert broken_images(driver) == []
        driver.save_screenshot(str(shots / "effnet-unit.png"))
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
