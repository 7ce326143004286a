"""A model's forward as a :mod:`torch.fx` graph, and a copy of it with one module per call site.

Two users:

* incremental occlusion and Ablation-/Score-CAM run the graph node by node
  (:func:`trace`, :class:`Unsupported`);
* the Captum bridge runs DeepLift, LRP, guided backprop and deconvolution on
  :func:`call_site_copy`: Captum attaches its rules to *modules* (a hook per
  ``nn.ReLU``, a ``rule`` per layer), so a module called twice (torchvision's
  ResNet blocks call their one ``relu`` twice) breaks it, and an activation
  written as a function (DenseNet's final ``F.relu``) escapes it.

Neither changes the user's model: the trace wraps it in :class:`Root` (fx stores
tensor constants there), and the copy's modules are new module objects that share
the model's parameter and buffer tensors (nothing is copied but the small dicts
that hold them).
"""

from __future__ import annotations

import copy
import operator
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .models.spec import Normalize

# Late (CONTRIBUTING.md, Imports): the optional timm, in timm_notrace.


class Unsupported(Exception):
    """The model cannot be traced or run as traced (the message says why)."""


def timm_notrace() -> tuple[set, tuple]:
    """timm's own leaf modules and functions (kept whole by the tracer); empty without timm."""
    try:
        from timm.layers import _fx as tfx  # noqa: PLC0415
    except Exception:  # pragma: no cover - timm is a dependency, but be safe
        return set(), ()
    return set(tfx.get_notrace_modules()), tuple(tfx.get_notrace_functions())


class Root(nn.Module):
    """Traced in place of the user's model, so that fx stores any tensor constant here, not on the model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m(x)


class Tracer(fx.Tracer):
    """torch.nn layers, cnnlens' ``Normalize``, timm's leaf layers and the modules named in ``leaves`` stay whole."""

    def __init__(self, leaves: tuple[str, ...] = ()):
        self.leaves, fns = timm_notrace()
        self.named = {"m." + n for n in leaves}
        super().__init__(autowrap_functions=fns)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (
            qualname in self.named
            or isinstance(m, Normalize)
            or type(m) in self.leaves
            or super().is_leaf_module(m, qualname)
        )


def trace(model: nn.Module, leaves: tuple[str, ...] = ()) -> tuple[nn.Module, fx.Graph]:
    """(root, graph): the model's forward as an fx graph (the modules named in ``leaves`` kept whole; their
    nodes' targets are ``"m." + name``); raises :class:`Unsupported` if it does not trace."""
    root = Root(model)
    try:
        graph = Tracer(leaves).trace(root)
    except Exception as e:  # any tracing failure means: run the model as it is
        raise Unsupported(
            f"the model does not trace with torch.fx ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    return root, graph


# ------------------------------------------------------------------------------ one module per call site


def _arg(node: fx.Node, i: int, name: str, default: Any) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _pool_kw(node: fx.Node, names: tuple[str, ...], defaults: tuple) -> dict:
    return {k: _arg(node, i + 1, k, d) for i, (k, d) in enumerate(zip(names, defaults, strict=True))}


# functional activations and pools → (the module that computes the same, in-place?)
_FN: dict[Any, Callable[[fx.Node], tuple[nn.Module, bool]]] = {
    F.relu: lambda n: (nn.ReLU(), bool(_arg(n, 1, "inplace", False))),
    torch.relu: lambda n: (nn.ReLU(), False),
    torch.relu_: lambda n: (nn.ReLU(), True),
    F.relu_: lambda n: (nn.ReLU(), True),
    F.relu6: lambda n: (nn.ReLU6(), bool(_arg(n, 1, "inplace", False))),
    F.hardswish: lambda n: (nn.Hardswish(), bool(_arg(n, 1, "inplace", False))),
    F.hardsigmoid: lambda n: (nn.Hardsigmoid(), bool(_arg(n, 1, "inplace", False))),
    F.silu: lambda n: (nn.SiLU(), bool(_arg(n, 1, "inplace", False))),
    F.mish: lambda n: (nn.Mish(), bool(_arg(n, 1, "inplace", False))),
    F.gelu: lambda n: (nn.GELU(approximate=_arg(n, 1, "approximate", "none")), False),
    F.elu: lambda n: (nn.ELU(alpha=_arg(n, 1, "alpha", 1.0)), bool(_arg(n, 2, "inplace", False))),
    F.leaky_relu: lambda n: (nn.LeakyReLU(_arg(n, 1, "negative_slope", 0.01)), bool(_arg(n, 2, "inplace", False))),
    F.softplus: lambda n: (nn.Softplus(_arg(n, 1, "beta", 1.0), _arg(n, 2, "threshold", 20.0)), False),
    torch.sigmoid: lambda n: (nn.Sigmoid(), False),
    F.sigmoid: lambda n: (nn.Sigmoid(), False),
    torch.tanh: lambda n: (nn.Tanh(), False),
    F.tanh: lambda n: (nn.Tanh(), False),
    F.adaptive_avg_pool2d: lambda n: (nn.AdaptiveAvgPool2d(_arg(n, 1, "output_size", None)), False),
    F.avg_pool2d: lambda n: (
        nn.AvgPool2d(
            **_pool_kw(
                n,
                ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
                (None, None, 0, False, True, None),
            )
        ),
        False,
    ),
    F.max_pool2d: lambda n: (
        nn.MaxPool2d(
            **_pool_kw(n, ("kernel_size", "stride", "padding", "dilation", "ceil_mode"), (None, None, 0, 1, False))
        ),
        False,
    ),
}
_METHOD: dict[str, Callable[[fx.Node], tuple[nn.Module, bool]]] = {
    "relu": lambda n: (nn.ReLU(), False),
    "relu_": lambda n: (nn.ReLU(), True),
    "sigmoid": lambda n: (nn.Sigmoid(), False),
    "sigmoid_": lambda n: (nn.Sigmoid(), True),
    "tanh": lambda n: (nn.Tanh(), False),
    "tanh_": lambda n: (nn.Tanh(), True),
}
_INPLACE_OPS = {operator.iadd: operator.add, operator.imul: operator.mul, operator.isub: operator.sub}
_INPLACE_METHODS = {"add_": "add", "mul_": "mul", "sub_": "sub"}


def shallow_module(m: nn.Module) -> nn.Module:
    """A new module object that computes what ``m`` computes and shares its parameter and buffer tensors
    (its own dicts of parameters, buffers, hooks and children — children copied the same way —, so
    attributes or hooks set on it never reach ``m``). No tensor is copied."""
    c = m.__class__.__new__(m.__class__)
    d = {k: (copy.copy(v) if isinstance(v, dict) else v) for k, v in m.__dict__.items()}
    d["_modules"] = type(m._modules)((k, None if v is None else shallow_module(v)) for k, v in m._modules.items())
    object.__setattr__(c, "__dict__", d)
    return c


def _site_name(target: str, used: set) -> str:
    base = re.sub(r"\W", "_", target[2:] if target.startswith("m.") else target) or "site"
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}__{k}"
    used.add(name)
    return name


def _later_uses_to(graph: fx.Graph, old: fx.Node, new: fx.Node, after: fx.Node) -> None:
    """Point the uses of ``old`` that come after ``after`` at ``new`` (what an in-place op meant)."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for user in list(old.users):
        if user is not new and order[user] > order[after]:
            user.replace_input_with(old, new)


class CallSites:
    """A traced copy of ``model`` in which every call of a module is a module of its own.

    * each ``call_module`` node gets :func:`shallow_module` of its module (a module called twice
      becomes two modules sharing the same parameters);
    * functional activations and pools (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.relu6``,
      ``F.hardswish``, ``F.silu``, ``F.gelu``, ``F.adaptive_avg_pool2d``, ...) become the
      equivalent ``nn`` modules;
    * ``nn.Flatten`` runs as ``torch.flatten`` (a reshape, which no rule needs);
    * in-place activations and in-place additions (``nn.ReLU(inplace=True)``, ``out += identity``)
      run out of place, the later uses of their input pointed at their output (the same values).

    ``module`` is the :class:`torch.fx.GraphModule`; ``origin[name]`` the dotted name in the user's
    model of the module (or ``"F.relu"`` ...) behind each of its modules; :meth:`layer` gives the copy's
    module that stands for a layer of the model. Raises :class:`Unsupported` if the model does not trace.
    """

    def __init__(self, model: nn.Module):
        root, graph = trace(model)
        used: set = set()
        mods: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.sites: dict[str, list[str]] = {}  # the model's module name → the copy's modules for its calls
        self.converted: list[str] = []  # functional ops that became modules
        for node in list(graph.nodes):
            if node.op == "call_module":
                orig = root.get_submodule(node.target)
                if type(orig) is nn.Flatten:  # a reshape: no rule to attach, and a hook on it cannot resize
                    node.op, node.target = "call_function", torch.flatten
                    node.kwargs = {"start_dim": orig.start_dim, "end_dim": orig.end_dim}
                    continue
                name = _site_name(node.target, used)
                mod = shallow_module(orig)
                node.target = name
                mods[name] = mod
                src = _module_path(node)
                self.origin[name] = src
                self.sites.setdefault(src, []).append(name)
                if getattr(mod, "inplace", False) is True and node.args and isinstance(node.args[0], fx.Node):
                    mod.inplace = False  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only
                    _later_uses_to(graph, node.args[0], node, node)
            elif node.op == "get_attr":
                name = _site_name("attr_" + node.target, used)
                mods[name] = _fetch(root, node.target)
                node.target = name
            elif node.op in ("call_function", "call_method"):
                self._convert(graph, node, used, mods)
        graph.lint()
        self.module = fx.GraphModule(mods, graph, class_name="CallSites")
        self.module.train(model.training)
        self.graph = graph

    def _convert(self, graph: fx.Graph, node: fx.Node, used: set, mods: dict) -> None:
        t = node.target
        if node.op == "call_function" and t in _INPLACE_OPS and isinstance(node.args[0], fx.Node):
            node.target = _INPLACE_OPS[t]
            _later_uses_to(graph, node.args[0], node, node)
            return
        if node.op == "call_method" and t in _INPLACE_METHODS:
            node.target = _INPLACE_METHODS[t]
            assert isinstance(node.args[0], fx.Node)  # a method node's first argument is the object it is called on
            _later_uses_to(graph, node.args[0], node, node)
            return
        make = _FN.get(t) if node.op == "call_function" else _METHOD.get(t) if isinstance(t, str) else None
        if make is None or not node.args or not isinstance(node.args[0], fx.Node):
            return
        try:
            mod, inplace = make(node)
        except (TypeError, ValueError):  # an argument given as a traced value: leave the function
            return
        label = f"F.{getattr(t, '__name__', t)}" if node.op == "call_function" else f"Tensor.{t}"
        name = _site_name(f"fn_{getattr(t, '__name__', t)}", used)
        mods[name] = mod
        x = node.args[0]
        with graph.inserting_after(node):
            new = graph.call_module(name, (x,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        if inplace:
            _later_uses_to(graph, x, new, new)
        self.origin[name] = label
        self.converted.append(label)

    def layer(self, name: str) -> nn.Module:
        """The copy's module standing for the model's layer ``name`` (dotted): its own module when the layer
        is a leaf called once; for a container (``layer4``), an ``nn.Identity`` inserted after its output."""
        calls = self.sites.get(name, [])
        if len(calls) == 1:
            return self.module.get_submodule(calls[0])
        if len(calls) > 1:
            raise Unsupported(
                f"layer {name!r} is called {len(calls)} times in the forward, so a layer method "
                "cannot tell which call to read; name a layer that runs once"
            )
        inside = [
            n
            for n in self.graph.nodes
            if any(k == "m." + name or k.startswith("m." + name + ".") for k in n.meta.get("nn_module_stack", {}))
        ]
        if not inside:
            raise Unsupported(f"layer {name!r} does not appear in the traced forward")
        ins = set(inside)
        outs = [n for n in inside if any(u not in ins for u in n.users)]
        if len(outs) != 1:
            raise Unsupported(f"layer {name!r} has {len(outs)} outputs in the traced forward, not one")
        key = "out_" + re.sub(r"\W", "_", name)
        if key not in dict(self.module.named_children()):
            ident = nn.Identity()
            self.module.add_module(key, ident)
            with self.graph.inserting_after(outs[0]):
                new = self.graph.call_module(key, (outs[0],))
            outs[0].replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
            self.module.recompile()
            self.origin[key] = name
        return self.module.get_submodule(key)


def _module_path(node: fx.Node) -> str:
    stack = list(node.meta.get("nn_module_stack", {}))
    path = stack[-1] if stack else ""
    path = path.split("@")[0]
    return path[2:] if path.startswith("m.") else path


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def call_site_copy(model: nn.Module) -> CallSites:
    """:class:`CallSites` of ``model`` (raises :class:`Unsupported` when it does not trace)."""
    return CallSites(model)
