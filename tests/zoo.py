"""The conformance zoo: architectures (one line each) and an independent reference for every attribution method.

An architecture is one :class:`Arch` line in :data:`ZOO`: a name, a builder (``tv(...)`` for torchvision,
``tm(...)`` for timm, or a hand-written class), the input size, the layout of its default CAM layer (how
pytorch-grad-cam must reshape it) and, for the expensive ones, ``slow=True`` (run by ``make test-zoo``).
:func:`prepared` builds it once per process: random weights (seeded), batch-norm running statistics measured on
random images (train mode, ``momentum=None``: the cumulative average), and a head re-drawn and scaled so the logits
spread by about 3 (otherwise several models give near-constant logits and every comparison means nothing).

References (all independent of cnnlens' code paths):

* saliency, gradient × input, Integrated Gradients, SmoothGrad (the same seeded noise): plain autograd on a float64
  copy of the model, contiguous, with every in-place module made out of place; beside it the same computation in
  plain contiguous float32 — cnnlens' default path must be within 10× of plain float32's error (+1e-6);
* guided backprop: plain autograd on the float64 copy under a torch-function mode that guides every ReLU/ReLU6
  application (module, functional, in place): gradient 1[g > 0] · local derivative · g;
* occlusion (default: incremental): the whole-model path (``incremental=False``) in float64;
* CAM, Grad-CAM, XGrad-CAM, HiResCAM, LayerCAM: pytorch-grad-cam on the float64 copy at the layer cnnlens chose
  (correlation of the maps: pytorch-grad-cam scales each map to [0, 1]); CAM against pytorch-grad-cam's Grad-CAM
  (equal up to scale on a GAP + linear head); Grad-CAM++ by hand in float64 (pytorch-grad-cam's ε = 1e-7 dominates
  where gradients are small); guided Grad-CAM: the guided reference times Grad-CAM by hand in float64;
* Ablation-CAM and Score-CAM: the channel ablations / masked inputs run by hand on the float64 copy, in the layer's
  own layout (where the layer has at most :data:`HAND_CHANNELS` channels);
* Eigen-CAM, augmented Grad-CAM: no peer computes them the same way; checked finite, and for side effects.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

K = 10  #: classes of every zoo model
N = 1  #: images per call (batches = per-sample is tests/test_attribution_contract.py's)
HAND_CHANNELS = 64

#: cost settings only (every path choice — layout, layer, incremental, batch size — is left at its default)
COST = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"n": 4},
    "augmented_gradcam": {"augmentations": 4, "steps": 10},
}


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]
    size: int = 64
    layout: str = "nchw"  #: the default CAM layer's output: "nchw", "nhwc" or "tokens" (prefix tokens first)
    slow: bool = False  #: run by `make test-zoo` only
    prefix: int = 0  #: prefix (class) tokens of a token layout
    #: method → reason, for failures that are known and being fixed elsewhere (strict xfail)
    known: dict = field(default_factory=dict, hash=False, compare=False)


def tv(name: str, **kw) -> Callable[[], nn.Module]:
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=K, **kw)

    return build


def tm(name: str, **kw) -> Callable[[], nn.Module]:
    def build():
        import timm

        return timm.create_model(name, pretrained=False, num_classes=K, **kw)

    return build


# --------------------------------------------------------------------------------- hand-written patterns


class ViewLeNet(nn.Module):
    """``x.view(x.size(0), -1)`` right after the last conv block (LeNet/AlexNet)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 12, 5)
        self.pool1, self.pool2 = nn.MaxPool2d(2), nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(12 * 13 * 13, 32), nn.Linear(32, K)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


class FunctionalBlock(nn.Module):
    """A ResNet-style block with three ReLU applications, two of them functional (one in place)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.c1, self.b1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = self.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        x = torch.relu_(x + y)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InplaceResidual(nn.Module):
    """``out += identity`` and in-place ReLU modules, as torchvision writes them."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.c1, self.b1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        x = self.relu(self.bn(self.stem(x)))
        out = self.b1(self.c1(x))
        out += x
        out = self.relu2(out)
        return self.fc(self.pool(out).flatten(1))


class ShapeBranch(nn.Module):
    """A Python branch on the input's shape (torch.fx cannot trace it)."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 3, 2, stride=2)
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.act = nn.ReLU()
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        if x.shape[-1] > 48:
            x = self.down(x)
        return self.fc(self.act(self.bn(self.conv(x))).mean((2, 3)))


class SharedModules(nn.Module):
    """One conv and one max-pool used twice (a LeNet that reuses its pooling layer)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.conv = nn.Conv2d(12, 12, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(12, 16, 3, padding=1)
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        x = self.pool(self.act(self.stem(x)))
        x = self.act(self.conv(x))
        x = self.pool(self.act(self.conv(x)))
        x = self.act(self.head(x))
        return self.fc(x.mean((2, 3)))


class DictOut(nn.Module):
    """Returns ``{"logits": ...}``: every method must refuse in one line."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, K)

    def forward(self, x):
        return {"logits": self.fc(self.act(self.conv(x)).mean((2, 3)))}


class LastDimNorm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):  # N×H×W×C → N×H×W×C
        return self.norm(x)


class ChannelsLastBlock(nn.Module):
    """ConvNeXt-style: a LayerNorm over the last dimension of N×H×W×C with C equal to the grid width (16)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = LastDimNorm(16)
        self.pw1, self.act, self.pw2 = nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)
        self.head = nn.Linear(16, K)

    def forward(self, x):
        x = self.stem(x)  # N×16×16×16 at 64²
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))  # N×H×W×C
        y = self.pw2(self.act(self.pw1(y))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


CAMS = (
    "cam",
    "gradcam",
    "gradcam_pp",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
    "guided_gradcam",
    "augmented_gradcam",
    "ablation_cam",
    "score_cam",
)
GUIDED = ("guided_backprop", "guided_gradcam")
PEER_CAMS = ("gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam")


def _all(methods, reason):
    return {m: reason for m in methods}


#: one line per architecture
ZOO = [
    # torchvision
    Arch("tv.resnet18", tv("resnet18"), slow=True),
    Arch("tv.vgg11_bn", tv("vgg11_bn"), slow=True),
    Arch("tv.alexnet", tv("alexnet")),
    Arch("tv.squeezenet1_1", tv("squeezenet1_1")),
    Arch("tv.densenet121", tv("densenet121"), slow=True),
    Arch("tv.googlenet", tv("googlenet", aux_logits=False, init_weights=True), slow=True),
    Arch("tv.mobilenet_v2", tv("mobilenet_v2"), slow=True),
    Arch("tv.mobilenet_v3_small", tv("mobilenet_v3_small")),
    Arch("tv.shufflenet_v2_x0_5", tv("shufflenet_v2_x0_5")),
    Arch("tv.mnasnet0_5", tv("mnasnet0_5")),
    Arch("tv.efficientnet_b0", tv("efficientnet_b0"), slow=True),
    Arch("tv.regnet_x_400mf", tv("regnet_x_400mf"), slow=True),
    Arch("tv.convnext_tiny", tv("convnext_tiny"), slow=True),
    Arch("tv.resnext50_32x4d", tv("resnext50_32x4d"), slow=True),
    Arch("tv.swin_t", tv("swin_t"), layout="nhwc", slow=True),
    # timm
    Arch("timm.ghostnet_100", tm("ghostnet_100"), slow=True),
    Arch("timm.mixnet_s", tm("mixnet_s"), slow=True),
    Arch("timm.rexnet_100", tm("rexnet_100"), slow=True),
    Arch("timm.dla34", tm("dla34"), slow=True),
    Arch("timm.hrnet_w18_small", tm("hrnet_w18_small"), slow=True),
    Arch("timm.cspresnet50", tm("cspresnet50"), slow=True),
    Arch("timm.repvgg_a0", tm("repvgg_a0"), slow=True),
    Arch("timm.hgnetv2_b0", tm("hgnetv2_b0"), slow=True),
    Arch("timm.mobilevit_xxs", tm("mobilevit_xxs"), slow=True),
    Arch("timm.deit_tiny", tm("deit_tiny_patch16_224", img_size=64), layout="tokens", prefix=1),
    Arch("timm.resnet10t", tm("resnet10t")),
    Arch("timm.lcnet_050", tm("lcnet_050")),
    Arch("timm.efficientvit_b0", tm("efficientvit_b0"), slow=True),
    Arch("timm.convnextv2_atto", tm("convnextv2_atto"), slow=True),
    # hand-written patterns (never slow: every pattern runs in `make test`)
    Arch("view_after_conv", ViewLeNet),
    Arch("functional_relus", FunctionalBlock),
    Arch("inplace_residual", InplaceResidual),
    Arch("shape_branch", ShapeBranch),
    Arch("shared_modules", SharedModules),
    Arch("dict_output", DictOut),
    Arch("channels_last_c_eq_w", ChannelsLastBlock, layout="nhwc"),
]
BY_NAME = {a.name: a for a in ZOO}


# --------------------------------------------------------------------------------------- preparation


def logits(out):
    return out["logits"] if isinstance(out, dict) else out


def _head(model: nn.Module) -> nn.Module | None:
    """The last Linear (or 1×1 conv) with K outputs: the classifier."""
    found = None
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == K or isinstance(m, nn.Conv2d) and m.out_channels == K:
            found = m
    return found


@torch.no_grad()
def _calibrate(model: nn.Module, size: int, g: torch.Generator) -> None:
    """Batch-norm running statistics of random images (cumulative average), then a head that spreads the logits."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for _ in range(3):
        model(torch.rand(8, 3, size, size, generator=g))
    for m in bns:
        m.momentum = 0.1
    model.eval()
    head = _head(model)
    if head is not None:
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) / head.weight[0].numel() ** 0.5)
        if head.bias is not None:
            head.bias.zero_()
    spread = logits(model(torch.rand(8, 3, size, size, generator=g))).std(1).mean()
    if head is not None and spread > 0:
        head.weight.mul_(3 / spread)


class OutOfPlaceMode(TorchFunctionMode):
    """In-place tensor ops of a forward run out of place (``F.relu(x, inplace=True)``, ``relu_``, ``+=``), so a
    layer's recorded output stays the layer's own value (DenseNet ends its features with an in-place ReLU)."""

    SWAP = {
        torch.relu_: torch.relu,
        F.relu_: torch.relu,
        torch.Tensor.relu_: torch.relu,
        torch.Tensor.__iadd__: torch.Tensor.__add__,
        torch.Tensor.__isub__: torch.Tensor.__sub__,
        torch.Tensor.__imul__: torch.Tensor.__mul__,
        torch.Tensor.add_: torch.Tensor.add,
        torch.Tensor.mul_: torch.Tensor.mul,
        torch.Tensor.clamp_: torch.Tensor.clamp,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.get("inplace") is True:
            kwargs["inplace"] = False
        return self.SWAP.get(func, func)(*args, **kwargs)


def _out_of_place(model: nn.Module) -> nn.Module:
    """In-place modules made out of place, and the forward run under :class:`OutOfPlaceMode`."""
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    forward = model.forward

    def out_of_place(*a, **k):
        with OutOfPlaceMode():
            return forward(*a, **k)

    model.forward = out_of_place
    return model


@dataclass
class Prepared:
    arch: Arch
    model: nn.Module  # float32, eval: what cnnlens gets
    twin32: nn.Module  # float32 copy, out of place: plain autograd
    twin64: nn.Module  # float64 copy, out of place: the reference
    x: torch.Tensor  # N×3×S×S in [0, 1]


@functools.cache
def prepared(name: str) -> Prepared:
    arch = BY_NAME[name]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = arch.build()
    _calibrate(model, arch.size, g)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    twin32 = _out_of_place(copy.deepcopy(model))
    twin64 = _out_of_place(copy.deepcopy(model).double())
    x = torch.rand(N, 3, arch.size, arch.size, generator=g)
    return Prepared(arch, model, twin32, twin64, x)


# ------------------------------------------------------------------------------------- gradient references


def input_grad(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """∂ logit_c / ∂x by plain autograd, contiguous input, in the model's dtype."""
    x = x.detach().clone().contiguous().requires_grad_(True)
    out = logits(model(x))
    (g,) = torch.autograd.grad(out.gather(1, classes.view(-1, 1)).sum(), x)
    return g


def ig_points(steps: int):
    """The trapezoid rule's points and weights on [0, 1]."""
    a = torch.linspace(0, 1, steps, dtype=torch.float64)
    w = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
    w[0] = w[-1] = 0.5 / (steps - 1)
    return a, w


def ig_reference(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrated Gradients from the black baseline by the trapezoid rule, channels summed, by plain autograd with
    all points of an image in one batch (as the method batches them: in float32, which ReLUs a point near a kink
    flips depends on the batch, for plain autograd as for any other)."""
    x = x.to(next(model.parameters()).dtype)
    a, w = ig_points(steps)
    out = []
    for xi, ci in zip(x, classes, strict=True):
        pts = a.to(x.dtype).view(-1, 1, 1, 1) * xi
        g = input_grad(model, pts, ci.expand(steps))
        out.append((xi * (w.to(x.dtype).view(-1, 1, 1, 1) * g).sum(0)).sum(0))
    return torch.stack(out)


def reference(method: str, model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The maps (N×H×W) of a gradient method by plain autograd in the dtype of ``model``, settings as :data:`COST`
    and the methods' defaults (IG: black baseline, trapezoid, channels summed; SmoothGrad: σ 0.15, seed 0)."""
    x = x.to(next(model.parameters()).dtype)
    if method == "saliency":
        return input_grad(model, x, classes).abs().amax(1)
    if method == "gradient_x_input":
        return (input_grad(model, x, classes) * x).sum(1)
    if method == "integrated_gradients":
        return ig_reference(model, x, classes, COST[method]["steps"])
    if method == "smoothgrad":  # the noisy copies of an image in one batch, as for IG
        n = COST[method]["n"]
        eps = torch.randn((n, *x.shape[1:]), generator=torch.Generator().manual_seed(0)).to(x.dtype) * 0.15
        return torch.stack(
            [input_grad(model, xi + eps, ci.expand(n)).abs().amax(1).mean(0) for xi, ci in zip(x, classes, strict=True)]
        )
    raise KeyError(method)


def guided_reference(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(guided gradient N×C×H×W, how many ReLU applications were guided) by plain autograd under :class:`GuidedMode`."""
    with GuidedMode() as mode:
        g = input_grad(model, x.to(next(model.parameters()).dtype), classes)
    return g, mode.count


class _Guide(torch.autograd.Function):
    """y = f(x) for a rectifier f; backward: 1[g > 0] · f'(x) · g."""

    @staticmethod
    def forward(ctx, x, hi):
        ctx.save_for_backward(x)
        ctx.hi = hi
        return x.clamp(0, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        inside = (x > 0) if ctx.hi is None else (x > 0) & (x < ctx.hi)
        return g.clamp_min(0) * inside, None


class GuidedMode(TorchFunctionMode):
    """Every ReLU/ReLU6 application (module, functional, in place) guided; ``count`` of them."""

    RELU = {F.relu, torch.relu, torch.relu_, F.relu_, torch.Tensor.relu, torch.Tensor.relu_}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.RELU:
            self.count += 1
            return _Guide.apply(args[0], None)
        if func is F.relu6:
            self.count += 1
            return _Guide.apply(args[0], 6.0)
        if func is F.hardtanh:
            lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
            hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
            if lo == 0:
                self.count += 1
                return _Guide.apply(args[0], float(hi))
        return func(*args, **kwargs)


# ----------------------------------------------------------------------------------------- CAM references


def reshape_for(arch: Arch):
    """pytorch-grad-cam's reshape_transform for the architecture's CAM layer layout."""
    if arch.layout == "nhwc":  # a layer already N×C×h×w (torchvision Swin's final permute) stays as it is
        return lambda t: t if t.shape[2] == t.shape[3] != t.shape[1] else t.permute(0, 3, 1, 2)
    if arch.layout == "tokens":

        def tokens(t):
            t = t[:, arch.prefix :]
            s = int(round(t.shape[1] ** 0.5))
            return t.reshape(t.shape[0], s, s, t.shape[2]).permute(0, 3, 1, 2)

        return tokens
    return None


def pgc(method: str, arch: Arch, model: nn.Module, x: torch.Tensor, layer: str, classes) -> torch.Tensor:
    """pytorch-grad-cam's map (N×H×W, scaled to [0, 1] per image as it does) at ``layer``."""
    import pytorch_grad_cam as P
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {
        "gradcam": P.GradCAM,
        "gradcam_pp": P.GradCAMPlusPlus,
        "xgradcam": P.XGradCAM,
        "hirescam": P.HiResCAM,
        "layercam": P.LayerCAM,
    }[method]
    with cls(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=reshape_for(arch)) as c:
        out = c(input_tensor=x.to(torch.float64), targets=[ClassifierOutputTarget(int(k)) for k in classes])
    return torch.from_numpy(out).double()


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps; 1 when both are constant, 0 when only one is."""
    a, b = a.double().flatten(), b.double().flatten()
    sa, sb = float(a.std()), float(b.std())
    if sa <= 1e-12 * (float(a.abs().max()) + 1e-30) or sb <= 1e-12 * (float(b.abs().max()) + 1e-30):
        return (
            1.0
            if (sa <= 1e-12 * (float(a.abs().max()) + 1e-30)) == (sb <= 1e-12 * (float(b.abs().max()) + 1e-30))
            else 0.0
        )
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def layer_output(model: nn.Module, x: torch.Tensor, layer: str, edit=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the layer's output) by a forward hook; ``edit(A)`` replaces the output when given."""
    seen = {}

    def hook(m, i, o):
        seen["A"] = o
        return edit(o) if edit is not None else None

    h = model.get_submodule(layer).register_forward_hook(hook)
    try:
        out = logits(model(x))
    finally:
        h.remove()
    return out, seen["A"]


def gradcam_pp_reference(arch: Arch, model, x, layer, classes, plus: bool = True) -> torch.Tensor:
    """Grad-CAM++ at the layer's grid by hand in float64: ReLU(Σ_k Σ_ij a_ij ReLU(G_ij) A_k),
    a = G² / (2G² + Σ_ab A_ab G³) (0 where G = 0) — pytorch-grad-cam's formula without its ε = 1e-7, which
    dominates the denominator where gradients are small (random weights: G ≈ 1e-3). ``plus=False``: Grad-CAM,
    ReLU(Σ_k mean_ij(G) A_k)."""
    x = x.double().requires_grad_(True)
    y, A = layer_output(model, x, layer)
    (G,) = torch.autograd.grad(y.gather(1, classes.view(-1, 1)).sum(), A)
    A, G = A.detach(), G.detach()
    t = reshape_for(arch)
    if t is not None:
        A, G = t(A), t(G)
    if not plus:
        return (G.mean((2, 3))[:, :, None, None] * A).sum(1).clamp_min(0)
    g2, g3 = G * G, G * G * G
    den = 2 * g2 + A.sum((2, 3), keepdim=True) * g3
    a = torch.where((G != 0) & (den != 0), g2 / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(G))
    w = (a * G.clamp_min(0)).sum((2, 3))
    return (w[:, :, None, None] * A).sum(1).clamp_min(0)


def _grid(arch: Arch, A: torch.Tensor) -> torch.Tensor:
    t = reshape_for(arch)
    return A if t is None else t(A)


@torch.no_grad()
def ablation_reference(arch: Arch, model, x, layer, classes) -> torch.Tensor:
    """ReLU(Σ_k w_k A_k), w_k = (y_c − y_c with channel k zeroed) / y_c, at the layer's grid (N×h×w); channel k
    zeroed in the layer's own layout (patch tokens only for a token layer)."""
    x = x.double()
    y, A = layer_output(model, x, layer)
    yc = y.gather(1, classes.view(-1, 1)).squeeze(1)
    C = _grid(arch, A).shape[1]
    w = torch.empty(A.shape[0], C, dtype=torch.float64)
    for k in range(C):

        def zero(o, k=k):
            o = o.clone()
            if arch.layout == "nhwc":
                o[..., k] = 0
            elif arch.layout == "tokens":
                o[:, arch.prefix :, k] = 0
            else:
                o[:, k] = 0
            return o

        yk, _ = layer_output(model, x, layer, zero)
        w[:, k] = (yc - yk.gather(1, classes.view(-1, 1)).squeeze(1)) / yc
    return (w[:, :, None, None] * _grid(arch, A)).sum(1).clamp_min(0)


@torch.no_grad()
def score_reference(arch: Arch, model, x, layer, classes) -> torch.Tensor:
    """ReLU(Σ_k w_k A_k), w = softmax_k y_c(x ⊙ M_k), M_k = A_k upsampled (bilinear, corners aligned as in
    pytorch-grad-cam's ScoreCAM) and min-max scaled."""
    x = x.double()
    A = _grid(arch, layer_output(model, x, layer)[1])
    M = F.interpolate(A, size=x.shape[-2:], mode="bilinear", align_corners=True)  # as pytorch-grad-cam's ScoreCAM
    lo, hi = M.amin((2, 3), keepdim=True), M.amax((2, 3), keepdim=True)
    M = torch.where(hi > lo, (M - lo) / (hi - lo).clamp_min(1e-300), torch.zeros_like(M))
    s = torch.empty(A.shape[:2], dtype=torch.float64)
    for k in range(A.shape[1]):
        s[:, k] = logits(model(x * M[:, k : k + 1])).gather(1, classes.view(-1, 1)).squeeze(1)
    return (s.softmax(1)[:, :, None, None] * A).sum(1).clamp_min(0)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a − ref| / max |ref|."""
    a, ref = a.double(), ref.double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


# ------------------------------------------------------------------------------------------- one evaluation

GRADIENTS = ("saliency", "gradient_x_input", "integrated_gradients", "smoothgrad")


def constant(m: torch.Tensor) -> bool:
    """Every image's map is constant (to 1e-6 of its largest value)."""
    flat = m.detach().double().flatten(1)
    return bool(((flat.amax(1) - flat.amin(1)) <= 1e-6 * flat.abs().amax(1).clamp_min(1e-30)).all())


def spreads(p: Prepared, layer: str | None) -> bool:
    """``layer`` is an adaptive pooling that only spreads a smaller grid over a larger one (AlexNet's and VGG's
    ``avgpool`` at 64²): a map read there has no more detail than the grid before it."""
    if layer is None:
        return False
    mod = p.twin64.get_submodule(layer)
    if not isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return False
    seen = {}
    h = mod.register_forward_hook(lambda m, i, o: seen.update(i=i[0].shape, o=o.shape))
    try:
        with torch.no_grad():
            p.twin64(p.x.double())
    finally:
        h.remove()
    return seen["i"][-1] * seen["i"][-2] < seen["o"][-1] * seen["o"][-2]


def evaluate(p: Prepared, method: str) -> dict:
    """Run cnnlens' ``method`` with its defaults (cost settings :data:`COST`) on ``p`` and compare it with its
    reference. Returns ``outcome`` ("ok", "refused"), ``message`` (a refusal's), ``err`` (against the reference:
    relative max error, or 1 − the smallest per-image correlation for the CAMs), ``plain32`` (plain float32's error
    against the same reference, where there is one), ``guided`` (ReLU applications the reference guided),
    ``constant`` (the map at the layer is constant), ``layer``, ``path``."""
    from cnnlens.attribution import METHODS

    row = {
        "outcome": "ok",
        "message": None,
        "err": None,
        "plain32": None,
        "guided": None,
        "constant": None,
        "layer": None,
        "path": None,
    }
    kw = dict(COST.get(method, {}))
    if method == "occlusion":  # 25 window positions (the default, window S/8 and stride S/16, has 225)
        kw = {"window": p.arch.size // 4, "stride": 3 * p.arch.size // 16}
    try:
        e = METHODS[method](p.model, p.x, **kw)
    except (ValueError, TypeError) as err:
        row.update(outcome="refused", message=str(err))
        if method in GUIDED and "logits" not in str(err):
            row["guided"] = guided_reference(p.twin64, p.x, logits(p.twin64(p.x.double())).argmax(1))[1]
        return row
    row["layer"], row["path"] = e.layer, e.settings.get("path")
    cls = e.classes
    if not torch.isfinite(e.maps).all():
        row.update(outcome="non-finite")
        return row
    if method in GRADIENTS:
        ref = reference(method, p.twin64, p.x, cls)
        row["err"] = rel(e.maps, ref)
        row["plain32"] = rel(reference(method, p.twin32, p.x, cls), ref)
    elif method == "guided_backprop":
        g64, row["guided"] = guided_reference(p.twin64, p.x, cls)
        g32, _ = guided_reference(p.twin32, p.x, cls)
        ref = g64.abs().amax(1)
        row["err"], row["plain32"] = rel(e.maps, ref), rel(g32.abs().amax(1), ref)
    elif method == "occlusion":
        from cnnlens.attribution import occlusion

        ref = occlusion(p.twin64, p.x.double(), cls, incremental=False, **kw).maps
        row["err"] = rel(e.maps, ref)
        row["plain32"] = rel(occlusion(p.model, p.x, cls, incremental=False, **kw).maps, ref)
    else:
        raw = e.extras.get("pre_relu", e.raw) if e.raw is not None else e.maps
        row["constant"] = constant(raw)
        row["spreads"] = spreads(p, e.layer)
        if method == "gradcam_pp":
            row["err"] = rel(e.raw, gradcam_pp_reference(p.arch, p.twin64, p.x, e.layer, cls))
        elif method in PEER_CAMS or method in ("cam", "guided_gradcam"):
            ref = pgc("gradcam" if method in ("cam", "guided_gradcam") else method, p.arch, p.twin64, p.x, e.layer, cls)
            mine = e.maps
            if method == "cam":  # CAM = Grad-CAM before the ReLU on a GAP + linear head, up to a positive scale
                from cnnlens.attribution.common import upsample

                mine = upsample(e.raw.clamp_min(0), tuple(p.x.shape[-2:]))
            if method == "guided_gradcam":  # pytorch-grad-cam's maps are min-max scaled: Grad-CAM by hand instead
                from cnnlens.attribution.common import upsample

                g64, row["guided"] = guided_reference(p.twin64, p.x, cls)
                cam = upsample(gradcam_pp_reference(p.arch, p.twin64, p.x, e.layer, cls, plus=False), p.x.shape[-2:])
                row["err"] = rel(e.maps, (g64 * cam[:, None]).abs().amax(1))
            else:
                row["err"] = 1 - min(corr(a, b) for a, b in zip(mine, ref, strict=True))
        elif method in ("ablation_cam", "score_cam") and e.raw is not None:
            A = _grid(p.arch, layer_output(p.twin64, p.x.double(), e.layer)[1])
            if A.shape[1] <= HAND_CHANNELS:
                fn = ablation_reference if method == "ablation_cam" else score_reference
                row["err"] = rel(e.raw, fn(p.arch, p.twin64, p.x, e.layer, cls))
    return row


#: 1 − correlation allowed against pytorch-grad-cam; relative error allowed against a by-hand float64 CAM
CORR_TOL, CAM_TOL = 1e-3, 1e-3


def verdict(p: Prepared, method: str, row: dict) -> str | None:
    """Why ``row`` (from :func:`evaluate`) fails the zoo's promise, or None when it passes."""
    if p.arch.name == "dict_output":
        if row["outcome"] != "refused" or "logits" not in row["message"]:
            return f"a dict output must be refused with a word on the logits, got {row}"
        return None if "\n" not in row["message"] else "refusal is more than one line"
    if row["outcome"] == "refused":
        if "\n" in row["message"]:
            return f"refusal is more than one line: {row['message']!r}"
        if method == "cam":
            return None  # CAM needs a GAP + linear head; saying so in one line is the promise
        if method in GUIDED and row["guided"] == 0:
            return None  # no ReLU application to guide
        return f"refused: {row['message']}"
    if row["outcome"] != "ok":
        return row["outcome"]
    if row.get("spreads"):
        return f"the default layer {row['layer']!r} only spreads a smaller grid"
    if row["constant"]:
        return f"the map at the default layer {row['layer']!r} is constant"
    if row["err"] is None:
        return None
    if row["plain32"] is not None:
        bound = 10 * row["plain32"] + 1e-6
        return None if row["err"] <= bound else f"error {row['err']:.2e} > 10 × plain float32's {row['plain32']:.2e}"
    tol = CORR_TOL if method in ("cam", "gradcam", "xgradcam", "hirescam", "layercam") else CAM_TOL
    return None if row["err"] <= tol else f"error {row['err']:.2e} > {tol:.0e} against the reference"
