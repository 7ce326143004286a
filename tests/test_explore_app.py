"""The explorer's HTTP app, in process (Starlette's TestClient): every page and its JSON twin agree
with the library, and every bad request gets a one-line 4xx, reads nothing outside the dataset and
the cache, and leaves the server serving and the model unchanged."""

from __future__ import annotations

import importlib.util
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from explorenets import digits_every, serve_digits
from PIL import Image

import cnnlens
from cnnlens.explore.app import make_app
from cnnlens.explore.service import MAX_UPLOAD, Explorer

pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return digits_every(3)


@pytest.fixture(scope="module")
def served(tmp_path_factory, data):
    with serve_digits(tmp_path_factory.mktemp("cache"), data, page_size=4) as served:
        yield served


def ok(client):
    """The next good request still succeeds."""
    r = client.get("/api/overview")
    assert r.status_code == 200 and r.json()["n"] == 120


def wait(client, url, timeout=60.0):
    t0 = time.monotonic()
    while True:
        r = client.get(url)
        j = r.json()
        if r.status_code != 200 or j["status"] in ("done", "error") or time.monotonic() - t0 > timeout:
            return r, j
        time.sleep(0.05)


def test_overview_and_its_json_equal_evaluate(served, data):
    client, ex, model = served
    ref = cnnlens.evaluate(model, data, topk=(1, 5))
    j = client.get("/api/overview").json()
    assert j["confusion"] == ref.confusion.tolist()
    assert j["topk_accuracy"] == {str(k): v for k, v in ref.topk_accuracy.items()}
    assert [p["recall"] for p in j["per_class"]] == [p["recall"] for p in ref.per_class]
    top = ref.most_confused[0]
    assert (j["most_confused"]["true"], j["most_confused"]["pred"], j["most_confused"]["count"]) == (
        top["true_index"],
        top["predicted_index"],
        top["count"],
    )
    html = client.get("/").text
    for t, row in enumerate(ref.confusion.tolist()):  # every non-empty cell is a link to its gallery
        for p, v in enumerate(row):
            assert (f'href="/cell/{t}/{p}"' in html) == (v > 0)
    assert "https://" not in html and "http://" not in html  # nothing from the network


def test_gallery_pages_cover_the_cell_and_draw_both_gradcams(served, data):
    client, ex, model = served
    j = client.get("/api/overview").json()
    r, c, count = j["most_confused"]["true"], j["most_confused"]["pred"], j["most_confused"]["count"]
    x, y = data.tensors
    with torch.no_grad():
        pred = model(x).argmax(1)
    want = {i for i in range(len(y)) if int(y[i]) == r and int(pred[i]) == c}
    diag = client.get(f"/api/cell/{r}/{r}").json()
    seen = []
    for page in range(1, diag["pages"] + 1):
        rows = client.get(f"/api/cell/{r}/{r}?page={page}").json()["samples"]
        seen += [s["conf"] for s in rows]
    assert seen == sorted(seen) and len(seen) == diag["count"]  # the diagonal: least confident first
    first = client.get(f"/api/cell/{r}/{c}?sort=margin&order=asc").json()
    got = {
        s["idx"]
        for p in range(1, first["pages"] + 1)
        for s in client.get(f"/api/cell/{r}/{c}?page={p}").json()["samples"]
    }
    assert got == want and first["count"] == count
    html = client.get(f"/cell/{r}/{c}").text
    i = min(want)
    assert (
        f"/img/sample/{i}/pair.png?a={r}&amp;b={c}" in html
        or f"/img/sample/{i}/pair.png?a={r}&b={c}" in html
        or first["pages"] > 1
    )
    png = client.get(f"/img/sample/{i}/pair.png?a={r}&b={c}")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size[0] > 300
    again = client.get(f"/img/sample/{i}/pair.png?a={r}&b={c}")
    assert again.content == png.content  # served from the disk cache
    img = Image.open(io.BytesIO(client.get(f"/img/sample/{i}.png").content))
    assert np.abs(np.asarray(img, np.float32) / 255 - x[i, 0].numpy()).max() <= 0.5 / 255 + 1e-6


def test_a_method_runs_in_the_worker_and_equals_the_library(served, data):
    client, ex, model = served
    x, y = data.tensors
    r, j = wait(client, "/api/sample/5/method/gradcam?target=second")
    assert r.status_code == 200 and j["status"] == "done", j
    with torch.no_grad():
        second = int(model(x[5:6]).topk(2).indices[0, 1])
    assert j["class"] == second and j["target"] == "second"
    e = cnnlens.attribution.gradcam(model, x[5:6], target=second)
    f = cnnlens.attribution.faithfulness(model, x[5:6], e, steps=16)
    assert j["deletion_auc"] == pytest.approx(float(f.deletion_auc[0]), abs=1e-6)
    assert j["insertion_auc"] == pytest.approx(float(f.insertion_auc[0]), abs=1e-6)
    # the object cut from the map: Zhou et al.'s box of the same map (and GrabCut's mask, with OpenCV); the
    # digits have no true boxes, so no IoU
    assert j["box"] == cnnlens.metrics.box_from_map(e)[0].tolist() and "Zhou et al. 2016" in j["objects"]
    assert "iou" not in j
    if importlib.util.find_spec("cv2") is not None:
        assert j["mask_pixels"] == int(cnnlens.attribution.segment(e, x[5:6])[0].sum())
        assert "GrabCut" in j["objects"]
    png = client.get(j["png"])
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    _, j2 = wait(client, "/api/sample/5/method/occlusion?target=true")
    assert j2["status"] == "done" and j2["class"] == int(y[5])
    _, j3 = wait(client, "/api/sample/5/method/saliency?target=7")
    assert j3["status"] == "done" and j3["class"] == 7 and j3["class_name"] == "7"
    page = client.get("/sample/5").text
    assert all(f'value="{m}"' in page for m in cnnlens.attribution.METHODS)


def test_the_attack_reports_the_eps_it_needed(served, data):
    client, ex, model = served
    x, _ = data.tensors
    _, j = wait(client, "/api/sample/2/method/attack", timeout=120)
    assert j["status"] == "done" and j["success"]
    with torch.no_grad():
        second = int(model(x[2:3]).topk(2).indices[0, 1])
    assert j["toward"] == second == j["pred_after"]
    adv = cnnlens.attacks.pgd(model, x[2:3], eps=j["eps"] * 1.001, steps=10, target=second)
    assert bool(adv.success[0])  # the reported ε is enough
    # the attack's own endpoint answers the same job (the method URL above is its older alias)
    own = client.get("/api/sample/2/attack/second").json()
    assert own["png"] == "/img/sample/2/attack/second.png"
    assert {k: v for k, v in own.items() if k != "png"} == {k: v for k, v in j.items() if k != "png"}
    assert client.get(own["png"]).content == client.get(j["png"]).content
    bad = client.get("/api/sample/2/attack/nowhere")
    assert bad.status_code == 404 and "second, away" in bad.json()["error"]


def test_a_page_and_its_json_come_from_one_view(served):
    """PATH.json, and PATH with Accept: application/json, answer what the older /api URL answers; PATH stays HTML;
    an error is JSON for the JSON and HTML for the page."""
    client, _, _ = served
    top = client.get("/api/overview").json()["most_confused"]
    r, c = top["true"], top["pred"]
    for page, dot_json, api in (
        ("/", "/index.json", "/api/overview"),
        (f"/cell/{r}/{c}?sort=margin", f"/cell/{r}/{c}.json?sort=margin", f"/api/cell/{r}/{c}?sort=margin"),
        ("/sample/3", "/sample/3.json", "/api/sample/3"),
        ("/leaderboard", "/leaderboard.json", "/api/leaderboard"),
    ):
        want = client.get(api).json()
        assert client.get(dot_json).json() == want
        negotiated = client.get(page, headers={"Accept": "application/json"})
        assert negotiated.headers["content-type"] == "application/json" and negotiated.json() == want
        html = client.get(page, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert html.headers["vary"] == "Accept"
    bad = client.get("/cell/99/0.json")
    assert bad.status_code == 404 and bad.json() == client.get("/api/cell/99/0").json()
    page = client.get("/cell/99/0")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert client.post("/leaderboard.json").status_code == 415  # starting work needs a JSON POST, as /api/...


def _png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A PNG whose header claims 40000 × 40000 pixels (beyond Pillow's limit), a few bytes long."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


def test_upload_gives_a_sample_page(served):
    client, ex, model = served
    a = np.zeros((40, 40, 3), np.uint8)
    a[8:32, 17:23] = 255  # a bright vertical bar: a "1"
    r = client.post("/api/upload", content=_png_bytes(a))
    assert r.status_code == 200, r.text
    ref = r.json()["ref"]
    assert r.json()["url"] == f"/sample/{ref}"
    s = client.get(f"/api/sample/{ref}").json()
    x = cnnlens.load_images(a, model)
    with torch.no_grad():
        p = model(x).softmax(1)[0]
    assert s["pred"] == int(p.argmax()) and s["conf"] == pytest.approx(float(p.max()), abs=1e-5)
    assert client.get(f"/sample/{ref}").status_code == 200
    _, j = wait(client, f"/api/sample/{ref}/method/gradcam?target=predicted")
    assert j["status"] == "done"
    bad = client.get(f"/api/sample/{ref}/method/gradcam?target=true")
    assert bad.status_code == 400 and "no true class" in bad.json()["error"]
    ok(client)


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"", 400, "empty"),
        (b"hello, this is not an image at all", 415, "not an image"),
        ("torch-pickle", 415, "not an image"),
        ("truncated", 400, "truncated"),
        ("bomb", 413, "too large to decode"),
        ("huge", 413, "limit is 20 MB"),
    ],
)
def test_bad_uploads_get_a_one_line_4xx_and_the_server_goes_on(served, body, status, message, tmp_path):
    client, ex, model = served
    if body == "torch-pickle":  # a pickle is never unpickled: it is just not an image
        buf = io.BytesIO()
        torch.save({"x": torch.zeros(2)}, buf)
        body = buf.getvalue()
    elif body == "truncated":
        full = _png_bytes((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
        body = full[: len(full) // 2]
    elif body == "bomb":
        body = _bomb()
    elif body == "huge":
        body = b"\0" * (MAX_UPLOAD + 1)
    r = client.post("/api/upload", content=body)
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    assert message in msg and "\n" not in msg
    ok(client)


@pytest.mark.parametrize(
    "url, message",
    [
        ("/sample/120", "no sample 120"),
        ("/api/sample/99999999999", "no sample"),
        ("/api/sample/-1", "no sample"),
        ("/api/sample/u0123456789abcdef", "no sample"),
        ("/sample/../../etc/passwd", None),
        ("/sample/..%2F..%2Fetc%2Fpasswd", None),
        ("/img/sample/..%2F..%2F..%2Fetc%2Fpasswd.png", None),
        ("/img/sample/%2e%2e/%2e%2e/etc/passwd", None),
        ("/static/../../../etc/passwd", None),
        ("/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", None),
        ("/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd", None),
        ("/api/cell/10/0", "no class '10'"),
        ("/api/cell/a/0", "no class 'a'"),
        ("/api/cell/0/0?page=0", "no page"),
        ("/api/cell/0/0?page=9999", "no page 9999"),
        ("/api/sample/3/method/nope", "no method 'nope'"),
        ("/api/sample/3/method/gradcam?target=10", "no target '10'"),
        ("/api/sample/3/method/gradcam?target=../../x", "no target"),
        ("/img/sample/3/method/gradcam.png?target=4", "not computed yet"),
        ("/img/sample/3/pair.png?a=0&b=77", "no class '77'"),
        ("/nothing/here", "no such page"),
    ],
)
def test_every_unknown_id_is_a_404_that_reads_nothing(served, url, message):
    client, ex, model = served
    r = client.get(url)
    assert r.status_code == 404, (url, r.status_code, r.text[:200])
    assert b"root:" not in r.content
    if message is not None:
        text = r.json()["error"] if r.headers["content-type"].startswith("application/json") else r.text
        assert message in text
    ok(client)


def test_bad_query_values_are_400(served):
    client, ex, model = served
    for url, message in (("/api/cell/0/0?sort=idx;DROP TABLE samples", "sort="), ("/api/cell/0/0?order=up", "order=")):
        r = client.get(url)
        assert r.status_code == 400 and message in r.json()["error"]
    assert client.post("/api/overview").status_code == 405
    ok(client)


def test_concurrent_requests_all_succeed_with_one_model(served):
    client, ex, model = served
    urls = [f"/img/sample/{i}/pair.png" for i in range(10, 18)] * 3 + ["/api/overview", "/"] * 5
    out: dict[int, tuple[int, bytes]] = {}

    def get(k, u):
        r = client.get(u)
        out[k] = (r.status_code, r.content)

    threads = [threading.Thread(target=get, args=(k, u)) for k, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(out) == len(urls) and all(s == 200 for s, _ in out.values())
    for k, u in enumerate(urls):  # the same image whichever request drew it
        assert out[k][1] == out[urls.index(u)][1] or u in ("/",)


def test_pages_wait_for_the_scan_and_json_says_503(tmp_path, data):
    model = cnnlens.load_model("digits-cnn")
    ex = Explorer(model, data, tmp_path)  # scan not started
    try:
        with TestClient(make_app(ex)) as client:
            assert client.get("/api/status").json()["state"] == "scanning"
            r = client.get("/api/overview")
            assert r.status_code == 503 and "still running" in r.json()["error"]
            page = client.get("/")
            assert page.status_code == 200 and 'id="scan-progress"' in page.text
    finally:
        ex.close()


def test_the_pair_image_draws_each_map_on_the_shared_scale_and_their_difference():
    import matplotlib

    from cnnlens.explore.service import pair_figure
    from cnnlens.viz import DIVERGING, SEQUENTIAL

    image = torch.zeros(1, 4, 4)
    a = torch.zeros(4, 4)
    b = torch.zeros(4, 4)
    a[0, 0] = 2.0  # toward a: only the top-left pixel
    b[3, 3] = 1.0  # toward b: only the bottom-right one, half as strong
    im = np.asarray(pair_figure(image, a, b, "a", "b"), np.float64) / 255
    step, gap, top = 150 / 4, 12, 20

    def at(panel_x, i, j):
        return im[int(top + (i + 0.5) * step), int(panel_x + (j + 0.5) * step)]

    seq = matplotlib.colormaps[SEQUENTIAL]  # the one map for non-negative maps, as in the report
    assert at(gap, 0, 0) == pytest.approx(0.5 * np.array(seq(1.0)[:3]), abs=1 / 255)  # a's maximum: full scale
    x_b = gap + 150 + gap
    assert at(x_b, 3, 3) == pytest.approx(0.5 * np.array(seq(0.5)[:3]), abs=1 / 255)  # b's 1.0 is half of 2.0
    x_d = x_b + 150 + 6 + 10 + 44 + gap
    rdbu = matplotlib.colormaps[DIVERGING]
    assert at(x_d, 0, 0) == pytest.approx(0.5 * np.array(rdbu(0.0)[:3]), abs=1 / 255)  # b − a = −2: full blue
    assert at(x_d, 3, 3) == pytest.approx(0.5 * np.array(rdbu(0.75)[:3]), abs=1 / 255)  # +1 of ±2


def test_cross_site_uploads_and_foreign_host_names_are_refused(served):
    client, ex, model = served
    png = _png_bytes(np.zeros((8, 8), np.uint8))
    for kind in ("text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"):
        r = client.post("/api/upload", content=png, headers={"Content-Type": kind})
        assert r.status_code == 415 and "application/octet-stream" in r.json()["error"]
    assert client.post("/api/upload", content=png, headers={"Content-Type": "image/png"}).status_code == 200
    with TestClient(make_app(ex, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1:8765") as local:
        assert local.get("/api/status").status_code == 200
        rebound = local.get("/api/status", headers={"Host": "attacker.example:8765"})  # DNS rebinding
        assert rebound.status_code == 400
    ok(client)
