"""The conformance zoo's table: architecture × method, pass/fail, and the error against the float64 reference
next to plain float32's (the same checks as tests/test_zoo.py; see tests/zoo.py for the references).

err: relative max error against the reference (gradient methods, guided backprop, occlusion, Ablation-/Score-CAM,
Grad-CAM++), or 1 − the smallest per-image correlation with pytorch-grad-cam (the other CAMs); "—" where no
independent reference exists (Eigen-CAM, augmented Grad-CAM) or the method refused (the reason in the notes).

Run:  python benchmarks/zoo_table.py [--only NAME,NAME] [--methods a,b] [--fast]   (markdown on stdout)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
import zoo  # noqa: E402

from cnnlens.attribution import METHODS  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="")
    ap.add_argument("--methods", default="")
    ap.add_argument("--fast", action="store_true", help="only the architectures `make test` runs")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    archs = [x for x in zoo.ZOO if (not a.only or x.name in a.only.split(",")) and not (a.fast and x.slow)]
    methods = a.methods.split(",") if a.methods else sorted(METHODS)
    print("| model | method | result | err | plain float32 | note |")
    print("| --- | --- | --- | --- | --- | --- |")
    for arch in archs:
        t0 = time.perf_counter()
        p = zoo.prepared(arch.name)
        for m in methods:
            try:
                row = zoo.evaluate(p, m)
                why = zoo.verdict(p, m, row)
            except Exception as e:  # noqa: BLE001 - a crash is a failure of the row, not of the table
                row, why = {"err": None, "plain32": None, "outcome": "crash"}, f"{type(e).__name__}: {e}"
            known = arch.known.get(m)
            res = "pass" if why is None else ("known fail" if known else "FAIL")
            f = lambda v: "—" if v is None else f"{v:.1e}"  # noqa: E731
            note = (why or (f"refused: {row['message']}" if row.get("outcome") == "refused" else "")).replace("|", "/")
            if known and why is not None:
                note = f"{known}: {note}"
            print(f"| {arch.name} | {m} | {res} | {f(row['err'])} | {f(row['plain32'])} | {note[:140]} |", flush=True)
        print(f"<!-- {arch.name}: {time.perf_counter() - t0:.1f} s -->", flush=True)


if __name__ == "__main__":
    main()
