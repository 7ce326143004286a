"""The conformance zoo: every attribution method, with its defaults, on every architecture of ``tests/zoo.py``.

Each (architecture, method) pair runs cnnlens' method once on a watched model (it must be untouched after the call)
and compares it with an independent reference (see ``tests/zoo.py``): plain autograd on a float64 copy for the
gradient methods (within 10× of plain contiguous float32's error), a hand-built guided reference, the whole-model
occlusion in float64, pytorch-grad-cam or a by-hand float64 computation for the CAM family. Refusals must be one
line. The slowest architectures are marked ``zoo_slow`` and run by ``make test-zoo`` (CI runs both).
"""

from __future__ import annotations

import pytest
from zoo import ZOO, evaluate, prepared, verdict

from cnnlens.attribution import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")


def _params():
    for arch in ZOO:
        for method in sorted(METHODS):
            marks = [pytest.mark.zoo_slow] if arch.slow else []
            if method in arch.known:
                marks.append(pytest.mark.xfail(strict=True, reason=arch.known[method]))
            yield pytest.param(arch.name, method, marks=marks, id=f"{arch.name}-{method}")


@pytest.mark.parametrize("name,method", list(_params()))
def test_zoo(name, method, untouched):
    p = prepared(name)
    untouched(p.model)
    row = evaluate(p, method)
    problem = verdict(p, method, row)
    assert problem is None, f"{name} × {method}: {problem}"


def test_every_public_method_is_in_the_zoo():
    assert len(ZOO) >= 30 and len(METHODS) >= 17
    assert {"saliency", "integrated_gradients", "smoothgrad", "guided_backprop", "occlusion", "gradcam"} <= set(METHODS)
