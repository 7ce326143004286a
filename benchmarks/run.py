"""Run every benchmark in this folder (each ``bench_*.py`` has ``main(argv)``) and print its ratios.

    python benchmarks/run.py [--quick]

The peer libraries (Captum, pytorch-grad-cam, TorchCAM, Lucent) come from ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import importlib
import resource
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    sys.path.insert(0, str(HERE))
    extra = [a for a in sys.argv[1:] if a == "--quick"]
    for path in sorted(HERE.glob("bench_*.py")):
        print(f"== {path.stem}", flush=True)
        importlib.import_module(path.stem).main(extra)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"   peak memory of this process so far: {peak:.0f} MB (per call: bench_memory)", flush=True)


if __name__ == "__main__":
    main()
