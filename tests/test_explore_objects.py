"""The explorer's sample page on a dataset with true boxes (cluttered digits): the box cut from a map and its
IoU with the digit's box are the library's (``box_from_map``, ``localisation_iou``) on the same map."""

from __future__ import annotations

import pytest
import torch
from explorenets import serve_digits

import cnnlens
from cnnlens.models.cluttered import ClutteredDigits, cluttered_digits

pytest.importorskip("httpx")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def boxed():
    ds = cluttered_digits("test")
    n = 24
    return ClutteredDigits(ds.x[:n], ds.y[:n], ds.boxes[:n], "test")


@pytest.fixture(scope="module")
def served(tmp_path_factory, boxed):
    with serve_digits(tmp_path_factory.mktemp("cache"), boxed, model_name="cluttered-digits-cnn") as served:
        yield served


def wait(client, url, timeout=60.0):
    import time

    t0 = time.monotonic()
    while True:
        j = client.get(url).json()
        if j.get("status") in ("done", "error", None) or time.monotonic() - t0 > timeout:
            return j
        time.sleep(0.05)


@pytest.mark.parametrize("method, i", [("gradcam", 3), ("saliency", 7)])
def test_the_box_cut_from_a_map_and_its_iou_with_the_true_box(served, boxed, method, i):
    client, ex, model = served
    j = wait(client, f"/api/sample/{i}/method/{method}?target=true")
    assert j["status"] == "done", j
    e = cnnlens.attribution.METHODS[method](model, boxed.x[i : i + 1], target=int(boxed.y[i]))
    box = cnnlens.metrics.box_from_map(e)
    assert j["box"] == box[0].tolist()
    iou = cnnlens.metrics.localisation_iou(e, boxed.boxes[i : i + 1]).scores[0]
    assert j["iou"] == pytest.approx(float(iou), abs=1e-12)
    assert float(iou) == pytest.approx(float(cnnlens.metrics.box_iou(box, boxed.boxes[i : i + 1])[0]), abs=1e-12)
    assert f"IoU {j['iou']:.2f}" in j["objects"] and "Zhou et al. 2016" in j["objects"]
    png = client.get(j["png"])
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_an_upload_has_a_box_but_no_iou(served, boxed):
    import io

    from PIL import Image

    client, ex, model = served
    buf = io.BytesIO()
    Image.fromarray((boxed.x[5, 0] * 255).round().byte().numpy(), mode="L").save(buf, format="PNG")
    ref = client.post("/api/upload", content=buf.getvalue())
    assert ref.status_code == 200, ref.text
    ref = ref.json()["ref"]
    j = wait(client, f"/api/sample/{ref}/method/gradcam?target=predicted")
    assert j["status"] == "done", j
    e = cnnlens.attribution.gradcam(model, ex.tensor(ref), target=j["class"])
    assert j["box"] == cnnlens.metrics.box_from_map(e)[0].tolist() and "iou" not in j
    torch.testing.assert_close(ex.tensor(ref), boxed.x[5:6], atol=1 / 255, rtol=0)
