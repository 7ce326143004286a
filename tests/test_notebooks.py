"""The tutorial notebooks run in a Jupyter kernel (nbclient + ipykernel) as a user runs them, and show their figures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "docs" / "tutorials").glob("*.ipynb"))
#: the least number of pictures each notebook must show (figures and results' inline pictures)
MIN_IMAGES = {"01-quickstart": 5, "02-own-model": 5, "03-trust": 3, "04-inside": 5, "05-attacks": 2}


def kernel_env() -> dict:
    """The test's environment for the kernel, without a matplotlib backend forced on it (a test run may set
    MPLBACKEND=Agg; a user's Jupyter does not): ipykernel then chooses its inline backend, as for a user."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    src = str(ROOT / "src")  # this checkout's cnnlens, also when the installed one is another
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run(nb, cwd: Path):
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute(env=kernel_env())
    return nb


def images(cell) -> int:
    """Pictures a code cell shows: PNG outputs, and PNGs inlined in a result's HTML display."""
    n = 0
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        n += "image/png" in data
        n += data.get("text/html", "").count("data:image/png")
    return n


def test_there_are_five_tutorials_stored_without_outputs():
    assert [p.stem for p in NOTEBOOKS] == list(MIN_IMAGES)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), path.name
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs_and_shows_its_figures(path, tmp_path):
    nb = run(nbformat.read(path, as_version=4), tmp_path)  # raises CellExecutionError on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    shown = sum(images(c) for c in code)
    assert shown >= MIN_IMAGES[path.stem], f"{path.name} showed {shown} pictures"
    # every cell that ends in a figure shows it as a picture, not as "<Figure size ...>"
    for c in code:
        for out in c.outputs:
            text = out.get("data", {}).get("text/plain", "")
            assert not (text.startswith("<Figure size") and "image/png" not in out["data"]), (path.name, c.source)
    # a user's own pyplot figure after cnnlens' ones still shows
    for c in code:
        if "plt.show()" in c.source:
            assert images(c) >= 1, (path.name, c.source)
    # nothing is left behind in the notebook's folder
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def _cells(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


@pytest.mark.slow
def test_a_users_pyplot_figure_displays_after_a_cnnlens_one(tmp_path):
    """No ``%matplotlib`` line: the kernel's default backend, as a user gets it in Jupyter."""
    nb = run(
        _cells(
            "import matplotlib.pyplot as plt\nimport torch\nimport cnnlens\nfrom cnnlens import attribution\n"
            "model = cnnlens.load_model('digits-cnn')\nx = torch.rand(2, 1, 32, 32)\n"
            "e = attribution.gradcam(model, x)\nfig = e.figure(x)",
            "e",  # the result's rich display draws its figure
            "plt.plot([0, 1], [1, 0])\nplt.show()",
            "import matplotlib\nprint(matplotlib.get_backend(), len(plt.get_fignums()))",
        ),
        tmp_path,
    )
    _, result, user_fig, state = nb.cells
    assert images(result) >= 1
    assert images(user_fig) == 1  # shown once, inline
    backend, open_figures = state.outputs[0]["text"].split()
    assert "inline" in backend and open_figures == "0"  # the backend is Jupyter's; nothing piles up in pyplot


@pytest.mark.slow
def test_a_cnnlens_figure_displays_without_pyplot_imported(tmp_path):
    nb = run(
        _cells(
            "import torch\nimport cnnlens\nfrom cnnlens import attribution\n"
            "model = cnnlens.load_model('digits-cnn')\nx = torch.rand(2, 1, 32, 32)\n"
            "attribution.gradcam(model, x).figure(x)",
        ),
        tmp_path,
    )
    assert images(nb.cells[0]) == 1
