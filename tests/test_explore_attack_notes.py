"""The sample page says what its numbers mean: the attack on a misclassified sample whose runner-up is the true
class (it makes the model right; an attack away from the true class is offered), and deletion/insertion AUCs
toward a class the model gives no probability."""

from __future__ import annotations

import time

import pytest
import torch
from explorenets import digits_every, serve_digits

pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve_digits(tmp_path_factory.mktemp("cache"), digits_every(1)) as served:
        yield served


def wait(client, url, timeout=180.0):
    t0 = time.monotonic()
    while True:
        r = client.get(url)
        if r.status_code != 200 or r.json()["status"] in ("done", "error") or time.monotonic() - t0 > timeout:
            return r
        time.sleep(0.1)


def test_attack_on_a_misclassified_sample_says_it_restores_the_true_class_and_offers_away(served):
    from cnnlens.attacks import minimal_eps

    client, ex, model = served
    store = ex.store
    wrong = [s for s in (store.sample(i) for i in range(ex.n)) if s["true"] != s["pred"]]
    back = [s for s in wrong if s["second"] == s["true"]]
    assert back, "digits-cnn misclassifies some test digits with the true class as runner-up"
    s = back[0]
    ref = str(s["idx"])
    page = client.get(f"/sample/{ref}").text
    assert 'id="attack-note"' in page and "makes the model <b>right</b>" in page
    away = next(int(k) for k in s["top_classes"] if int(k) not in (s["pred"], s["true"]))
    assert 'id="run-attack-away"' in page and f"toward {ex.class_names[away]}" in page
    j = wait(client, f"/api/sample/{ref}/method/attack?target=away").json()
    assert j["status"] == "done", j
    assert j["toward"] == away and j["target"] == "away"
    x = ex.tensor(ref)
    r = minimal_eps(model, x, target=away)
    assert j["eps"] == pytest.approx(float(r.eps[0]), rel=1e-5)
    assert j["pred_after"] == int(r.pred_after[0])
    # the plain attack still goes to the second class (here the true one)
    j2 = wait(client, f"/api/sample/{ref}/method/attack").json()
    assert j2["status"] == "done" and j2["toward"] == s["true"]
    # a correctly classified sample has no "away": a clear 400
    right = next(i for i in range(ex.n) if store.sample(i)["true"] == store.sample(i)["pred"])
    bad = client.get(f"/api/sample/{right}/method/attack?target=away")
    assert bad.status_code == 400 and "misclassified" in bad.json()["error"]
    assert 'id="run-attack-away"' not in client.get(f"/sample/{right}").text


def test_aucs_toward_a_class_without_probability_say_they_cannot_rank_the_map(served):
    client, ex, model = served
    ref = "0"
    s = ex.sample(ref)
    with torch.no_grad():
        p = model(ex.tensor(ref)).softmax(1)[0]
    low = int(p.argmin())
    assert float(p[low]) < 1e-3
    j = wait(client, f"/api/sample/{ref}/method/saliency?target={low}").json()
    assert j["status"] == "done" and j["deletion_auc"] < 1e-3 and j["insertion_auc"] < 1e-3
    assert j["auc_note"] and "cannot rank this map" in j["auc_note"] and ex.class_names[low] in j["auc_note"]
    j = wait(client, f"/api/sample/{ref}/method/saliency?target=predicted").json()
    assert j["status"] == "done" and j["auc_note"] is None and s["conf"] > 0.5
