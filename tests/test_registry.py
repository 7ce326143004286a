"""One record per attribution method: the CLI, the report and the contract test read it."""

from __future__ import annotations

import inspect

import pytest


def test_every_method_has_one_complete_record():
    from cnnlens.attribution import METHODS, REGISTRY
    from cnnlens.registry import intro_of, is_signed, title_of

    assert list(REGISTRY) == list(METHODS)
    for name, m in REGISTRY.items():
        assert m.fn is METHODS[name] and m.fn.__name__ == name
        assert m.origin == "native" and m.family in ("gradient", "perturbation", "cam", "guided")
        assert m.title and m.paper and m.intro.startswith("<b>") and title_of(name) == m.title
        assert m.unit != "attribution", f"{name} has no unit for its colour bar"
        assert intro_of(name) == m.intro and is_signed(name) == m.signed
        # layered exactly when the function takes a layer
        assert m.layered == ("layer" in inspect.signature(m.fn).parameters), name
    assert {k for k, m in REGISTRY.items() if m.signed} == {
        "cam",
        "occlusion",
        "integrated_gradients",
        "gradient_x_input",
    }


def test_bridged_and_unknown_names():
    from cnnlens.registry import lookup, method_info

    d = method_info("captum:DeepLift")
    assert d.origin == "bridged" and d.title == "DeepLift (Captum)" and d.signed
    assert lookup("nope") is None
    with pytest.raises(ValueError, match="unknown attribution method 'nope'; choose from saliency, .*score-cam"):
        method_info("nope")


def test_cli_help_lists_every_method():
    from cnnlens.cli.explain import METHODS_HELP
    from cnnlens.registry import REGISTRY

    for m in REGISTRY.values():
        assert m.cli_name in METHODS_HELP
    assert "ablation-cam" in METHODS_HELP and "score-cam" in METHODS_HELP
