"""Autograd on for one call, whatever grad mode the caller is in.

Explanations are often called from evaluation code that runs under
``torch.no_grad()`` or ``torch.inference_mode()``. Gradient methods need autograd:
:func:`needs_autograd` turns it on for the call (``torch.enable_grad`` inside
``torch.inference_mode(False)``) and replaces inference tensors among the
arguments by ordinary copies (an inference tensor cannot enter a graph). The
caller's mode is back when the call returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable[..., Any])


def _ordinary(v: Any) -> Any:
    if torch.is_tensor(v) and v.is_inference():
        return v.clone()
    if isinstance(v, nn.Module):
        if any(t.is_inference() for t in list(v.parameters()) + list(v.buffers())):
            raise ValueError(
                "the model's weights were created under torch.inference_mode(), so no gradient can pass "
                "through them; load or build the model outside inference_mode"
            )
    return v


def needs_autograd(fn: F) -> F:
    """Decorator: run ``fn`` with autograd on, also under ``no_grad``/``inference_mode``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            args = tuple(_ordinary(a) for a in args)
            kwargs = {k: _ordinary(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
