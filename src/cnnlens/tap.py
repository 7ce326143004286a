"""The layer tap: the one place in cnnlens that registers hooks on a model.

Everything that reads inside a network (Grad-CAM, CAM, dataset search, neuron
statistics, activation maximisation, deconvnet, guided backprop) goes through
:class:`LayerTap`. Its hooks live for one ``with`` block; on exit (also when the
block raises) it removes every hook and restores every module's ``training``
flag and every parameter's ``requires_grad``.

Gradients are taken with ``torch.autograd.grad`` on the recorded outputs; no
module backward hooks are used, so only the part of the graph between the score
and the tapped layer is differentiated.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch.nn.modules.module as mm
from torch import nn
from torch.overrides import TorchFunctionMode

from .grid import prefix_tokens, token_grid

log = logging.getLogger(__name__)

LayerRef = str | nn.Module
#: an edit receives (module, inputs, output) and returns the output to use instead
Edit = Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor]


#: per model, how often each stopped-at layer runs in one forward: {model: {name: (module, calls)}}
#: (weak keys: a model that is dropped leaves the cache with it)
_CALLS: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[nn.Module, int]]] = weakref.WeakKeyDictionary()


def ran_twice_error(name: str) -> ValueError:
    return ValueError(
        f"layer {name!r} ran twice in one forward pass, so its output is ambiguous; "
        "tap a module that runs once (e.g. a distinct ReLU instance per block)"
    )


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (caught by the tap)."""


class _FrozenBatchNormFn(torch.autograd.Function):
    """Eval-mode batch norm y = (x − μ)·γ/√(σ² + ε) + β with a backward to x only.

    The forward is the inference kernel (as under ``no_grad``, so the values are
    exactly the layer's); the backward is one multiplication, ∂L/∂x = ∂L/∂y · γ/√(σ² + ε).
    Only used when μ, σ², γ and β need no gradient.
    """

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps):
        ctx.save_for_backward(var, weight)
        ctx.eps = eps
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad):
        var, weight = ctx.saved_tensors
        scale = torch.rsqrt(var + ctx.eps)
        if weight is not None:
            scale = scale * weight
        shape = [1, -1] + [1] * (grad.dim() - 2)
        return grad * scale.reshape(shape).to(grad.dtype), None, None, None, None, None


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


class _FrozenBatchNorm(TorchFunctionMode):
    """Route eval-mode ``F.batch_norm`` calls with frozen statistics and affine through
    :class:`_FrozenBatchNormFn` while a gradient is being recorded.

    With frozen parameters, autograd's batch-norm backward still runs the general
    kernel (it reads the saved input); here the backward is a per-channel scale, which
    makes a forward + backward to the input faster on networks with many batch norms
    (docs/benchmarks.md). No module is changed: the mode only sees the call.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            a = dict(zip(_BN_ARGS, args, strict=False), **kwargs)  # positional args may stop before the last name
            x, mean, var, w, b = (a.get(k) for k in _BN_ARGS[:5])
            if (
                not a.get("training", False)
                and mean is not None
                and var is not None
                and x.requires_grad
                and not any(t is not None and t.requires_grad for t in (mean, var, w, b))
            ):
                return _FrozenBatchNormFn.apply(x, mean, var, w, b, float(a.get("eps", 1e-5)))
        return func(*args, **kwargs)


def resolve_layer(model: nn.Module, layer: LayerRef) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a layer given by dotted path or as a module.

    A name may also be given relative to a wrapped network (``conv_head`` for
    ``net.conv_head``) when that suffix is unique.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    >>> resolve_layer(net, "0")[0]
    '0'
    """
    named = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, mod in named.items():
            if mod is layer:
                return name, mod
        raise ValueError(
            f"layer {type(layer).__name__} is not a submodule of the model; "
            "pass a module of this model or its dotted name"
        )
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted name or an nn.Module, got {type(layer).__name__}")
    if layer in named and layer != "":
        return layer, named[layer]
    suffix = [n for n in named if n.endswith("." + layer)]
    if len(suffix) == 1:
        return suffix[0], named[suffix[0]]
    names = [n for n in named if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    if len(suffix) > 1:
        hint = f"it is ambiguous: {', '.join(suffix[:5])}"
    elif close:
        hint = f"did you mean {', '.join(repr(c) for c in close)}?"
    else:
        hint = "list the names with `cnnlens layers --model M` or model.named_modules()"
    raise ValueError(f"layer {layer!r} is not in the model; {hint}")


def resolve_layers(model: nn.Module, layers: LayerRef | Sequence[LayerRef]) -> list[str]:
    """The dotted names of one or several layers (:func:`resolve_layer` each), in order, without repeats."""
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    names = list(dict.fromkeys(resolve_layer(model, l)[0] for l in layers))
    if not names:
        raise ValueError("give at least one layer (see `cnnlens layers --model M`)")
    return names


class LayerTap:
    """Record the outputs of named layers during one forward pass.

    Parameters
    ----------
    model: the network (any ``nn.Module``).
    layers: dotted names or modules whose outputs to record.
    eval: run the model in eval mode for the call (restored on exit).
    freeze: set ``requires_grad=False`` on every parameter for the call, so a
        backward computes no parameter gradients (restored on exit).
    edits: ``{layer: fn(module, inputs, output) -> new_output}``, to change a
        layer's output (ablation, guided ReLU, ...). Recorded outputs are the
        edited ones.
    stop_after: end the forward once this layer has run (``tap.stopped`` is
        then True and the model call returns ``None``): for objectives that need
        nothing past a layer.
    detach: store detached outputs (for statistics; no graph is kept).
    copy: pass a copy of each recorded output on to the rest of the forward (the default), or
        only for the layers named in a set, or for none (``False``). Without the copy a later
        in-place operation changes the record itself: :meth:`changed` names such layers (their
        version counters moved) and reading them is refused, so a caller that saves the copies
        (:func:`cnnlens.scanning.scan`) runs the batch again with ``tap.copy`` naming them.
        An inference tensor keeps no version counter, so it is always copied.

    A recorded output is always the layer's own value: the rest of the forward
    receives a copy of it, so an in-place operation after the layer (``ReLU(inplace=True)``,
    ``out += identity``) changes the copy, never the record, and gradients taken with
    respect to the record are the layer's. A record changed through memory it shares
    with another tensor is detected (version counter) and refused when read. A layer
    that runs more than once in a forward is refused, also when the forward stops
    early at it (one probe forward per model and layer, cached).

    Example
    -------
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    >>> x = torch.rand(1, 1, 5, 5, requires_grad=True)
    >>> with LayerTap(net, ["1"]) as tap:
    ...     y = tap.run(x)
    ...     g = tap.grad(y[:, 0].sum(), "1")
    >>> g.shape == tap["1"].shape
    True
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Iterable[LayerRef] | LayerRef = (),
        *,
        eval: bool = True,
        freeze: bool = True,
        edits: Mapping[LayerRef, Edit] | None = None,
        stop_after: LayerRef | None = None,
        detach: bool = False,
        copy: bool | Iterable[str] = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(layers, (str, nn.Module)):
            layers = [layers]
        self.model = model
        self._eval = eval
        self._freeze = freeze
        self._detach = detach
        #: True, False, or the set of layer names whose output the forward receives as a copy
        self.copy = copy if isinstance(copy, bool) else {resolve_layer(model, c)[0] for c in copy}
        # resolve everything before touching the model
        self.names: list[str] = []
        self._modules: dict[str, nn.Module] = {}
        for layer in layers:
            name, mod = resolve_layer(model, layer)
            if name not in self._modules:
                self.names.append(name)
                self._modules[name] = mod
        self._edits: dict[str, tuple[nn.Module, Edit]] = {}
        for layer, fn in (edits or {}).items():
            name, mod = resolve_layer(model, layer)
            self._edits[name] = (mod, fn)
        self._stop: str | None = None
        if stop_after is not None:
            self._stop, mod = resolve_layer(model, stop_after)
            self._modules.setdefault(self._stop, mod)
        #: the model's floating dtype: run() casts float inputs to it
        self.dtype = next(
            (t.dtype for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None
        )
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, tuple] = {}
        self._versions: dict[str, int] = {}
        #: the copy of each recorded output that the rest of the forward received
        self.passed_on: dict[str, torch.Tensor] = {}
        self._counting: dict[str, int] | None = None
        self.stopped = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._saved_training: list[tuple[nn.Module, bool]] = []
        self._saved_grad: list[tuple[nn.Parameter, bool]] = []
        self._active = False
        self._paused = False

    # -- context management -------------------------------------------------
    def __enter__(self) -> LayerTap:
        if self._active:
            raise RuntimeError("a LayerTap is not re-entrant; make a new one")
        self._active = True
        self._saved_training = [(m, m.training) for m in self.model.modules()]
        self._saved_grad = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            if self._eval:
                self.model.eval()
            if self._freeze:
                for p, _ in self._saved_grad:
                    p.requires_grad_(False)
            hooked = set(self._modules) | set(self._edits)
            named = dict(self.model.named_modules())
            for name in hooked:
                mod = self._modules[name] if name in self._modules else named[name]
                self._handles.append(mod.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m, flag in self._saved_training:
            m.training = flag
        for p, flag in self._saved_grad:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        self._active = False

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            if self._counting is not None:  # the probe forward of _check_runs_once
                if name in self._counting:
                    self._counting[name] += 1
                return None
            if self._paused:
                return None
            if name in self._edits:
                output = self._edits[name][1](module, inputs, output)
            if name in self.names:
                if name in self.outputs:
                    raise ran_twice_error(name)
                rec = output.detach() if self._detach and torch.is_tensor(output) else output
                self.outputs[name] = rec
                self.inputs[name] = inputs
                if torch.is_tensor(rec):
                    if not rec.is_inference():  # inference tensors keep no version counter (nor change under us)
                        self._versions[name] = rec._version
                    if name != self._stop and (
                        self.copy is True or rec.is_inference() or (self.copy and name in self.copy)
                    ):
                        # the forward goes on with a copy: later in-place ops cannot overwrite the record
                        output = output.clone()
                        self.passed_on[name] = output
            if name == self._stop:
                self.outputs.setdefault(name, output.detach() if self._detach else output)
                self.stopped = True
                raise _StopForward
            return output

        return hook

    def _check_runs_once(self, x, args, kwargs) -> None:
        """Refuse a stop layer (or recorded layer) that runs more than once per forward.

        An early stop ends the forward at the first call, so a second call is never seen;
        one probe forward (eval mode, no grad, one sample) counts the calls, cached per
        model and layer.
        """
        assert self._stop is not None  # run() calls this only with a stop layer
        names = [self._stop] + [n for n in self.names if n != self._stop]
        cache = _CALLS.setdefault(self.model, {})
        todo = [n for n in names if n not in cache or cache[n][0] is not self._modules[n]]
        if todo:
            counts = {n: 0 for n in todo}
            flags = [(m, m.training) for m in self.model.modules()]
            self._counting = counts
            try:
                self.model.eval()  # a probe must not move batch-norm statistics
                with torch.no_grad():
                    self.model(x[:1] if torch.is_tensor(x) else x, *args, **kwargs)
            except Exception as e:  # noqa: BLE001
                # past the layers the forward may fail legitimately (e.g. a fixed-size head on a smaller
                # image, which is why the forward stops early): what ran until then is what counts
                if not all(counts[n] for n in todo):
                    raise
                log.info(
                    "the probe forward for %s stopped after the layer (%s: %s); counting the calls seen",
                    ", ".join(todo),
                    type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "",
                )
            finally:
                self._counting = None
                for m, flag in flags:
                    m.training = flag
            for n in todo:
                cache[n] = (self._modules[n], counts[n])
        for n in names:
            if cache[n][1] > 1:
                raise ran_twice_error(n)

    @property
    def probing(self) -> bool:
        """True while :meth:`run`'s probe forward (the one that counts a stop layer's calls) runs."""
        return self._counting is not None

    # -- use -----------------------------------------------------------------
    def run(self, x: torch.Tensor, *args, **kwargs):
        """Clear previous records and run the model on ``x``; return its output.

        A floating ``x`` is cast to the model's dtype (a bfloat16 model gets bfloat16 input).

        Returns ``None`` when the forward was stopped at ``stop_after``.
        """
        if not self._active:
            raise RuntimeError("use the tap inside `with LayerTap(...) as tap:`")
        if torch.is_tensor(x) and x.is_floating_point() and self.dtype is not None and x.dtype != self.dtype:
            x = x.to(self.dtype)  # a bfloat16/float16 model gets its own dtype; gradients flow through the cast
        if self._stop is not None:
            self._check_runs_once(x, args, kwargs)
        self.outputs = {}
        self.inputs = {}
        self._versions = {}
        self.passed_on = {}
        self.stopped = False
        fast = self._eval and self._freeze and torch.is_grad_enabled()
        try:
            with _FrozenBatchNorm() if fast else contextlib.nullcontext():
                return self.model(x, *args, **kwargs)
        except _StopForward:
            return None

    @contextlib.contextmanager
    def paused(self):
        """Within this block the tap's hooks do nothing (no recording, edits or stop).

        For code that runs its own forward passes while the tap is active, e.g. an
        accumulator's ``update`` during :func:`cnnlens.scanning.scan`::

            with tap.paused():
                acc.update(batch)      # may call the model again
        """
        prev, self._paused = self._paused, True
        try:
            yield self
        finally:
            self._paused = prev

    def __getitem__(self, layer: LayerRef) -> torch.Tensor:
        name = layer if isinstance(layer, str) and layer in self.outputs else resolve_layer(self.model, layer)[0]
        if name not in self.outputs:
            raise ValueError(f"layer {name!r} did not run in the last forward pass (is it used by forward()?)")
        out = self.outputs[name]
        if not torch.is_tensor(out):
            raise TypeError(
                f"layer {name!r} returned {type(out).__name__}, not a tensor; tap a submodule that returns a tensor"
            )
        if name in self._versions and out._version != self._versions[name]:
            raise ValueError(
                f"the output of layer {name!r} was changed in place after the layer ran (an in-place operation on "
                "a tensor sharing its memory), so it is no longer the layer's value; make that operation "
                "out-of-place (e.g. nn.ReLU(inplace=False)) or tap another layer"
            )
        return out

    def changed(self) -> list[str]:
        """The recorded layers whose output was changed in place after the layer ran in the last forward
        (their version counter moved); empty when every record is the layer's own value."""
        return [
            n
            for n, v in self._versions.items()
            if n in self.outputs and torch.is_tensor(self.outputs[n]) and self.outputs[n]._version != v
        ]

    def grad(self, score: torch.Tensor, layers: LayerRef | list[LayerRef], retain_graph: bool = False):
        """Gradient of ``score.sum()`` with respect to the recorded output(s) of ``layers``."""
        single = not isinstance(layers, list)
        acts = [self[l] for l in (layers if isinstance(layers, list) else [layers])]
        for a in acts:
            if not a.requires_grad:
                raise ValueError(
                    "the tapped output does not require grad: give the input requires_grad=True "
                    "or use freeze=False so the graph reaches this layer"
                )
        grads = torch.autograd.grad(score.sum(), acts, retain_graph=retain_graph)
        return grads[0] if single else list(grads)


def _spreads(inp, out: torch.Tensor) -> str | None:
    """Why a 4-D output has no more spatial information than the module's input (None when it has):
    a larger grid made from a smaller one (an upsampling or adaptive pool spreading 1×1 over 6×6), or
    one value per channel over every position."""
    if torch.is_tensor(inp) and inp.dim() == 4 and inp.shape[1] == out.shape[1]:
        h, w = inp.shape[-2:]
        if out.shape[-2] * out.shape[-1] > h * w and out.shape[-2] >= h and out.shape[-1] >= w:
            return f"spreads a {h}×{w} grid over {out.shape[-2]}×{out.shape[-1]}"
    if _constant_grid(out) and not (torch.is_tensor(inp) and inp.dim() == 4 and _constant_grid(inp)):
        return "is constant over its grid"  # (a constant image gives constant grids: those are not skipped)
    return None


def _constant_grid(t: torch.Tensor) -> bool:
    """Whether a 4-D tensor holds one value per channel over every position (read N×C×h×w or N×h×w×C)."""
    t = t.detach()
    if not t.is_floating_point():
        return False
    return bool((t.amax((2, 3)) == t.amin((2, 3))).all()) or bool((t.amax((1, 2)) == t.amin((1, 2))).all())


def find_last_spatial_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the last module (in execution order) whose output is a real spatial grid with h·w > 1.

    Containers finish after their children, so a ResNet gives ``layer4``, a timm
    EfficientNet ``bn2`` and a Swin ``norm`` (N×h×w×C). Token outputs N×T×C count when
    their patch tokens form a grid (:mod:`cnnlens.grid`); for a model with prefix tokens
    (a ViT's class token) the last transformer block's first layer is taken instead
    (``blocks.<last>.norm1`` in timm, as pytorch-grad-cam recommends: after the last
    block only the class token reaches the head, so the patch tokens get no gradient).

    One probe forward on the first image records every module's input and output. Skipped:
    a module that runs more than once per forward (a shared ``MaxPool2d``: cnnlens refuses
    such a layer), and one whose output has no more spatial information than its input — a
    larger grid spread from a smaller one (AlexNet's ``avgpool``, ``AdaptiveAvgPool2d(6)``,
    spreads the 1×1 features of a 64×64 image over 6×6; VGG's spreads 2×2 over 7×7) or an
    output constant over its grid. Logged at INFO, with what was skipped.
    """
    spec = getattr(model, "spec", None)
    if spec is not None and getattr(spec, "last_spatial_layer", None):
        name = spec.last_spatial_layer
        log.info("last spatial layer (from model.spec): %s", name)
        return name
    order: list[str] = []
    tokens: list[str] = []
    calls: dict[str, int] = {}
    skipped: dict[str, str] = {}
    names = [n for n, _ in model.named_modules() if n]
    H, W = x.shape[-2:]
    prefix = prefix_tokens(model)

    def record(name):
        def fn(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1 or not torch.is_tensor(output):
                return
            if output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
                why = _spreads(inputs[0] if inputs else None, output)
                if why:
                    skipped[name] = why
                order.append(name)
            elif (
                output.dim() == 3
                and output.shape[1] - prefix > 1
                and token_grid(output.shape[1] - prefix, H, W) is not None
            ):
                order.append(name)
                tokens.append(name)

        return fn

    edits = {n: (lambda n: lambda m, i, o: (record(n)(m, i, o), o)[1])(n) for n in names}
    with LayerTap(model, edits=edits, detach=True) as tap, torch.no_grad():
        tap.run(x[:1])
    skipped.update({n: f"runs {calls[n]} times per forward" for n in order if calls[n] > 1})
    order = [n for n in order if n not in skipped]
    tokens = [n for n in tokens if n not in skipped]
    if skipped:
        log.info("last spatial layer: skipped %s", "; ".join(f"{n} ({why})" for n, why in skipped.items()))
    if not order:
        raise ValueError(
            "the model has no layer with a spatial (N×C×H×W or token-grid) output that runs once per forward; "
            "name a layer with layer=..."
        )
    last = order[-1]
    norm1 = _last_block_norm1(tokens) if last in tokens and prefix > 0 else None
    if norm1 is not None:
        log.info(
            "last spatial layer (found automatically): %s (the last block's first layer: after it, only "
            "the %d prefix token(s) reach the head)",
            norm1,
            prefix,
        )
        return norm1
    log.info("last spatial layer (found automatically): %s", last)
    return last


def _last_block_norm1(tokens: list[str]) -> str | None:
    """``<...>blocks.<last>.norm1`` among the token-grid layers (timm's naming of a ViT's blocks), if there."""
    blocks = [n for n in tokens if n.rsplit(".", 2)[-2:-1] == ["blocks"] or ".blocks." in n]
    heads = sorted(
        {
            n.split(".blocks.")[0] + ".blocks." + n.split(".blocks.")[1].split(".")[0]
            if ".blocks." in n
            else "blocks." + n.split("blocks.")[1].split(".")[0]
            for n in blocks
            if "blocks." in n
        },
        key=lambda n: (n.count("."), int(n.rsplit(".", 1)[1])),
    )
    if heads:
        norm1 = heads[-1] + ".norm1"
        if norm1 in tokens:
            return norm1
    return None


_GLOBAL_HOOKS = (
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
)


class guarded:
    """Run third-party code on a model (Captum, torchattacks) and undo whatever it left behind.

    On entry the model is put in eval mode with frozen parameters (like a
    :class:`LayerTap`); on exit — also when the block raises — every module's
    attributes are put back as they were (``training``, a ``rule`` or ``forward``
    set on an instance, and the contents of its hook, parameter, buffer and
    sub-module dicts, so hooks registered and not removed are dropped), as are
    torch's global module hooks, each parameter's ``requires_grad``, its ``.grad``
    (the same tensor, with its values) and its tensor hooks, and every buffer's values
    (batch-norm statistics a training-mode forward would move). Weights are not
    copied: frozen parameters do not change.

    >>> net = nn.Sequential(nn.Linear(2, 2)).train()
    >>> with guarded(net):
    ...     _ = net[0].register_forward_hook(lambda m, i, o: o)
    ...     net.training
    False
    >>> net.training, len(net[0]._forward_hooks)
    (True, 0)
    """

    def __init__(self, model: nn.Module, *, eval: bool = True, freeze: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self._eval = eval
        self._freeze = freeze

    def __enter__(self) -> nn.Module:
        self._modules = []
        for m in self.model.modules():
            attrs = dict(m.__dict__)
            contents = {k: dict(v) for k, v in attrs.items() if isinstance(v, dict)}
            self._modules.append((m, attrs, contents))
        self._globals = {k: dict(getattr(mm, k)) for k in _GLOBAL_HOOKS if isinstance(getattr(mm, k, None), dict)}
        # buffers are small (batch-norm statistics): kept by value, in case the code ran a training-mode forward
        self._buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        self._params = []
        for p in self.model.parameters():
            g = p.grad
            hooks = getattr(p, "_backward_hooks", None)
            self._params.append(
                (
                    p,
                    p.requires_grad,
                    g,
                    None if g is None else g.detach().clone(),
                    None if hooks is None else dict(hooks),
                )
            )
        try:
            if self._eval:
                self.model.eval()
            if self._freeze:
                for p, *_ in self._params:
                    p.requires_grad_(False)
        except BaseException:
            self._restore()
            raise
        return self.model

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for m, attrs, contents in self._modules:
            d = m.__dict__
            for k in [k for k in d if k not in attrs]:
                del d[k]
            for k, v in attrs.items():
                if d.get(k, _MISSING) is not v:
                    d[k] = v
                if k in contents:
                    v.clear()
                    v.update(contents[k])
        for b, values in self._buffers:
            if not torch.equal(b, values):
                with torch.no_grad():
                    b.copy_(values)
        for k, saved in self._globals.items():
            g = getattr(mm, k)
            g.clear()
            g.update(saved)
        for p, flag, g, grad_values, hooks in self._params:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            if p.grad is not g:
                p.grad = g
            if g is not None and grad_values is not None and not torch.equal(g, grad_values):  # both or neither
                with torch.no_grad():
                    g.copy_(grad_values)
            now = getattr(p, "_backward_hooks", None)
            if now is not None and (hooks is None or dict(now) != hooks):
                now.clear()
                now.update(hooks or {})


_MISSING = object()
