"""The package as a user installs it: version, extras that fail in one line, the wheel's and the sdist's contents."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import cnnlens
from cnnlens.extras import EXTRAS, MissingExtra, require

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")

#: every optional package: with these blocked, what is left is the core install
OPTIONAL = sorted({m for mods in EXTRAS.values() for m, _ in mods})
try:  # typer ≥ 0.2x vendors click and no longer installs it: the core must not import click then
    import typer._click  # noqa: F401

    OPTIONAL.append("click")
except ImportError:
    pass


def _run(code: str, *, block: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this checkout's cnnlens and (``block``) no optional package:
    ``sys.modules[name] = None`` makes ``import name`` raise ModuleNotFoundError, as when it is not installed."""
    pre = f"import sys\nfor m in {OPTIONAL!r}:\n    sys.modules[m] = None\n" if block else ""
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "HOME": str(cwd or ROOT)}
    return subprocess.run(
        [sys.executable, "-c", pre + code], capture_output=True, text=True, env=env, cwd=cwd or ROOT, timeout=300
    )


def test_version_is_one_value_everywhere(run_cli):
    code, cap = run_cli("--version")
    assert code == 0 and cap.out.strip() == f"cnnlens {cnnlens.__version__}"
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in meta["dynamic"] and meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert "Copyright (c) 2026 the cnnlens authors" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "src" / "cnnlens" / "py.typed").exists()
    # no upper bound on the core without a reason next to it
    assert not [d for d in meta["dependencies"] if "<" in d]


def test_require_names_the_extra_and_leaves_broken_packages_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(
        MissingExtra,
        match=r"^the digits data needs scikit-learn, which is not installed: "
        r"pip install 'cnnlens\[data\]'$",
    ):
        require("data", "sklearn.datasets", what="the digits data")
    with pytest.raises(ModuleNotFoundError):  # still an ImportError for code that falls back on one
        require("data", "sklearn.datasets")
    assert require("data", "skimage") is sys.modules["skimage"]
    with pytest.raises(ValueError, match="unknown extra 'dta'"):
        require("dta")

    # an ImportError raised inside an installed package is its own error, not "install the extra"
    def broken(name, *a, **k):
        raise ImportError("libfoo.so: cannot open shared object file", name="libfoo")

    monkeypatch.setattr("importlib.import_module", broken)
    with pytest.raises(ImportError, match="libfoo") as info:
        require("timm")
    assert not isinstance(info.value, MissingExtra)


def test_core_works_without_any_extra_and_each_missing_extra_is_one_line(tmp_path):
    code = r"""
import torch, cnnlens
from torch import nn
from cnnlens import attribution, attacks, inside, metrics
from cnnlens.extras import MissingExtra
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
x = torch.rand(2, 3, 16, 16)
e = attribution.gradcam(net, x, target="predicted", layer="2")
assert e.maps.shape == (2, 16, 16) and torch.isfinite(e.maps).all()
assert attribution.saliency(net, x).maps.shape == (2, 16, 16)
assert attribution.occlusion(net, x, window=4, stride=4).maps.shape == (2, 16, 16)
adv = attacks.fgsm(net, x, eps=2 / 255)
assert (adv.x_adv - x).abs().max() <= 2 / 255 + 1e-6
ds = torch.utils.data.TensorDataset(x, torch.tensor([0, 1]))
r = cnnlens.evaluate(net, ds, topk=(1,))
assert r.confusion.sum() == 2
assert metrics.max_sensitivity(net, x, "saliency", samples=2).scores.shape == (2,)
m = cnnlens.load_model("digits-cnn")          # the bundled weights need no extra
assert m(torch.rand(1, 1, 32, 32)).shape == (1, 10)
fig = e.figure(x)
for call, extra in ((lambda: cnnlens.as_dataset("digits", m), "data"),
                    (lambda: cnnlens.load_model("efficientnet-lite0"), "effnet"),
                    (lambda: cnnlens.load_model("timm:resnet18"), "timm"),
                    (lambda: attribution.captum(net, x, "DeepLift"), "captum"),
                    (lambda: attacks.from_torchattacks("PGD", net, x), "attacks")):
    try:
        call()
    except MissingExtra as err:
        msg = str(err)
        assert f"pip install 'cnnlens[{extra}]'" in msg and "\n" not in msg, msg
    else:
        raise AssertionError(f"no error without the {extra} extra")
print("core ok")
"""
    p = _run(code, cwd=tmp_path)
    assert p.returncode == 0 and "core ok" in p.stdout, p.stderr[-3000:]
    cli = (
        "from cnnlens.cli import main\nsys.argv = ['cnnlens', 'explore', '--model', 'digits-cnn', '--data', 'x']\n"
        "main()"
    )
    p = _run(cli, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[0] == (
        "error: cnnlens explore needs starlette, which is not installed: pip install 'cnnlens[explore]'"
    )
    p = _run(
        "from cnnlens.cli import main\nsys.argv = ['cnnlens', 'demo', '--quick', '--out', 'rep']\nmain()", cwd=tmp_path
    )
    assert p.returncode == 2 and p.stderr.strip().splitlines()[0] == (
        "error: cnnlens demo needs scikit-learn, which is not installed: pip install 'cnnlens[demo]'"
    )
    assert not (tmp_path / "rep").exists()
    p = _run("from cnnlens.cli import main\nsys.argv = ['cnnlens', '--version']\nmain()", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == f"cnnlens {cnnlens.__version__}"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist and the wheel built from it, as ``pip install`` would (``python -m build``; offline: no isolation)."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (sdist,), (wheel,) = list(out.glob("*.tar.gz")), list(out.glob("*.whl"))
    return sdist, wheel


@pytest.mark.slow
def test_wheel_ships_license_types_templates_and_weights(dist):
    _, wheel = dist
    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"cnnlens-{cnnlens.__version__}.dist-info"
    assert f"{info}/licenses/LICENSE" in names
    assert {
        "cnnlens/py.typed",
        "cnnlens/templates/report.html.j2",
        "cnnlens/models/weights/digits_cnn.safetensors",
        "cnnlens/extras.py",
    } <= names
    assert any(n.startswith("cnnlens/explore/static/") for n in names)
    meta = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "License-Expression: MIT" in meta and "Provides-Extra: explore" in meta
    assert "Requires-Dist: torch>=2.1\n" in meta
    assert (
        "Requires-Dist: starlette" in meta
        and 'extra == "explore"' in meta.split("Requires-Dist: starlette")[1].split("\n")[0]
    )
    assert not any(n.startswith(("tests/", "docs/")) for n in names)


@pytest.mark.slow
def test_sdist_collects_and_runs_its_own_tests(dist, tmp_path):
    sdist, _ = dist
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
        tf.extractall(tmp_path, filter="data")
    shipped = {p.name for p in (ROOT / "tests").glob("*.py")}
    assert {f"tests/{n}" for n in shipped} <= names  # conftest.py and every helper module, not only test_*.py
    assert {"LICENSE", "README.md", "pyproject.toml", "tests/conftest.py", "tests/browser.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".coverage") for n in names)
    root = tmp_path / sdist.name.removesuffix(".tar.gz")
    env = {"PYTHONPATH": str(root / "src"), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "HOME": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "tests"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=600,
    )
    assert p.returncode == 0 and "error" not in p.stdout.splitlines()[-1], p.stdout[-3000:]
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
            "tests/test_core.py",
            "tests/test_packaging.py",
            "-k",
            "not dist and not sdist and not wheel",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=600,
    )
    assert p.returncode == 0 and " passed" in p.stdout.splitlines()[-1], p.stdout[-3000:]
    assert (
        str(root / "src" / "cnnlens")
        in subprocess.run(
            [sys.executable, "-c", "import cnnlens; print(cnnlens.__file__)"],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
        ).stdout
    )
