"""Many classes, few present (an ImageNet-like head over a folder of a few classes): the overview, the per-class
table and the unit pages name only the classes that occur in the data or the predictions; the full matrix is
still downloadable; the per-class chart's labels do not overlap."""

from __future__ import annotations

import csv
import io
import time

import pytest
import torch
from explorenets import digits_every
from modelstate import assert_unchanged, snapshot
from torch import nn

import cnnlens
from cnnlens.explore.app import make_app
from cnnlens.explore.service import Explorer

pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

K = 200
WHERE = [3 + 17 * j for j in range(10)]  # where digit j's logit goes among the K outputs


class Wide(nn.Module):
    """digits-cnn's ten logits placed at WHERE among K outputs; every other output is −30 (never predicted)."""

    def __init__(self, base):
        import dataclasses

        super().__init__()
        self.base = base
        self.register_buffer("where", torch.tensor(WHERE))
        self.spec = dataclasses.replace(base.spec, class_names=tuple(f"class {i}" for i in range(K)))

    def forward(self, x):
        z = self.base(x)
        return torch.full((len(x), K), -30.0, dtype=z.dtype, device=z.device).index_copy(1, self.where, z)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = digits_every(6)
    x, y = base.tensors
    data = torch.utils.data.TensorDataset(x, torch.tensor(WHERE)[y])
    model = Wide(cnnlens.load_model("digits-cnn"))
    before = snapshot(model)
    ex = Explorer(model, data, tmp_path_factory.mktemp("cache"))
    ex.start_scan()
    ex.wait_ready()
    try:
        with TestClient(make_app(ex)) as client:
            yield client, ex, model, data
    finally:
        ex.close()
    assert_unchanged(model, before, "the model after every request")


def test_overview_shows_only_present_classes_by_confusions_then_support(served):
    client, ex, model, data = served
    o = client.get("/api/overview").json()
    C = ex.evaluation().confusion
    present = {i for i in range(K) if int(C[i].sum()) or int(C[:, i].sum())}
    assert present <= set(WHERE) and o["present"] == len(present) and o["num_classes"] == K
    assert set(o["classes"]) <= present and len(o["classes"]) == min(20, len(present))
    off = C.clone()
    off.fill_diagonal_(0)
    key = lambda i: (-int(off[i].sum() + off[:, i].sum()), -int(C[i].sum()), i)  # noqa: E731
    assert o["classes"] == sorted(present, key=key)[:20]
    assert [r["index"] for r in o["per_class"]] == sorted(present, key=key)  # no row of support 0 never predicted
    assert torch.equal(torch.tensor(o["confusion"]), C[o["classes"]][:, o["classes"]])
    page = client.get("/").text
    assert "/api/confusion.csv" in page and "/api/confusion.json" in page and 'id="class-search"' in page
    assert f"{len(present)} of them in the data or the predictions" in page
    assert page.count("<tr data-names=") == len(present) + len(o["confused_pairs"][:200])


def test_the_full_matrix_downloads_as_csv_and_json(served):
    client, ex, _, data = served
    C = ex.evaluation().confusion
    j = client.get("/api/confusion.json")
    assert j.status_code == 200 and "attachment" in j.headers["content-disposition"]
    assert torch.equal(torch.tensor(j.json()["confusion"]), C) and len(j.json()["class_names"]) == K
    r = client.get("/api/confusion.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert len(rows) == K + 1 and len(rows[0]) == K + 1
    assert torch.equal(torch.tensor([[int(v) for v in row[1:]] for row in rows[1:]]), C)
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == len(data)


def test_a_unit_page_names_only_classes_in_the_data(served):
    client, ex, _, data = served
    t0 = time.monotonic()
    while client.get("/api/microscope").json()["status"] != "done" and time.monotonic() - t0 < 300:
        time.sleep(0.2)
    layer = ex.unit_layers()[-1]
    while (j := client.get(f"/api/unit/{layer}/3").json())["status"] not in (
        "done",
        "error",
    ) and time.monotonic() - t0 < 300:
        time.sleep(0.2)
    assert j["status"] == "done", j
    labels = set(data.tensors[1].tolist())
    assert j["influence"] and {k for k, _ in j["influence"]} <= labels
    assert len(j["influence"]) == len(labels)
    names = {ex.class_names[k] for k in range(K)} - {ex.class_names[k] for k in labels}
    # the card's five classes are all in the data
    assert {n for n, _ in j["card"]["influence"]} <= {ex.class_names[k] for k in labels}
    assert not names & {n for n, _ in j["card"]["influence"]}


def test_per_class_chart_labels_do_not_overlap():
    """Long class names (ImageNet's) on the per-class chart: the x labels never overlap, whatever their count."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cnnlens import microscope_draw as draw
    from cnnlens.models.imagenet import imagenet_class_names

    names = list(imagenet_class_names())
    for n_cls in (3, 6, 8, 12):
        cm = torch.zeros(1000, 1)
        picks = [2, 3, 4, 148, 150, 404, 417, 511, 817, 949, 967, 968][:n_cls]  # long names among them
        cm[picks, 0] = torch.linspace(1, 0.2, n_cls)
        count = torch.zeros(1000, dtype=torch.long)
        count[picks] = 5

        class S:  # the fields class_figure reads
            class_mean, class_count, selectivity = cm, count, torch.tensor([0.5])

        fig = draw.class_figure(S, 0, names)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        r = canvas.get_renderer()
        ax = fig.axes[0]
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        assert len(labels) == n_cls
        angle = labels[0].get_rotation()
        if angle == 0 or angle == 90:  # level or upright: the boxes are the text's
            boxes = [t.get_window_extent(r) for t in labels]
            for a, b in zip(boxes, boxes[1:], strict=False):  # neighbouring pairs
                assert not a.overlaps(b), (n_cls, a, b)
        else:  # slanted: neighbouring baselines are slot · sin(angle) apart, more than a line of text
            import math

            xs = [ax.transData.transform((i, 0))[0] for i in range(n_cls)]
            line = labels[0].get_size() * fig.dpi / 72
            gap = min(b - a for a, b in zip(xs, xs[1:], strict=False))  # neighbouring pairs
            assert gap * math.sin(math.radians(angle)) > line, n_cls
