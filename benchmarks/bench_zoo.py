"""The CAM zoo and the minimum-norm attacks, side by side with their peers in one process; prints ratios.

* XGrad-CAM, HiResCAM, LayerCAM, Eigen-CAM: cnnlens vs pytorch-grad-cam on EfficientNet-Lite0 (batch 8, its
  last spatial layer ``bn2``), maps correlated per image (Eigen-CAM before the ReLU and up to sign).
* DeepFool and Carlini–Wagner L2: cnnlens vs torchattacks on digits-cnn (batch 32, same settings), with the
  success rate and the median L2 norm of each.

Times are the minimum over interleaved repeats; on a shared machine the ratios move a little run to run.
Tests never time anything; this script does.

Run:  python benchmarks/bench_zoo.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_attribution import interleaved, photos  # noqa: E402


def _corr(a, b) -> float:
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def bench_cams(repeat: int, n: int) -> dict:
    from pytorch_grad_cam import EigenCAM, HiResCAM, LayerCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    import cnnlens
    from cnnlens.attribution import eigencam, hirescam, layercam, xgradcam

    model = cnnlens.load_model("efficientnet-lite0")
    peer = copy.deepcopy(model)  # pytorch-grad-cam sets .grad and keeps hooks: give it its own copy
    x = photos(n)
    layer = model.spec.last_spatial_layer  # net.bn2
    with torch.no_grad():
        cls = model(x).argmax(1).tolist()
    targets = [ClassifierOutputTarget(c) for c in cls]
    out = {}
    for ours, theirs in ((xgradcam, XGradCAM), (hirescam, HiResCAM), (layercam, LayerCAM), (eigencam, EigenCAM)):
        with theirs(model=peer, target_layers=[peer.get_submodule(layer)]) as cam:
            t = interleaved(
                {
                    "peer": lambda: cam(input_tensor=x, targets=targets),
                    "ours": lambda: ours(model, x, target=cls, layer=layer),
                },
                repeat,
            )
            if ours is eigencam:
                cam.activations_and_grads(x)
                ref = torch.from_numpy(get_2d_projection(cam.activations_and_grads.activations[0].numpy()))
                e = ours(model, x, layer=layer, relu=False).raw
                corr = min(abs(_corr(e[i], ref[i])) for i in range(n))
            else:
                ref = cam(input_tensor=x, targets=targets)
                e = ours(model, x, target=cls, layer=layer).maps
                corr = min(_corr(e[i], ref[i]) for i in range(n))
        out[ours.__name__] = {
            "ours_s": t["ours"],
            "peer_s": t["peer"],
            "peer/ours": t["peer"] / t["ours"],
            "min_corr": corr,
        }
    return out


def bench_attacks(repeat: int, n: int) -> dict:
    import torchattacks

    import cnnlens
    from cnnlens.attacks import cw, deepfool
    from cnnlens.models.digits import digits_split

    model = cnnlens.load_model("digits-cnn")
    peer = copy.deepcopy(model)
    d = digits_split("test")
    x, y = d.x[:n], d.y[:n]
    res: dict = {}
    df = torchattacks.DeepFool(peer, steps=50, overshoot=0.02)
    c = torchattacks.CW(peer, c=1.0, kappa=0.0, steps=50, lr=0.01)
    fns = {
        "cnnlens deepfool": lambda: res.__setitem__("deepfool", deepfool(model, x, y, steps=50, overshoot=0.02)),
        "torchattacks DeepFool": lambda: res.__setitem__("DeepFool", df.forward_return_target_labels(x, y)),
        "cnnlens cw": lambda: res.__setitem__("cw", cw(model, x, y, c=1.0, steps=50, lr=0.01)),
        "torchattacks CW": lambda: res.__setitem__("CW", c(x, y)),
    }
    t = interleaved(fns, repeat)
    xa, lab = res["DeepFool"]
    with torch.no_grad():
        cw_ok = model(res["CW"]).argmax(1) != y
    l2 = lambda a: (a - x).flatten(1).norm(dim=1)  # noqa: E731
    return {
        "deepfool": {
            "ours_s": t["cnnlens deepfool"],
            "peer_s": t["torchattacks DeepFool"],
            "peer/ours": t["torchattacks DeepFool"] / t["cnnlens deepfool"],
            "success": (res["deepfool"].success_rate, float((lab != y).float().mean())),
            "median_l2": (float(res["deepfool"].l2().median()), float(l2(xa).median())),
        },
        "cw": {
            "ours_s": t["cnnlens cw"],
            "peer_s": t["torchattacks CW"],
            "peer/ours": t["torchattacks CW"] / t["cnnlens cw"],
            "success": (res["cw"].success_rate, float(cw_ok.float().mean())),
            "median_l2": (float(res["cw"].l2()[res["cw"].success].median()), float(l2(res["CW"])[cw_ok].median())),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    repeat = 2 if args.quick else 3
    out = {
        "cams": bench_cams(repeat, 4 if args.quick else 8),
        "attacks": bench_attacks(repeat, 16 if args.quick else 32),
    }
    print("CAM zoo on efficientnet-lite0 at bn2 (pytorch-grad-cam / cnnlens; min correlation over the batch):")
    for k, v in out["cams"].items():
        print(
            f"  {k:9s} cnnlens {v['ours_s'] * 1e3:7.1f} ms  pytorch-grad-cam {v['peer_s'] * 1e3:7.1f} ms  "
            f"ratio {v['peer/ours']:.2f}×  corr {v['min_corr']:.4f}"
        )
    print("minimum-norm attacks on digits-cnn (torchattacks / cnnlens; success and median L2: cnnlens, torchattacks):")
    for k, v in out["attacks"].items():
        print(
            f"  {k:8s} cnnlens {v['ours_s'] * 1e3:7.1f} ms  torchattacks {v['peer_s'] * 1e3:7.1f} ms  "
            f"ratio {v['peer/ours']:.2f}×  success {v['success'][0]:.2f}/{v['success'][1]:.2f}  "
            f"median L2 {v['median_l2'][0]:.3f}/{v['median_l2'][1]:.3f}"
        )
    return out


if __name__ == "__main__":
    main()
