"""The explorer's speed: digits-cnn on digits, and a synthetic dataset of 20,000 noisy digits.

    python benchmarks/bench_explore.py [--quick]
    python benchmarks/bench_explore.py --model efficientnet-lite0 [--n 2000]   (bench_explore_effnet.py)

1. An uncached sample page (the page, Grad-CAM toward two classes, saliency with its
   deletion/insertion AUCs), then the same page cached: server time through Starlette's
   in-process client, interleaved over samples, min and median.
2. 50 concurrent requests of cached pages against a real uvicorn server on 127.0.0.1.
3. 20,000 synthetic images (digits + Gaussian noise, made on the fly, never stored): the
   scan's resident memory at each quarter, and gallery pages of the largest and the
   smallest cells (first and last page), which must answer from SQLite's indexes.

The machine is shared (2 cores, other busy processes): read the minima.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class NoisyDigits(torch.utils.data.Dataset):
    """n images: digit i mod 1797 (32×32) plus N(0, 0.1²) noise seeded by i, clipped to [0, 1]."""

    def __init__(self, n: int):
        from cnnlens.models.digits import _all_digits

        self.x, self.y = _all_digits()
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        j = i % len(self.y)
        return (self.x[j] + 0.1 * torch.randn(self.x[j].shape, generator=g)).clamp(0, 1), int(self.y[j])


def _poll(client, url):
    while True:
        j = client.get(url).json()
        if j["status"] in ("done", "error"):
            return j
        time.sleep(0.005)


def sample_page(client, ref: int, true: int, pred: int) -> None:
    """What the browser asks for when it opens a sample page."""
    assert client.get(f"/sample/{ref}").status_code == 200
    assert client.get(f"/img/sample/{ref}.png").status_code == 200
    assert client.get(f"/img/sample/{ref}/pair.png?a={true}&b={pred}").status_code == 200
    j = _poll(client, f"/api/sample/{ref}/method/saliency?target=predicted")
    assert j["status"] == "done", j
    assert client.get(j["png"]).status_code == 200


def bench_pages(quick: bool) -> None:
    from starlette.testclient import TestClient

    import cnnlens
    from cnnlens.explore.app import make_app
    from cnnlens.explore.service import Explorer

    model = cnnlens.load_model("digits-cnn")
    root = Path(tempfile.mkdtemp(prefix="bench-explore-"))
    try:
        ex = Explorer(model, "digits", root / "cache")
        ex.start_scan()
        ex.wait_ready()
        refs = list(range(0, 359, 359 // (6 if quick else 20)))
        rows = {r: ex.store.sample(r) for r in refs}
        with TestClient(make_app(ex)) as client:
            sample_page(client, 358, rows[refs[0]]["true"], rows[refs[0]]["pred"])  # warm-up (imports, first draw)
            cold, warm = [], []
            for r in refs:  # interleaved: each sample uncached, then cached
                row = rows[r]
                a = row["true"] if row["true"] != row["pred"] else row["second"]
                t0 = time.perf_counter()
                sample_page(client, r, a, row["pred"])
                cold.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sample_page(client, r, a, row["pred"])
                warm.append(time.perf_counter() - t0)
            print(
                f"sample page, uncached (page + image + Grad-CAM toward 2 classes + saliency with AUCs): "
                f"min {min(cold) * 1e3:.0f} ms, median {statistics.median(cold) * 1e3:.0f} ms, "
                f"max {max(cold) * 1e3:.0f} ms over {len(cold)} samples (target < 1000 ms)"
            )
            print(
                f"sample page, cached (same 5 requests): min {min(warm) * 1e3:.1f} ms, "
                f"median {statistics.median(warm) * 1e3:.1f} ms, max {max(warm) * 1e3:.1f} ms (target < 100 ms)"
            )
            for url in ("/", "/cell/8/5", "/api/overview"):
                ts = []
                for _ in range(10):
                    t0 = time.perf_counter()
                    assert client.get(url).status_code == 200
                    ts.append(time.perf_counter() - t0)
                print(f"  {url}: min {min(ts) * 1e3:.1f} ms, median {statistics.median(ts) * 1e3:.1f} ms")
        bench_concurrent(ex, refs, rows)
        ex.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_concurrent(ex, refs, rows, n: int = 50) -> None:
    """50 requests at once against `cnnlens explore` in its own process (uvicorn), on the warm cache."""
    import subprocess

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cnnlens",
            "explore",
            "--model",
            "digits-cnn",
            "--data",
            "digits",
            "--cache",
            str(ex.cache),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(base + "/api/status", timeout=2).json()["state"] == "ready":
                    break
            except (httpx.HTTPError, ValueError):
                time.sleep(0.2)
        urls = []
        for r in refs:
            row = rows[r]
            a = row["true"] if row["true"] != row["pred"] else row["second"]
            urls += [
                f"/sample/{r}",
                f"/img/sample/{r}/pair.png?a={a}&b={row['pred']}",
                f"/img/sample/{r}/method/saliency.png?target=predicted",
                "/",
                f"/api/sample/{r}",
            ]
        urls = (urls * (n // len(urls) + 1))[:n]
        for u in urls:  # every page cached (and its code warm)
            assert httpx.get(base + u).status_code == 200, u
        results: list = [None] * n
        barrier = threading.Barrier(n)

        def get(i):
            with httpx.Client(base_url=base, timeout=60) as c:
                barrier.wait()
                t0 = time.perf_counter()
                r = c.get(urls[i])
                results[i] = (r.status_code, time.perf_counter() - t0)

        ts = [threading.Thread(target=get, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        ok = sum(1 for s, _ in results if s == 200)
        lat = sorted(d for _, d in results)
        print(
            f"{n} concurrent cached requests (`cnnlens explore` in its own process): {ok}/{n} succeeded, "
            f"latency median {statistics.median(lat) * 1e3:.0f} ms, max {lat[-1] * 1e3:.0f} ms "
            f"(all {n} in flight at once: the slowest waits for the others)"
        )
    finally:
        proc.terminate()
        proc.wait(20)


def bench_large(quick: bool) -> None:
    from starlette.testclient import TestClient

    import cnnlens
    from cnnlens.explore.app import make_app
    from cnnlens.explore.service import Explorer

    n = 4000 if quick else 20000
    model = cnnlens.load_model("digits-cnn")
    root = Path(tempfile.mkdtemp(prefix="bench-explore-large-"))
    try:
        data = NoisyDigits(n)
        marks: dict[int, float] = {}
        base = rss_mb()

        def progress(done, total):
            q = 4 * done // total
            if q not in marks:
                marks[q] = rss_mb()

        ex = Explorer(model, data, root / "cache", batch_size=128)
        t0 = time.perf_counter()
        ex.start_scan(progress)
        ex.wait_ready()
        scan_s = time.perf_counter() - t0
        mem = ", ".join(f"{25 * q}%: {v - base:+.0f} MB" for q, v in sorted(marks.items()))
        print(
            f"scan of {n} synthetic images: {scan_s:.1f} s ({n / scan_s:.0f} images/s); resident memory vs before "
            f"the scan at each quarter: {mem}"
        )
        C = ex.store.confusion()
        flat = [(int(C[i, j]), i, j) for i in range(10) for j in range(10) if C[i, j] > 0]
        big, small = max(flat), min(flat)
        with TestClient(make_app(ex)) as client:
            for count, r, c in (big, small):
                pages = (count + ex.page_size - 1) // ex.page_size
                for page in sorted({1, pages}):
                    for url in (
                        f"/api/cell/{r}/{c}?page={page}",
                        f"/cell/{r}/{c}?page={page}",
                        f"/cell/{r}/{c}?page={page}&sort=margin&order=desc",
                    ):
                        ts = []
                        for _ in range(7):
                            t0 = time.perf_counter()
                            assert client.get(url).status_code == 200
                            ts.append(time.perf_counter() - t0)
                        print(
                            f"  cell ({r}, {c}) with {count} samples, {url.split('?')[0]} page {page}/{pages}"
                            f"{' by margin' if 'margin' in url else ''}: min {min(ts) * 1e3:.1f} ms, "
                            f"median {statistics.median(ts) * 1e3:.1f} ms (target < 200 ms)"
                        )
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                assert client.get("/").status_code == 200
                ts.append(time.perf_counter() - t0)
            print(f"  overview of {n}: min {min(ts) * 1e3:.1f} ms (first call computes the evaluation from SQLite)")
        ex.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=()) -> None:
    argv = list(argv)
    if "--model" in argv and argv[argv.index("--model") + 1 :][:1] != ["digits-cnn"]:
        from bench_explore_effnet import main as effnet  # a real-size network over a folder of photos

        effnet(argv)
        return
    quick = "--quick" in argv
    torch.manual_seed(0)
    print(f"(shared machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; read the minima)")
    bench_pages(quick)
    bench_large(quick)


if __name__ == "__main__":
    main(sys.argv[1:])
