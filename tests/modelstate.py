"""Snapshot a model's whole state and check it is unchanged (the no-side-effect contract)."""

from __future__ import annotations

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        "hooks": _hook_counts(model),
    }


def _hook_counts(model: nn.Module) -> list[int]:
    counts = []
    for m in model.modules():
        n = 0
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            n += len(getattr(m, attr, {}) or {})
        counts.append(n)
    for p in model.parameters():
        counts.append(len(p._backward_hooks or {}) if getattr(p, "_backward_hooks", None) else 0)
    return counts


def assert_unchanged(model: nn.Module, before: dict, what: str = "model") -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"], f"{what}: a hook was left on the model"
    assert after["training"] == before["training"], f"{what}: a training flag changed"
    assert after["requires_grad"] == before["requires_grad"], f"{what}: requires_grad changed"
    assert before["state"].keys() == after["state"].keys(), f"{what}: state_dict keys changed"
    for k, v in before["state"].items():
        w = after["state"][k]
        assert v.dtype == w.dtype and v.shape == w.shape and torch.equal(v, w), f"{what}: {k} changed"
    for i, (g0, g1) in enumerate(zip(before["grad"], after["grad"], strict=True)):
        assert (g0 is None) == (g1 is None), f"{what}: .grad of parameter {i} appeared or vanished"
        if g0 is not None:
            assert torch.equal(g0, g1), f"{what}: .grad of parameter {i} changed"
