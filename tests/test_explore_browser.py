"""The explorer in a real browser: `cnnlens explore` started in a subprocess on a free local port,
driven by Debian's headless Chromium from the confusion matrix to a sample's explanations and an upload.

Set ``CNNLENS_SCREENSHOTS=docs`` to keep the overview and gallery screenshots there (the README's)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from browser import broken_images, chromium_driver, explorer_server, wait_for
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def server(tmp_path):
    """`cnnlens explore` on digits, on 127.0.0.1:<free port>; always stopped."""
    args = ["--model", "digits-cnn", "--data", "digits", "--cache", str(tmp_path / "cache")]
    with explorer_server(tmp_path, args, timeout=120, env={"OMP_NUM_THREADS": "1"}) as base:
        yield base
    assert "127.0.0.1" in (tmp_path / "server.log").read_text()  # it printed its URL


def test_from_the_most_confused_cell_to_a_sample_and_an_upload(server, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shots = Path(os.environ.get("CNNLENS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    overview = httpx.get(server + "/api/overview").json()
    top = overview["most_confused"]
    driver = chromium_driver()
    try:
        driver.set_page_load_timeout(60)
        driver.get(server + "/")
        cells = driver.find_elements(By.CSS_SELECTOR, "#confusion td a")
        assert len(cells) == sum(v > 0 for row in overview["confusion"] for v in row)
        # hover shows count and share; the toggle switches to the normalised matrix and back
        td = driver.find_element(
            By.CSS_SELECTOR, f'#confusion td[data-true="{top["true"]}"][data-pred="{top["pred"]}"]'
        )
        assert f": {top['count']} (" in td.get_attribute("title")
        driver.find_element(By.ID, "show-norm").click()
        assert td.text.strip() == f"{top['share']:.2f}"
        driver.save_screenshot(str(shots / "explore-overview.png"))
        driver.find_element(By.ID, "show-raw").click()
        assert td.text.strip() == str(top["count"])
        assert broken_images(driver) == []
        # the most confused cell: as many samples across its pages as its count
        td.find_element(By.TAG_NAME, "a").click()
        wait_for(driver, lambda: "/cell/" in driver.current_url, what="the gallery")
        count = int(driver.find_element(By.ID, "cell-count").get_attribute("data-count"))
        assert count == top["count"]
        refs = []
        while True:
            refs += [e.get_attribute("data-ref") for e in driver.find_elements(By.CSS_SELECTOR, "#gallery .item")]
            assert broken_images(driver) == []
            nxt = driver.find_elements(By.ID, "next-page")
            if not nxt:
                break
            nxt[0].click()
        assert len(refs) == len(set(refs)) == count
        driver.get(server + f"/cell/{top['true']}/{top['pred']}")
        driver.set_window_size(1100, 900)
        driver.save_screenshot(str(shots / "explore-gallery.png"))
        driver.set_window_size(1400, 1000)
        # a sample: the default method, then another method and another target
        driver.find_element(By.CSS_SELECTOR, "#gallery .sample-link").click()
        wait_for(driver, lambda: driver.find_element(By.ID, "method-img").is_displayed(), what="the first map")
        assert "deletion AUC" in driver.find_element(By.ID, "method-aucs").text
        Select(driver.find_element(By.ID, "method")).select_by_value("occlusion")
        wait_for(
            driver, lambda: "occlusion toward" in driver.find_element(By.ID, "method-status").text, what="occlusion"
        )
        Select(driver.find_element(By.ID, "target")).select_by_value("true")
        true_name = overview["class_names"][top["true"]]
        wait_for(
            driver,
            lambda: f"occlusion toward {true_name} (true)" in driver.find_element(By.ID, "method-status").text,
            what="occlusion toward the true class",
        )
        Select(driver.find_element(By.ID, "method")).select_by_value("gradcam")
        Select(driver.find_element(By.ID, "target")).select_by_value("class")
        box = driver.find_element(By.ID, "class-input")
        box.send_keys("3")
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", box)
        wait_for(
            driver,
            lambda: "gradcam toward 3 (class)" in driver.find_element(By.ID, "method-status").text,
            what="Grad-CAM toward class 3",
        )
        driver.execute_script("arguments[0].blur()", box)  # close the class list's pop-up
        driver.find_element(By.TAG_NAME, "h1").click()
        Select(driver.find_element(By.ID, "target")).select_by_value("predicted")
        driver.find_element(By.ID, "run-all").click()  # every attribution method, one after the other
        n_methods = len(Select(driver.find_element(By.ID, "method")).options)
        wait_for(
            driver,
            lambda: (
                len(driver.find_elements(By.CSS_SELECTOR, "#all-methods .card img")) == n_methods
                and all(i.is_displayed() for i in driver.find_elements(By.CSS_SELECTOR, "#all-methods .card img"))
            ),
            timeout=240,
            what="every method",
        )
        aucs = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#all-methods .card .aucs")]
        from cnnlens.attribution import METHODS

        assert len(aucs) == n_methods == len(METHODS) and all(a.startswith("deletion ") for a in aucs)
        driver.find_element(By.TAG_NAME, "h1").click()
        driver.find_element(By.ID, "run-attack").click()
        wait_for(driver, lambda: "ε =" in driver.find_element(By.ID, "attack-status").text, timeout=120, what="attack")
        assert broken_images(driver) == []
        # upload an image: its own sample page
        a = np.zeros((48, 48), np.uint8)
        a[10:38, 21:27] = 255
        path = tmp_path / "one.png"
        Image.fromarray(a).save(path)
        driver.get(server + "/upload")
        driver.find_element(By.ID, "file").send_keys(str(path))
        wait_for(driver, lambda: re.search(r"/sample/u[0-9a-f]{16}$", driver.current_url), what="the upload's page")
        wait_for(driver, lambda: driver.find_element(By.ID, "method-img").is_displayed(), what="the upload's map")
        assert broken_images(driver) == []
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)


def test_units_from_the_overview_to_a_unit_and_back_from_a_sample(server, tmp_path):
    """Overview → Units → a layer's channel grid → a unit page (computed in the worker while the page waits);
    a sample's building blocks link to unit pages; every image loads; no console errors."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shots = Path(os.environ.get("CNNLENS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    driver = chromium_driver()
    try:
        driver.set_page_load_timeout(60)
        driver.set_window_size(1400, 1000)
        driver.get(server + "/")
        driver.find_element(By.LINK_TEXT, "Units").click()
        wait_for(
            driver,
            lambda: driver.find_elements(By.CSS_SELECTOR, "#layers tbody tr"),
            timeout=120,
            what="the layer list",
        )
        rows = driver.find_elements(By.CSS_SELECTOR, "#layers tbody tr")
        assert len(rows) == 3
        layer = rows[-1].find_element(By.TAG_NAME, "a").text
        rows[-1].find_element(By.TAG_NAME, "a").click()
        wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#channels .unit-card"), what="the channel grid")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#channels .unit-card")) == 64
        assert broken_images(driver) == []
        # every channel's feature visualisation, rendered in the worker (16 channels per optimisation)
        assert not any(i.is_displayed() for i in driver.find_elements(By.CSS_SELECTOR, "#channels img.fv"))
        driver.find_element(By.ID, "fv-start").click()
        wait_for(
            driver,
            lambda: all(i.is_displayed() for i in driver.find_elements(By.CSS_SELECTOR, "#channels img.fv")),
            timeout=300,
            what="the channels' feature visualisations",
        )
        assert driver.find_element(By.ID, "layer-fv-status").text.startswith("64 of 64 feature visualisations")
        assert not driver.find_element(By.ID, "fv-start").is_displayed()
        assert broken_images(driver) == []
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(shots / "explore-layer.png"))
        driver.find_elements(By.CSS_SELECTOR, "#channels .unit-card")[5].click()
        wait_for(
            driver,
            lambda: driver.find_element(By.TAG_NAME, "h1").text.startswith(f"Unit {layer} / 5"),
            timeout=120,
            what="the unit page",
        )
        wait_for(
            driver,
            lambda: driver.find_element(By.ID, "fv-img").is_displayed(),
            timeout=120,
            what="the feature visualisation",
        )
        assert "mean activation" in driver.find_element(By.ID, "fv-status").text
        driver.find_element(By.ID, "views-start").click()  # the plain one and a diversity set, on request
        wait_for(
            driver,
            lambda: driver.find_element(By.ID, "views-img").is_displayed(),
            timeout=180,
            what="the plain feature visualisation and the diversity set",
        )
        assert "the diversity set" in driver.find_element(By.ID, "views-status").text
        assert broken_images(driver) == []
        # fv, plain + diversity set, patches, deconvnet/guided backprop, maps, histogram, classes
        assert len(driver.find_elements(By.CSS_SELECTOR, "img")) == 7
        driver.execute_script("document.getElementById('views').scrollIntoView()")
        driver.save_screenshot(str(shots / "explore-unit-views.png"))
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(shots / "explore-unit.png"))
        # a sample's building blocks: click the middle of the grid, follow a channel to its unit page
        driver.get(server + "/sample/7")
        wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#blocks-grid button"), what="the blocks grid")
        assert Select(driver.find_element(By.ID, "blocks-layer")).first_selected_option.text == layer
        buttons = driver.find_elements(By.CSS_SELECTOR, "#blocks-grid button")
        assert len(buttons) == 64  # 8×8 at the last layer
        buttons[3 * 8 + 4].click()
        wait_for(
            driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#blocks-list a"), what="the channels at a position"
        )
        assert "row 3, column 4" in driver.find_element(By.ID, "blocks-status").text
        driver.save_screenshot(str(shots / "explore-blocks.png"))
        link = driver.find_element(By.CSS_SELECTOR, "#blocks-list a")
        channel = link.text.split()[-1]
        link.click()
        wait_for(
            driver,
            lambda: driver.find_element(By.TAG_NAME, "h1").text.startswith(f"Unit {layer} / {channel}"),
            timeout=120,
            what="the unit page from a building block",
        )
        assert broken_images(driver) == []
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
