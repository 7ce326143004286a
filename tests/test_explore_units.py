"""The explorer's units (the microscope joined into ``cnnlens explore``), in process: the layer list, the
channel grid, the unit pages and the sample page's building blocks show what the library computes directly
(one microscope scan, class influence, building blocks); a bad layer or channel is a 404 and the next good
request still succeeds; the model is unchanged after every request."""

from __future__ import annotations

import time

import pytest
import torch
from explorenets import digits_every, serve_digits
from modelstate import assert_unchanged, snapshot

import cnnlens
from cnnlens.explore.app import make_app
from cnnlens.explore.service import INFLUENCE_IMAGES, UNIT_K, Explorer

pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return digits_every(4)


@pytest.fixture(scope="module")
def served(tmp_path_factory, data):
    with serve_digits(tmp_path_factory.mktemp("cache"), data) as served:
        yield served


@pytest.fixture(scope="module")
def micro(served, data):
    """The library's own scan of the same layers, computed directly."""
    from cnnlens.inside.microscope import default_layers, microscope_scan

    _, _, model = served
    return microscope_scan(model, data, default_layers(model), k=UNIT_K)


def wait(client, url, timeout=120.0):
    t0 = time.monotonic()
    while True:
        r = client.get(url)
        j = r.json()
        if j.get("status") in ("done", "error") or r.status_code not in (200, 503) or time.monotonic() - t0 > timeout:
            return r
        time.sleep(0.1)


def ok(client, layer):
    """The next good request still succeeds."""
    r = client.get(f"/api/layer/{layer}")
    assert r.status_code == 200 and r.json()["name"] == layer


def test_layers_page_computes_once_then_lists_the_scanned_layers(served, micro):
    from cnnlens.microscope_site import layer_row

    client, ex, _ = served
    first = client.get("/layers")  # the microscope scan starts in the worker: a computing page first
    assert first.status_code == 200 and 'id="job-progress"' in first.text and "/api/microscope" in first.text
    assert wait(client, "/api/microscope").json()["status"] == "done"
    r = client.get("/api/layers")
    assert r.status_code == 200
    assert r.json()["layers"] == [layer_row(micro[n]) for n in micro.layers]
    assert r.json()["images"] == micro.count == 90
    assert client.get("/layers.json").json() == r.json()  # the page's JSON, from the same view
    page = client.get("/layers")
    assert page.status_code == 200 and '<a href="/layers">Units</a>' in page.text
    for n in micro.layers:
        assert f'href="/layer/{n}"' in page.text
    assert ex.worker.get("microscope").status == "done"  # one scan for every layer


def test_layer_grid_and_top_patches_from_the_scan(served, micro, data):
    from cnnlens import microscope_draw as draw

    client, _, _ = served
    wait(client, "/api/microscope")
    name = list(micro.layers)[1]
    ls = micro[name]
    j = client.get(f"/api/layer/{name}").json()
    assert [c["c"] for c in j["cards"]] == list(range(ls.channels))
    assert [c["sel"] for c in j["cards"]] == pytest.approx(ls.stats.selectivity.tolist(), abs=1e-6)
    assert [c["dead"] for c in j["cards"]] == ls.stats.dead.tolist()
    page = client.get(f"/layer/{name}")
    assert page.status_code == 200 and page.text.count('class="card unit-card') == ls.channels
    png = client.get(f"/img/unit/{name}/5/top.png")
    assert png.status_code == 200
    assert png.content == draw.png(draw.patch_grid(ls.top.patches(data, [5])[0], ncols=3, tile=36))


def test_unit_page_values_equal_the_library(served, micro, data):
    from cnnlens.data import dataset_images
    from cnnlens.inside.microscope import class_influence

    client, _, model = served
    wait(client, "/api/microscope")
    name = list(micro.layers)[-1]
    ls, c = micro[name], 7
    row = ls.top.row(c)
    j = wait(client, f"/api/unit/{name}/{c}").json()
    assert j["status"] == "done", j
    assert j["top_indices"] == ls.top.indices[row].tolist()
    assert j["top_activations"] == pytest.approx(ls.top.activations[row].tolist(), rel=1e-5)
    assert j["class_means"] == pytest.approx(ls.stats.class_mean[:, c].tolist(), rel=1e-5, abs=1e-6)
    assert j["card"]["sel"] == pytest.approx(float(ls.stats.selectivity[c]), abs=1e-6)
    # over INFLUENCE_IMAGES images spread evenly over the data, the classes in the data (all ten here)
    m = min(INFLUENCE_IMAGES, len(data))
    idx = sorted({round(i * (len(data) - 1) / (m - 1)) for i in range(m)})
    assert j["influence_images"] == len(idx)
    inf = class_influence(model, dataset_images(data, idx), name, list(range(10)))
    expect = inf.top(c, 10)
    assert [k for k, _ in j["influence"]] == [k for k, _ in expect]
    assert [v for _, v in j["influence"]] == pytest.approx([v for _, v in expect], rel=1e-4, abs=1e-5)
    page = client.get(f"/unit/{name}/{c}")
    assert page.status_code == 200
    assert client.get(f"/unit/{name}/{c}.json").json() == j  # the page's JSON, from the same view
    first = client.get(f"/unit/{name}/3")  # not computed yet: a computing page polling the unit's JSON
    assert 'id="job-progress"' in first.text and f'data-job-url="/unit/{name}/3.json"' in first.text
    assert wait(client, f"/unit/{name}/3.json").json()["status"] == "done"
    for i in ls.top.indices[row].tolist():
        assert f'href="/sample/{i}"' in page.text
    for what in ("top", "topbig", "maps", "hist", "class", "proj"):
        r = client.get(f"/img/unit/{name}/{c}/{what}.png")
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n", what
    assert client.get(f"/img/unit/{name}/{c}/fv.png").status_code == 404  # lazily: not asked for yet
    assert client.get(f"/img/unit/{name}/{c}/views.png").status_code == 404
    # deconvnet and guided backprop of the unit on its top images: the library's, drawn the same way
    from cnnlens import microscope_draw as draw
    from cnnlens.inside.microscope import top_maps, unit_projections

    imgs, _ = top_maps(model, data, ls, [c])
    proj = unit_projections(model, imgs[0], name, c, ls.top.positions[row], ls.rf)
    assert j["projections"] == ["patch", "deconvnet", "guided backprop"]
    assert client.get(f"/img/unit/{name}/{c}/proj.png").content == draw.png(
        draw.projections_image(ls.top.patches(data, [c])[0], proj.deconv, proj.guided, tile=72)
    )
    assert "What in each top patch drives it" in page.text


def test_feature_visualisation_lazily_equals_the_library(served, micro):
    from cnnlens import microscope_draw as draw
    from cnnlens.inside.microscope import maximize_channels
    from cnnlens.microscope_site import Settings

    client, _, model = served
    wait(client, "/api/microscope")
    name, c = list(micro.layers)[0], 2
    j = wait(client, f"/api/unit/{name}/{c}/fv").json()
    assert j["status"] == "done", j
    st = Settings()
    v = maximize_channels(model, name, [c], st.steps, size=32, seed=st.seed, robust=True)
    assert j["activation"] == pytest.approx(float(v.activation[0, 0]), rel=1e-4)
    r = client.get(j["png"])
    assert r.status_code == 200 and r.content == draw.png(draw.image_tile(v.of(c)[0], 160))
    assert client.get(f"/api/unit/{name}/16/fv").status_code == 404  # 16 channels: 0..15


def test_feature_visualisation_comes_from_the_disk_cache_the_second_time(served, micro, monkeypatch):
    import importlib

    client, ex, _ = served
    wait(client, "/api/microscope")
    name, c = list(micro.layers)[0], 5
    j = wait(client, f"/api/unit/{name}/{c}/fv").json()
    assert j["status"] == "done", j
    png = client.get(j["png"]).content
    assert list((ex.cache / "fv").rglob(f"{c}-*.npz"))  # kept in <cache>/fv, keyed by model, layer, channel, settings
    # another dataset's results folder (here: this one's unit files gone, the job forgotten): no optimisation runs
    d = ex.unit_dir(name, c)
    (d / "fv.json").unlink()
    (d / "fv.png").unlink()
    with ex.worker._lock:
        ex.worker._jobs.pop(f"fv/{name}/{c}", None)
    mx = importlib.import_module("cnnlens.inside.maximize")
    calls = []
    real = mx.maximize
    monkeypatch.setattr(mx, "maximize", lambda *a, **k: calls.append(1) or real(*a, **k))
    j2 = wait(client, f"/api/unit/{name}/{c}/fv").json()
    assert j2["status"] == "done" and calls == []
    assert j2["activation"] == j["activation"] and client.get(j2["png"]).content == png


def test_building_blocks_equal_the_library(served, micro, data):
    from cnnlens.inside.microscope import building_blocks

    client, _, model = served
    name = list(micro.layers)[-1]
    j = client.get(f"/api/sample/11/blocks?layer={name}")
    assert j.status_code == 200
    j = j.json()
    bb = building_blocks(model, data[11][0].unsqueeze(0), name)
    assert j["grid"] == list(bb.grid) and j["class"] == int(bb.classes[0])
    for i, k in [(0, 0), (3, 4), (7, 7)]:
        want = [[t["channel"], t["activation"], t["contribution"]] for t in bb.at(0, i, k, k=6) if t["activation"] > 0]
        got = j["cells"][i][k]
        assert [g[0] for g in got] == [w[0] for w in want]
        assert [g[1:] for g in got] == [pytest.approx(w[1:], abs=1e-4) for w in want]
    torch.testing.assert_close(torch.tensor(j["total"]), bb.contributions[0].sum(0), atol=1e-4, rtol=0)
    page = client.get("/sample/11")
    assert page.status_code == 200 and 'id="blocks-layer"' in page.text and f'value="{name}"' in page.text


@pytest.mark.parametrize(
    "url",
    [
        "/layer/nope",
        "/layer/net.fc",
        "/layer/..%2F..%2Fetc",
        "/unit/nope/0",
        "/unit/{L}/999",
        "/unit/{L}/-1",
        "/unit/{L}/abc",
        "/unit/{L}/1e3",
        "/api/unit/{L}/64",
        "/api/layer/net",
        "/img/unit/{L}/0/evil.png",
        "/img/unit/{L}/99/top.png",
        "/img/unit/zz/0/top.png",
        "/api/sample/11/blocks?layer=net.fc",
        "/api/sample/999999/blocks?layer={L}",
        "/api/sample/..%2Fx/blocks?layer={L}",
    ],
)
def test_bad_layer_or_channel_is_404_and_the_next_request_succeeds(served, micro, url):
    client, _, _ = served
    wait(client, "/api/microscope")
    L = list(micro.layers)[-1]
    r = client.get(url.replace("{L}", L))
    assert r.status_code == 404, (url, r.text[:200])
    ok(client, L)


def test_leaderboard_on_request_equals_the_benchmark(served, data):
    from cnnlens.explore.service import LEADERBOARD_METHODS, LEADERBOARD_METRICS
    from cnnlens.metrics import benchmark

    client, ex, model = served
    ex.leaderboard_n = 4
    assert client.get("/api/leaderboard").json()["status"] == "none"  # nothing runs unless asked
    page = client.get("/leaderboard")
    assert page.status_code == 200 and 'id="run-leaderboard"' in page.text
    assert client.post("/api/leaderboard").status_code == 415  # a form post from another site cannot start it
    assert client.post("/api/leaderboard", json={}).status_code == 200
    j = wait(client, "/api/leaderboard").json()
    assert j["status"] == "done", j
    x, y = data.tensors[0][:4], data.tensors[1][:4]
    lb = benchmark(model, x, y=y, methods=LEADERBOARD_METHODS, metrics=LEADERBOARD_METRICS)
    want = {(r["method"], r["metric"]): r["mean"] for r in lb.rows()}
    got = {(r["method"], r["metric"]): r["mean"] for r in j["scores"]}
    assert got.keys() == want.keys()
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-4, abs=1e-6, nan_ok=True), key
    page = client.get("/leaderboard")
    assert page.status_code == 200 and 'id="leaderboard"' in page.text
    for m in LEADERBOARD_METHODS:
        assert f"<td>{m}</td>" in page.text or f"<td><b>{m}</b></td>" in page.text


def test_units_wait_for_the_store_scan_without_touching_the_worker(tmp_path, data):
    model = cnnlens.load_model("digits-cnn")
    before = snapshot(model)
    ex = Explorer(model, data, tmp_path)  # its scan not started
    try:
        with TestClient(make_app(ex)) as client:
            assert client.get("/api/layers").status_code == 503
            assert client.get("/api/unit/net.features.7/0").status_code == 503
            page = client.get("/layers")
            assert page.status_code == 200 and 'id="scan-progress"' in page.text
            assert ex.worker.get("unit-layers") is None and ex.worker.get("microscope") is None
    finally:
        ex.close()
    assert_unchanged(model, before, "the model")


def test_queued_feature_visualisations_of_a_layer_render_in_one_optimisation(served, micro, monkeypatch):
    """Channels of one layer asked for while the worker is busy are rendered by one maximize_channels call (a batch
    of images, one channel objective each), and each equals the channel rendered alone."""
    import threading

    import cnnlens.inside.microscope as mm
    from cnnlens.microscope_site import Settings

    client, ex, model = served
    wait(client, "/api/microscope")
    name, chans = list(micro.layers)[1], [3, 7, 11]
    calls = []
    real = mm.maximize_channels
    monkeypatch.setattr(
        mm,
        "maximize_channels",
        lambda m, layer, channels, *a, **k: (calls.append((layer, list(channels))), real(m, layer, channels, *a, **k))[
            1
        ],
    )
    gate = threading.Event()
    ex.worker.submit("test/hold", lambda report: gate.wait(60))  # the worker is busy: the requests queue up
    try:
        queued = [client.get(f"/api/unit/{name}/{c}/fv").json() for c in chans]
        assert [q["status"] for q in queued] == ["queued"] * 3
        assert client.get(f"/api/layer/{name}/fv").json()["done"] == 0
    finally:
        gate.set()
    got = [wait(client, f"/api/unit/{name}/{c}/fv").json() for c in chans]
    assert [g["status"] for g in got] == ["done"] * 3, got
    assert calls == [(name, chans)]  # one optimisation for the three channels
    st = Settings()
    for c, g in zip(chans, got, strict=True):
        alone = real(model, name, [c], st.steps, size=32, seed=st.seed, robust=True)
        assert g["activation"] == pytest.approx(float(alone.activation[0, 0]), rel=1e-4)
    lay = client.get(f"/api/layer/{name}/fv").json()
    assert {r["channel"] for r in lay["channels"] if r["status"] == "done"} >= set(chans)


def test_layer_feature_visualisations_start_on_a_json_post_only(served, micro):
    client, ex, _ = served
    wait(client, "/api/microscope")
    name = list(micro.layers)[-1]
    before = client.get(f"/api/layer/{name}/fv").json()
    assert before["total"] == micro[name].channels and before["done"] == 0
    assert {r["status"] for r in before["channels"]} == {"missing"}  # a GET never starts work
    r = client.post(f"/api/layer/{name}/fv", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    assert client.get("/api/layer/nolayer/fv").status_code == 404
    assert client.post(f"/api/layer/{name}/fv", json={}).status_code == 200
    t0 = time.monotonic()
    while (j := client.get(f"/api/layer/{name}/fv").json())["done"] < j["total"] and time.monotonic() - t0 < 300:
        time.sleep(0.2)
    assert j["done"] == j["total"], j
    for r in j["channels"]:
        png = client.get(r["png"])
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    ok(client, name)


def test_plain_and_diverse_feature_visualisations_equal_the_library(served, micro):
    from cnnlens import microscope_draw as draw
    from cnnlens.inside.microscope import maximize_channels
    from cnnlens.microscope_site import Settings

    client, _, model = served
    wait(client, "/api/microscope")
    name, c = list(micro.layers)[0], 4
    assert 'data-done="0"' in client.get(f"/unit/{name}/{c}").text or wait(client, f"/api/unit/{name}/{c}")
    j = wait(client, f"/api/unit/{name}/{c}/views").json()
    assert j["status"] == "done", j
    st = Settings()
    plain = maximize_channels(model, name, [c], st.steps, size=32, seed=st.seed, tv=0.0)
    w = (0.5 * plain.activation[:, 0].abs()).clamp_min(1e-3)
    div = maximize_channels(
        model, name, [c], st.steps, size=32, seed=st.seed + 1, robust=True, diversity=st.diversity, diversity_weight=w
    )
    assert j["plain_activation"] == pytest.approx(float(plain.activation[0, 0]), rel=1e-4)
    assert j["diverse_activations"] == pytest.approx(div.activation[0].tolist(), rel=1e-4)
    strip = torch.cat([plain.of(c), div.of(c)])
    assert client.get(j["png"]).content == draw.png(draw.patch_grid(strip, ncols=len(strip), tile=128, pad=4))
    assert 'data-done="1"' in client.get(f"/unit/{name}/{c}").text  # shown at once the next time
    assert client.get(f"/api/unit/{name}/99/views").status_code == 404


def test_a_layer_render_shows_its_time_left_and_can_be_cancelled(served, micro, monkeypatch):
    """Rendering a layer's feature visualisations reports an estimate of the time left from its first progress and
    stops on POST .../fv/cancel: the queued channels never start, the running group stops at its next step."""
    client, ex, _ = served
    wait(client, "/api/microscope")
    name = list(micro.layers)[0]
    steps = []

    def slow_render(layer, channels, report):  # stands in for the optimisation: bounded, reports every 20 ms
        for i in range(500):
            report(i / 500)
            steps.append(i)
            time.sleep(0.02)
        raise AssertionError("the render was not cancelled")

    monkeypatch.setattr(ex.features, "render", slow_render)
    monkeypatch.setattr("cnnlens.explore.featurevis.FV_GROUP", 4)  # groups of four channels: most stay queued
    assert client.post(f"/api/layer/{name}/fv/cancel").status_code == 415  # a JSON POST only
    assert client.post(f"/api/layer/{name}/fv", json={}).status_code == 200
    t0 = time.monotonic()
    while (j := client.get(f"/api/layer/{name}/fv").json())["eta"] is None and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    pending = j["pending"]
    assert j["eta"] > 0 and pending == j["total"] - j["done"] > 4
    r = client.post(f"/api/layer/{name}/fv/cancel", json={})
    assert r.status_code == 200 and r.json()["cancelled"] == pending
    while (j := client.get(f"/api/layer/{name}/fv").json())["pending"] and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    assert j["pending"] == 0 and j["cancelled"] == pending and j["eta"] is None
    n = len(steps)
    time.sleep(0.3)
    assert len(steps) == n < 500  # stopped
    page = client.get(f"/layer/{name}")
    assert 'id="fv-cancel"' in page.text
    ok(client, name)
