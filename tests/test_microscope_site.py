"""`cnnlens microscope`: the static site — what it writes, that it resumes and replaces only its own
output, and a real browser going layer list → channel grid → unit page and clicking a building block."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from browser import chromium_driver

from cnnlens.report import MANIFEST

ARGS = [
    "--model",
    "digits-cnn",
    "--data",
    "digits",
    "--n",
    "20",
    "--layers",
    "features.4,features.7",
    "--steps",
    "4",
    "--max-channels",
    "3",
    "--samples",
    "1",
    "--k",
    "3",
]
SMALL = [
    "--model",
    "digits-cnn",
    "--data",
    "digits",
    "--n",
    "20",
    "--layers",
    "features.7",
    "--steps",
    "4",
    "--max-channels",
    "2",
    "--samples",
    "0",
    "--k",
    "3",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One small site for the whole module (built in this process through the CLI)."""
    import sys

    from cnnlens.cli import main

    out = tmp_path_factory.mktemp("micro") / "site"
    argv = sys.argv
    sys.argv = ["cnnlens", "microscope", *ARGS, "--out", str(out)]
    n = torch.get_num_threads()
    try:
        main()
    except SystemExit as e:
        assert e.code in (0, None)
    finally:
        sys.argv = argv
        torch.set_num_threads(n)
    return out


@pytest.mark.slow
def test_site_pages_and_numbers(site):
    assert (site / "index.html").exists() and (site / MANIFEST).exists()
    html = (site / "index.html").read_text()
    assert "net.features.4" in html and "net.features.7" in html
    assert "32×8×8" in html or "32×16×16" in html  # output shapes in the layer list
    for slug in ("net-features-4", "net-features-7"):
        grid = (site / f"layer-{slug}.html").read_text()
        assert grid.count('class="card') == 3
        for c in range(3):
            page = (site / f"unit-{slug}-{c}.html").read_text()
            assert "selectivity" in page and "Deconvnet" in page
            for name in ("fv", "fvp", "fvr", "top", "topbig", "maps", "hist", "class", "proj"):
                assert (site / "img" / slug / f"{name}-{c}.png").stat().st_size > 100, (slug, name, c)
    data = json.loads((site / "microscope.json").read_text())
    ch = data["layers"]["net.features.7"]["channels"][0]
    assert 0.0 <= ch["sel"] <= 1.0 and ch["top_act"] >= ch["mean"]
    assert not (site.parent / "site.work").exists()  # the work folder goes after success


@pytest.mark.slow
def test_refuses_a_foreign_folder_and_resumes_from_the_work_folder(tmp_path, run_cli, monkeypatch):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    code, cap = run_cli("microscope", *SMALL, "--out", foreign)
    assert code == 2 and "not a cnnlens output" in cap.err
    assert (foreign / "thesis.tex").read_text() == "precious"

    # an interrupted run leaves its finished stages in the work folder; the next run loads them
    import cnnlens.microscope_site as ms

    out = tmp_path / "m"
    real = ms.write_site

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ms, "write_site", interrupted)
    code, _ = run_cli("microscope", *SMALL, "--out", out)
    assert code == 130 and not out.exists()
    work = tmp_path / "m.work"
    done = sorted(p.name for p in work.glob("*.pt"))
    assert "scan.pt" in done and "fv-net-features-7.pt" in done
    monkeypatch.setattr(ms, "write_site", real)
    computed = []
    monkeypatch.setattr(ms.WorkDir, "save", lambda self, name, value: computed.append(name))
    # a previous cnnlens output with a file added to it is replaced, whole, only with --force
    out.mkdir()
    (out / MANIFEST).write_text('{"format": "cnnlens-output/1", "files": []}')
    (out / "stale.txt").write_text("from before")
    code, cap = run_cli("microscope", *SMALL, "--out", out, "--threads", "1")
    assert code == 2 and "plus other files (stale.txt)" in cap.err and (out / "stale.txt").exists()
    code, cap = run_cli("microscope", *SMALL, "--out", out, "--threads", "1", "--force")
    assert code == 0, cap.err
    assert computed == [] and (out / "index.html").exists()  # nothing computed again
    assert not (out / "stale.txt").exists() and not work.exists()


@pytest.mark.slow
@pytest.mark.browser
def test_browse_layers_channels_units_and_building_blocks(site, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = chromium_driver()
    profile = driver.profile_dir
    shots = Path(os.environ.get("CNNLENS_SCREENSHOTS", tmp_path))

    def check(name):
        info = driver.execute_script(
            "const i = Array.from(document.images); return {n: i.length,"
            " broken: i.filter(x => !(x.complete && x.naturalWidth > 0)).map(x => x.getAttribute('src'))};"
        )
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        driver.save_screenshot(str(shots / f"{name}.png"))
        assert info["broken"] == [] and errors == [], (name, info, errors)
        return info["n"]

    try:
        driver.set_page_load_timeout(60)
        driver.get((site / "index.html").resolve().as_uri())
        check("microscope-index")
        driver.find_elements(By.CSS_SELECTOR, "a.layer-link")[1].click()  # → net.features.7
        assert "net.features.7" in driver.title
        assert check("microscope-layer") == 6  # 3 cards × (FV + patches)
        driver.find_elements(By.CSS_SELECTOR, "#channels a.card")[1].click()  # → channel 1
        assert "channel 1" in driver.title
        assert check("microscope-unit") >= 11
        driver.get((site / "sample-0.html").resolve().as_uri())
        grid = driver.find_elements(By.CSS_SELECTOR, "img.bb-grid")[1]  # features.7: 8×8 grid
        # a cell where a shown channel fires (from the page's own data), clicked at its centre
        i, j = driver.execute_script(
            "const c = BLOCKS[1].cells; for (let i = 0; i < c.length; i++) for (let j = 0; j < c[i].length; j++)"
            " if (c[i][j].length) return [i, j]; return [0, 0];"
        )
        w, h = grid.size["width"], grid.size["height"]
        ActionChains(driver).move_to_element_with_offset(
            grid, int((j + 0.5) * w / 8 - w / 2), int((i + 0.5) * h / 8 - h / 2)
        ).click().perform()
        assert f"row {i}, column {j}" in driver.find_element(By.ID, "bb-out-1").text
        cards = driver.find_elements(By.CSS_SELECTOR, "#bb-out-1 a.bb-card")
        text = driver.find_element(By.ID, "bb-out-1").text
        assert "row" in text and "contribute" in text
        assert 1 <= len(cards) <= 3
        check("microscope-blocks")
        cards[0].click()
        assert "channel" in driver.title
        check("microscope-unit-from-blocks")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_a_second_run_reads_the_feature_visualisations_from_the_cache(tmp_path, run_cli, monkeypatch):
    import importlib

    mx = importlib.import_module("cnnlens.inside.maximize")
    real = mx.maximize
    calls = []
    monkeypatch.setattr(mx, "maximize", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "m"
    code, cap = run_cli("microscope", *SMALL, "--out", out, "--threads", "1")
    assert code == 0, cap.err
    first = len(calls)
    assert first == 3 and list((tmp_path / "m.fvcache").rglob("*.npz"))  # plain, robust, diversity: one each
    fv1 = (out / "img" / "net-features-7" / "fvr-1.png").read_bytes()
    code, cap = run_cli("microscope", *SMALL, "--out", out, "--threads", "1")  # no work folder left: a new run
    assert code == 0, cap.err
    assert len(calls) == first  # nothing rendered
    assert (out / "img" / "net-features-7" / "fvr-1.png").read_bytes() == fv1
    code, cap = run_cli("microscope", *SMALL, "--out", out, "--threads", "1", "--no-cache", "--force")
    assert code == 0 and len(calls) == 2 * first
    code, cap = run_cli("microscope", *SMALL, "--out", out, "--cache", out / "fv")
    assert code == 2 and "inside the output folder" in cap.err


def test_site_draws_the_patches_a_scan_that_kept_crops_draws(site):
    """The scan keeps no pixels: the site cuts each channel's patches from its top images when drawing, and
    its top-patch PNGs are byte-equal to the ones drawn from the float32 crops the scan used to keep."""
    from cnnlens import load_model
    from cnnlens import microscope_draw as draw
    from cnnlens.data import as_dataset
    from cnnlens.inside.microscope import microscope_scan

    model = load_model("digits-cnn")
    ds = torch.utils.data.Subset(as_dataset("digits", model), range(20))
    old = microscope_scan(model, ds, ["features.4", "features.7"], k=3, patches=True)
    for name, slug in (("net.features.4", "net-features-4"), ("net.features.7", "net-features-7")):
        top = old[name].top
        for c in range(3):
            crops = top.crops[top.row(c)]
            assert (site / "img" / slug / f"top-{c}.png").read_bytes() == draw.png(
                draw.patch_grid(crops, ncols=3, tile=36)
            ), (name, c)
            assert (site / "img" / slug / f"topbig-{c}.png").read_bytes() == draw.png(
                draw.patch_grid(crops, ncols=9, tile=96, pad=3)
            ), (name, c)
