"""`cnnlens demo --quick` end to end, as a new user runs it: the real models and photos, the report in a browser.

Each section is tested on small stand-ins elsewhere; this is the main job itself, once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from browser import check_page

SECTIONS = [
    "Evaluation",
    "Top-5 predictions on photos",
    "Explaining a prediction: EfficientNet-Lite0",
    "Explaining a prediction: digits CNN",
    "How far to trust each map",
    "Inside: filters and feature maps",
    "Inside: activation maximisation",
    "Inside: Deep Dream",
    "Inside: receptive fields",
    "Inside: dataset search (maximally activating patches)",
    "Inside: neuron statistics",
    "Inside: channel influence",
    "Inside: deconvnet and guided backprop",
    "Adversarial examples: to the second class",
    "Robustness of the digits CNN, plain and robustified",
    "Why adversarial examples exist: measure concentration",
]


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo-report"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = subprocess.run(
        [sys.executable, "-m", "cnnlens", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"report written: {out / 'index.html'}" in (run.stdout + run.stderr).replace("\n", "")

    res = json.loads((out / "results.json").read_text())
    assert list(res["sections"]) == SECTIONS
    assert res["meta"]["quick"] is True and set(res["meta"]["timings_s"]) == {
        "evaluation",
        "attribution",
        "trust",
        "inside",
        "attacks",
    }
    s = res["sections"]
    # the shipped digits CNN on its held-out split, and EfficientNet-Lite0 on scikit-image's photos
    ev = s["Evaluation"]["evaluation"]
    assert ev["n"] == 359 and ev["topk_hits"]["1"] == 352 and ev["topk_accuracy"]["3"] >= ev["topk_accuracy"]["1"]
    top5 = s["Top-5 predictions on photos"]["topk"]
    assert top5["chelsea"][0]["class"] in {"tiger cat", "tabby", "Egyptian cat"}
    assert top5["coffee"][0]["class"] == "espresso"
    # every photo pushed to its own runner-up class, and the attack's classes agree with the top-5 table
    attack = s["Adversarial examples: to the second class"]["attack"]
    for name, a in attack.items():
        assert a["before"] == top5[name][0]["index"] and a["goal"] == top5[name][1]["index"], name
        assert not a["success"] or a["after"] == a["goal"], name
    assert sum(a["success"] for a in attack.values()) >= len(attack) - 1
    # the leaderboard on cluttered digits, and the sanity check: guided backprop survives the randomised top
    trust = s["How far to trust each map"]
    assert trust["leaderboard"]["methods"] == ["saliency", "gradcam", "guided_backprop"]
    rho = {m: [r[0] if r[0] is not None else 0.0 for r in v] for m, v in trust["sanity_check"]["spearman"].items()}
    assert rho["guided_backprop"][-1] > max(rho["saliency"][-1], rho["gradcam"][-1]) + 0.3
    # the receptive fields it shows were confirmed by the gradient probe
    assert all(rf["probe"] is None or rf["probe"]["agrees"] for rf in s["Inside: receptive fields"]["receptive fields"])

    page = check_page(out / "index.html")
    assert page["sections"] == SECTIONS
    assert page["images"] >= 40 and page["broken"] == [], page["broken"]
    assert page["console_errors"] == [] and page["external"] == []
