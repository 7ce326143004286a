"""The explorer on a real-size network: EfficientNet-Lite0 (1000 classes) over a folder of ≥ 2,000 photos.

    python benchmarks/bench_explore.py --model efficientnet-lite0 [--n 2000] [--batch-size 16]

The folder is made in a temporary directory from scikit-image's bundled photos (random crops, flips, colour
jitter, 20 ImageNet WordNet-ID folders: ``tests/photofolder.py``) and deleted after. Reported:

1. the store's scan in images/s against a plain ``torch.no_grad()`` evaluation loop over the same dataset and
   batch size (floor: ≥ 0.9×; the loop runs before and after the scans and the faster pass counts, so a change
   of load on a shared machine does not flatter the scans);
2. the Units (microscope) scan of the default layers against one evaluation pass (ceiling: ≤ 1.5×), with the
   size of its ``scan.pt``;
3. the cache's size on disk and the peak resident memory of the process (it is the server: store, Units scan and
   pages all run in it);
4. time to the first sample page (page + image + Grad-CAM pair + saliency), to the first unit page of the last
   layer (class influence included) and to the layer page of its 1,280 channels.

Ratios are measured side by side in one process; on a shared machine (other processes on the 2 cores) read the
ratios, not the seconds.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


class PeakRSS:
    """The process's largest resident set size, sampled every 50 ms in a thread."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _poll(client, url, timeout=3600):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = client.get(url)
        j = r.json()
        if r.status_code not in (200, 503) or j.get("status") in ("done", "error"):
            return j
        time.sleep(0.05)
    raise TimeoutError(url)


def main(argv) -> None:
    import argparse

    from photofolder import make_photo_folder
    from starlette.testclient import TestClient

    import cnnlens
    from cnnlens.data import as_dataset
    from cnnlens.explore.app import make_app
    from cnnlens.explore.service import Explorer

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args(argv)
    load = os.getloadavg()[0]
    print(
        f"(machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {load:.1f} "
        "at the start — other processes share the cores: read the ratios)"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-explore-effnet-"))
    try:
        t0 = time.perf_counter()
        make_photo_folder(work / "photos", a.n)
        print(
            f"folder: {a.n} photos in 20 WordNet-ID folders, {du(work / 'photos') / 2**20:.1f} MB, made in "
            f"{time.perf_counter() - t0:.0f} s"
        )
        model = cnnlens.load_model(a.model)
        ds = as_dataset(str(work / "photos"), model)
        with PeakRSS() as peak:
            # 1. a plain evaluation loop over the same dataset and batch size
            loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=False)

            def evaluate():
                t0 = time.perf_counter()
                correct = 0
                with torch.no_grad():
                    for x, y in loader:
                        correct += int((model(x).argmax(1) == y).sum())
                return time.perf_counter() - t0, correct

            t_eval, correct = evaluate()  # again after the scans: the faster of the two is the reference
            print(f"   (peak memory after the plain loop: {peak.peak / 2**30:.2f} GB)")
            ex = Explorer(model, str(work / "photos"), work / "cache", batch_size=a.batch_size)
            t0 = time.perf_counter()
            ex.start_scan()
            ex.wait_ready(timeout=36000)
            t_store = time.perf_counter() - t0
            t_eval = min(t_eval, evaluate()[0])
            print(f"   (peak memory after the store scan: {peak.peak / 2**30:.2f} GB)")
            print(
                f"1. store scan: {a.n / t_store:.1f} images/s; plain no_grad loop {a.n / t_eval:.1f} images/s "
                f"(top-1 {correct / a.n:.1%}); ratio {t_eval / t_store:.2f}× (floor 0.9×)"
            )
            with TestClient(make_app(ex)) as client:
                # 4a. the first sample page
                s = ex.store.sample(0)
                t0 = time.perf_counter()
                assert client.get("/sample/0").status_code == 200
                assert client.get("/img/sample/0.png").status_code == 200
                assert client.get(f"/img/sample/0/pair.png?a={s['true']}&b={s['pred']}").status_code == 200
                j = _poll(client, "/api/sample/0/method/saliency?target=predicted")
                assert j["status"] == "done", j
                t_sample = time.perf_counter() - t0
                # 2. the Units scan
                t0 = time.perf_counter()
                j = _poll(client, "/api/microscope")
                assert j["status"] == "done", j
                t_units = time.perf_counter() - t0
                t_eval2 = evaluate()[0]
                print(
                    f"   (peak memory after the Units scan: {peak.peak / 2**30:.2f} GB; an evaluation pass now "
                    f"{t_eval2:.1f} s)"
                )
                t_eval = min(t_eval, t_eval2)
                scan_pt = next((work / "cache").rglob("scan.pt"))
                print(
                    f"2. Units scan ({', '.join(ex.unit_layers())}): {t_units:.1f} s = {t_units / t_eval:.2f}× one "
                    f"evaluation pass (ceiling 1.5×); scan.pt {scan_pt.stat().st_size / 2**20:.1f} MB"
                )
                last = ex.unit_layers()[-1]
                t0 = time.perf_counter()
                j = _poll(client, f"/api/unit/{last}/0")
                assert j["status"] == "done", j
                assert client.get(f"/unit/{last}/0").status_code == 200
                t_unit = time.perf_counter() - t0
                print(f"   (peak memory after the first unit page: {peak.peak / 2**30:.2f} GB)")
                t0 = time.perf_counter()
                page = client.get(f"/layer/{last}")
                t_grid = time.perf_counter() - t0
                assert page.status_code == 200
                cards = page.text.count('class="card unit-card')
            ex.close()
        print(
            f"3. cache on disk {du(work / 'cache') / 2**20:.1f} MB; peak resident memory of the process (server, "
            f"store and Units scan) {peak.peak / 2**30:.2f} GB"
        )
        print(
            f"4. first sample page {t_sample:.1f} s; first unit page of {last} (class influence included) "
            f"{t_unit:.1f} s; layer page of {cards} channels {t_grid:.2f} s"
        )
        print(f"(load average at the end: {os.getloadavg()[0]:.1f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
