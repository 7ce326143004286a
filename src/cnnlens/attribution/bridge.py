"""Any Captum attribution method as a cnnlens method: ``captum(model, x, "DeepLift")`` → :class:`Explanation`.

Captum (Kokhlikyan et al. 2020) implements DeepLIFT, GradientSHAP, LRP, LIME,
KernelSHAP, feature ablation and many more. The bridge runs one of them on a cnnlens
model and returns a cnnlens :class:`~cnnlens.results.Explanation`, so it gets the
faithfulness scores, figures, the report and ``cnnlens explain``:

* the target is a cnnlens target (``"predicted"``, ``"second"``, ``"true"`` with
  ``y=``, an index, a name, per-sample classes), resolved to one class per image
  and passed to Captum as ``target``;
* attributions (N×C×H×W) are summed over channels (``reduce="signed"``; or
  ``abs_max``/``l2``) into N×H×W maps; a layer method (``LayerGradCam``, ...)
  gets ``layer=`` and its N×C×h×w output is summed over channels and upsampled;
* baselines may be given as a cnnlens fill (``"blur"``, ``"grey"``, ``"black"``,
  a number); methods that require baselines and get none use a black and a grey
  image; perturbation methods (LIME, KernelSHAP, feature ablation, Shapley
  sampling) get a ``feature_mask`` of ``blocks``×``blocks`` squares unless one is
  given (Captum's default, one feature per pixel, needs ~H·W forwards);
* the model runs inside :class:`~cnnlens.tap.guarded`: whatever Captum does to it
  (hooks, LRP's ``rule`` attributes, flags) is undone, also when Captum raises.

Keyword arguments go to the Captum class's constructor when it takes them
(``multiply_by_inputs``, ``interpretable_model``), else to ``attribute``
(``n_samples``, ``stdevs``, ``sliding_window_shapes``, ...).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import re
import threading
import warnings
from typing import Any

import torch
from torch import nn

from ..autograd import needs_autograd
from ..extras import require
from ..models.spec import Normalize
from ..results import Explanation
from ..tap import guarded, resolve_layer
from ..traced import CallSites, Unsupported
from .common import check_reduce, finish, pick_classes, pixel_fill, prepare, reduce_channels, upsample
from .completeness import completeness

# Late (CONTRIBUTING.md, Imports): the optional captum, in _lrp_rules and captum_rules (elsewhere through require).

log = logging.getLogger(__name__)

_NO_DEFAULT = object()


def _captum_attr():
    return require("captum", "captum.attr", what="the Captum bridge")


def captum_class(method: Any) -> type[Any]:
    """A Captum attribution class from its name (``"DeepLift"``, case-insensitive) or the class itself."""
    ca = _captum_attr()
    if isinstance(method, type):
        if not hasattr(method, "attribute"):
            raise TypeError(f"{method.__name__} is not a Captum attribution class (it has no attribute() method)")
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a Captum class or its name, e.g. 'DeepLift', got {type(method).__name__}")
    known = {
        n.lower(): getattr(ca, n)
        for n in dir(ca)
        if isinstance(getattr(ca, n), type) and hasattr(getattr(ca, n), "attribute")
    }
    key = method.strip().lower().replace("_", "").replace("-", "")
    if key not in known:
        close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
        names = [known[c].__name__ for c in close]
        hint = f"did you mean {', '.join(names)}?" if names else "e.g. DeepLift, GradientShap, LRP, Lime, KernelShap"
        raise ValueError(f"captum.attr has no attribution class {method!r}; {hint}")
    return known[key]


#: Captum warnings that say nothing to a cnnlens user (the bridge does what they warn about on purpose)
_NOISE = (
    r"Input Tensor \d+ did not already require gradients",
    r"Setting forward, backward hooks and attributes",
    r"You are providing multiple inputs for Lime",
    r"Setting backward hooks on ReLU activations",
)


def _lrp_rules(net: nn.Module, settings: dict, names: dict | None = None) -> None:
    """Give cnnlens's normalisation layer (an affine map per channel) LRP's identity rule, for this call only
    (on the call-site copy; on the model, the guard removes the ``rule`` attribute afterwards)."""
    from captum.attr._utils.lrp_rules import IdentityRule

    named = [n for n, m in net.named_modules() if isinstance(m, Normalize) and not hasattr(m, "rule")]
    for n in named:
        net.get_submodule(n).rule = IdentityRule()
    if named:
        shown = [names.get(n, n) if names else n for n in named]
        settings["lrp_rules"] = f"identity for the normalisation layer {', '.join(shown)}; Captum's defaults elsewhere"


#: Captum methods that attach their rules to modules: they run on a copy with one module per call site
ON_CALL_SITES = frozenset(
    {
        "DeepLift",
        "DeepLiftShap",
        "LayerDeepLift",
        "LayerDeepLiftShap",
        "LRP",
        "LayerLRP",
        "GuidedBackprop",
        "Deconvolution",
        "GuidedGradCam",
    }
)
#: element-wise activations Captum's DeepLift has no rule for: they get its rescale rule, Δy/Δx times the
#: multiplier of y (Shrikumar et al. 2017, §3.5.1: valid for any element-wise non-linearity)
DEEPLIFT_RESCALE = (nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Mish, nn.GELU, nn.SELU, nn.CELU, nn.Softsign)
#: layers Captum's LRP has no rule for that change no relevance: element-wise activations pass the relevance
#: of their output to their input unchanged — the rule Captum applies to ReLU, and LRP's treatment of every
#: activation, whose rules redistribute over the linear layers only (Montavon et al. 2019, "Layer-wise
#: relevance propagation: an overview", §10.2; Bach et al. 2015) —; identity and dropout likewise
LRP_PASS = (
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.Mish,
    nn.GELU,
    nn.ELU,
    nn.LeakyReLU,
    nn.SELU,
    nn.CELU,
    nn.Softplus,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout2d,
)
_RULES_LOCK = threading.Lock()


@contextlib.contextmanager
def captum_rules():
    """Captum's rule tables extended by :data:`DEEPLIFT_RESCALE` and :data:`LRP_PASS` for one call.

    Captum keys its rules by module type in module-level tables; the entries it lacks are added on
    entry and removed on exit (under a lock, so two threads never see half a table); the entries it
    has are never changed.
    """
    from captum.attr._core import deep_lift, lrp

    with _RULES_LOCK:
        dl = [t for t in DEEPLIFT_RESCALE if t not in deep_lift.SUPPORTED_NON_LINEAR]
        lr = [t for t in LRP_PASS if t not in lrp.SUPPORTED_NON_LINEAR_LAYERS]
        try:
            for t in dl:
                deep_lift.SUPPORTED_NON_LINEAR[t] = deep_lift.nonlinear
            lrp.SUPPORTED_NON_LINEAR_LAYERS.extend(lr)
            yield
        finally:
            for t in dl:
                deep_lift.SUPPORTED_NON_LINEAR.pop(t, None)
            for t in lr:
                if t in lrp.SUPPORTED_NON_LINEAR_LAYERS:
                    lrp.SUPPORTED_NON_LINEAR_LAYERS.remove(t)


def _call_sites(
    model: nn.Module,
    x: torch.Tensor,
    logits: torch.Tensor,
    method: str,
    layer_name: str | None,
    init_kw: dict,
    settings: dict,
) -> tuple[nn.Module, dict]:
    """The model as Captum needs it for ``method``: a traced copy with one module per call site
    (:class:`~cnnlens.traced.CallSites`), checked to compute the model's logits; a layer method's layer
    mapped onto it. One-line error when the model does not trace."""
    need = (
        f"Captum's {method} needs one module per call of a layer and activations written as modules "
        "(it attaches its rules to modules)"
    )
    try:
        cs = CallSites(model)
        with torch.no_grad():
            got = cs.module(x)
        if not (
            torch.is_tensor(got)
            and got.shape == logits.shape
            and torch.allclose(got.float(), logits.float(), rtol=1e-4, atol=1e-5 * float(logits.abs().max()) + 1e-6)
        ):
            raise Unsupported("the traced copy's output differs from the model's")
        if layer_name is not None:
            init_kw["layer"] = cs.layer(layer_name)
    except Unsupported as e:
        raise ValueError(
            f"{need}; cnnlens runs it on a torch.fx trace of the model, and {e}; give each call its "
            "own module (e.g. one nn.ReLU per use) or use a gradient method (IntegratedGradients)"
        ) from e
    split = {k: len(v) for k, v in cs.sites.items() if len(v) > 1}
    done = []
    if split:
        done.append(
            f"{len(split)} module(s) called more than once split per call ({', '.join(list(split)[:3])}"
            f"{', ...' if len(split) > 3 else ''})"
        )
    if cs.converted:
        done.append(f"{len(cs.converted)} functional op(s) run as modules ({', '.join(sorted(set(cs.converted)))})")
    settings["traced"] = "; ".join(done) if done else "one module per call site (nothing to split)"
    return cs.module, cs.origin


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(images[i : i + 64]) for i in range(0, images.shape[0], 64)])


def bridged_error(method: str, e: Exception) -> Exception:
    """One line naming the cause and the fix for a Captum failure (the caller chains Captum's as the cause;
    ``cnnlens --debug`` shows it)."""
    text = str(e).strip()
    first = " ".join(text.split())[:200] if text else type(e).__name__
    if "has no rule defined" in text:
        t = re.search(r"Module of type <class '([^']+)'>", text)
        kind = t.group(1).rsplit(".", 1)[-1] if t else "one of the model's layers"
        return TypeError(
            f"Captum's {method} has no rule for {kind} layers; set one on the layer "
            "(layer.rule = EpsilonRule() from captum.attr._utils.lrp_rules) or use DeepLift"
        )
    if "more than once" in text or "does not contain some of the input/output attributes" in text:
        return ValueError(
            f"Captum's {method} found a module called more than once in the forward; give each call its own module"
        )
    kind = ValueError if isinstance(e, (ValueError, TypeError, IndexError, KeyError)) else RuntimeError
    return kind(
        f"Captum's {method} failed on this model ({type(e).__name__}: {first}); check its arguments "
        f"with help(captum.attr.{method}) or try another method (cnnlens --debug shows Captum's traceback)"
    )


def block_mask(size: tuple[int, int], blocks: int, device=None) -> torch.Tensor:
    """1×1×H×W feature ids: the image cut into blocks×blocks squares (ids 0..blocks²−1, row-major)."""
    h, w = size
    rows = torch.div(torch.arange(h, device=device) * blocks, h, rounding_mode="floor")
    cols = torch.div(torch.arange(w, device=device) * blocks, w, rounding_mode="floor")
    return (rows.view(-1, 1) * blocks + cols.view(1, -1)).view(1, 1, h, w)


@needs_autograd
def captum(
    model: nn.Module,
    x: torch.Tensor,
    method: Any,
    target: Any = "predicted",
    *,
    y: torch.Tensor | None = None,
    layer: Any = None,
    reduce: str = "signed",
    blocks: int = 8,
    **kwargs: Any,
) -> Explanation:
    """Run a Captum attribution class on ``model`` and return a cnnlens :class:`Explanation`.

    ``method``: a class name in ``captum.attr`` (``"DeepLift"``, ``"GradientShap"``,
    ``"LRP"``, ``"Lime"``, ``"KernelShap"``, ``"FeatureAblation"``, ...) or the class.
    ``maps`` = Σ_channels of the attributions (``reduce``), upsampled for layer methods;
    ``raw`` = the attributions as Captum returned them; ``method`` = ``"captum:<Class>"``.
    A convergence delta, when Captum returns one, is in ``extras["delta"]``.

    >>> e = captum(model, x, "DeepLift", target="second", baselines="blur")   # doctest: +SKIP
    >>> e = captum(model, x, "KernelShap", n_samples=200)                      # doctest: +SKIP
    """
    cls = captum_class(method)
    name = f"captum:{cls.__name__}"
    reduce = check_reduce(reduce)
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks must be an integer ≥ 1 (the feature mask is blocks×blocks squares), got {blocks!r}")
    p = prepare(model, x, target, y, name)
    if not p.target.is_class:
        raise ValueError(f"{name} explains a class; give a class target (an index, 'predicted', 'second', ...)")
    init_kw, layer_name = _init_arguments(cls, model, layer, kwargs)
    settings: dict[str, Any] = {"captum_class": cls.__name__, "reduce": reduce}
    shared = _default_inputs(cls, p, blocks, kwargs, settings)
    settings.update(
        {
            k: v
            for k, v in {**init_kw, **kwargs}.items()
            if k not in ("baselines", "feature_mask", "layer") and isinstance(v, (int, float, str, bool, tuple))
        }
    )
    if layer_name:
        settings["layer"] = layer_name
    out, classes, check = _attribute(cls, model, p, layer_name, init_kw, kwargs, settings)
    delta = None
    if (
        isinstance(out, tuple)
        and len(out) == 2
        and torch.is_tensor(out[0])
        and torch.is_tensor(out[1])
        and kwargs.get("return_convergence_delta")
    ):
        out, delta = out
    if isinstance(out, tuple):
        out = out[0]
    a = out.detach().float()
    if a.dim() == 4 and a.shape[0] == p.n:
        maps = a.mean(1) if shared else reduce_channels(a, reduce)
    elif a.dim() == 3 and a.shape[0] == p.n:
        maps = a
    else:
        raise ValueError(
            f"{cls.__name__} returned attributions of shape {tuple(a.shape)}, not N×C×H×W; "
            "use an attribution method for the input or a layer"
        )
    maps = upsample(maps, p.size)
    extras = {**check, **({} if delta is None else {"delta": delta})}
    return finish(p, maps, name, classes, layer=layer_name, settings=settings, raw=a, extras=extras)


def _init_arguments(cls: type[Any], model: nn.Module, layer: Any, kwargs: dict) -> tuple[dict, str | None]:
    """The keyword arguments of ``cls``'s constructor, taken out of ``kwargs`` (the rest must be ``attribute``'s),
    with a layer method's layer; and the layer's name (None for an input method)."""
    init_params = inspect.signature(cls.__init__).parameters
    attr_params = inspect.signature(cls.attribute).parameters
    init_kw = {
        k: kwargs.pop(k) for k in list(kwargs) if k in init_params and k not in ("self", "model", "forward_func")
    }
    unknown = [
        k
        for k in kwargs
        if k not in attr_params and not any(v.kind is inspect.Parameter.VAR_KEYWORD for v in attr_params.values())
    ]
    if unknown:
        raise ValueError(f"{cls.__name__} takes no argument {unknown[0]!r}; see help(captum.attr.{cls.__name__})")
    layer_name = None
    if "layer" in init_params:
        if layer is None:
            raise ValueError(f"{cls.__name__} is a layer method; name the layer with layer=...")
        layer_name, init_kw["layer"] = resolve_layer(model, layer)
    elif layer is not None:
        raise ValueError(f"{cls.__name__} takes no layer; drop layer= (or use a Layer* class)")
    return init_kw, layer_name


def _default_inputs(cls: type[Any], p, blocks: int, kwargs: dict, settings: dict) -> bool:
    """Fill in ``kwargs``' baselines (a fill name or number in pixel units; black and grey images where the
    method needs some) and feature mask (``blocks``×``blocks`` squares), noting them in ``settings``; check that
    nothing ``attribute`` needs is missing. True if each feature spans every channel (the map takes their mean)."""
    attr_params = inspect.signature(cls.attribute).parameters
    b = kwargs.get("baselines", _NO_DEFAULT)
    if isinstance(b, (str, int, float)) and not isinstance(b, bool):
        settings["baselines"] = b
        kwargs["baselines"] = pixel_fill(b, p.x, what="baselines").expand_as(p.x).contiguous()
    elif (
        b is _NO_DEFAULT and "baselines" in attr_params and attr_params["baselines"].default is inspect.Parameter.empty
    ):
        kwargs["baselines"] = torch.cat([torch.zeros_like(p.x[:1]), torch.full_like(p.x[:1], 0.5)])
        settings["baselines"] = "black and grey images"
    elif b is not _NO_DEFAULT:
        settings["baselines"] = "given"
    shared = False
    if "feature_mask" in attr_params and "feature_mask" not in kwargs:
        kwargs["feature_mask"] = block_mask(p.size, blocks, p.x.device).expand(p.n, p.x.shape[1], *p.size).contiguous()
        settings["feature_mask"] = f"{blocks}×{blocks} blocks, each spanning every channel"
        # each block is one feature: Captum gives every pixel and channel of it the feature's value,
        # so the map takes the channel mean (= that value) rather than a sum over channels
        shared = True
        settings["reduce"] = "channel mean (one feature per block)"
    missing = [
        k
        for k, v in attr_params.items()
        if k not in ("self", "inputs")
        and v.default is inspect.Parameter.empty
        and v.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and k not in kwargs
    ]
    if missing:
        raise ValueError(f"{cls.__name__}.attribute needs {', '.join(missing)}; pass it as a keyword argument")
    return shared


def _attribute(
    cls: type[Any], model: nn.Module, p, layer_name: str | None, init_kw: dict, kwargs: dict, settings: dict
):
    """Captum's ``attribute`` on the model (or the copy the method needs), guarded, with cnnlens' extra rules:
    (what it returned, the classes explained, the completeness check's extras)."""
    with guarded(model), warnings.catch_warnings(), captum_rules():
        for text in _NOISE:
            warnings.filterwarnings("ignore", message=text)
        with torch.no_grad():
            logits = model(p.x)
        classes = pick_classes(p, logits, p.n)
        net, names = model, None
        if cls.__name__ in ON_CALL_SITES:
            net, names = _call_sites(model, p.x, logits, cls.__name__, layer_name, init_kw, settings)
        if cls.__name__ in ("LRP", "LayerLRP"):
            _lrp_rules(net, settings, names)
        try:
            obj = cls(net, **init_kw)
            # a layer method's layer output needs a graph: the parameters are frozen, so the input carries it
            inp = p.x.clone().requires_grad_(layer_name is not None)
            out = obj.attribute(inp, target=classes, **kwargs)
        except Exception as e:  # noqa: BLE001 - every Captum failure becomes one line, Captum's kept as the cause
            raise bridged_error(cls.__name__, e) from e
        found = out[0] if isinstance(out, tuple) else out
        check = (
            completeness(
                found,
                cls.__name__,
                lambda images: _logits(model, images),
                classes,
                p.x,
                kwargs.get("baselines"),
                multiply_by_inputs=init_kw.get("multiply_by_inputs", True),
            )
            if torch.is_tensor(found)
            else {}
        )
    return out, classes, check
