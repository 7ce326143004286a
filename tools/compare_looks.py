"""Compare what two source trees of cnnlens produce: the demo report, the microscope site, the explorer's export
and the live explorer.

The outputs (``--only``): ``report`` (``cnnlens demo --quick``), ``microscope`` (a small static site on the
digits model), ``explore`` (``cnnlens explore --export`` on digits, 3 cells) and ``live`` (``cnnlens explore``
served on a free local port: its pages' HTML and the JSON of its /api URLs saved, the pages shot once filled in,
and shot again after pressing the sample page's attack and the leaderboard's run button).

Each tree is run with the same command, seed and environment (``PYTHONPATH=<tree>/src``), into its own folder
under ``--work``; then the two outputs are compared:

- the list of files;
- every PNG: byte-equal, else pixel-equal, else the largest absolute channel difference and the fraction of
  pixels that differ;
- every text file (HTML, CSS, JS, JSON, …) with its volatile parts (timings, dates, durations, paths, sizes of
  the run) normalised away; a short unified diff of what still differs;
- chosen pages (``index.html`` and a few more), rendered in headless Chromium at a fixed window width as
  full-page screenshots of the *normalised* copy of each output (so a timing does not move the layout), then
  pixel-compared; where they differ a third image marks the differing pixels in red.

Run it from a checkout (standard library, numpy, pillow and selenium; Debian's ``chromium`` and
``chromedriver``)::

    nice /work/main/.venv/bin/python tools/compare_looks.py --before /path/to/old/tree --after /path/to/new/tree \\
        --work /tmp/looks [--only report,microscope,explore,live] [--no-run] [--no-shots]

``--no-run`` compares the outputs already in ``--work`` (runs nothing). Results are printed and written to
``<work>/summary.json``; screenshots are ``<work>/<output>/shots/<side>-<page>.png`` and ``diff-<page>.png``.
Each output takes 10 s (export) to 80 s (report) per tree on 2 busy cores.
The exit code is 0 when every file, PNG and screenshot is equal after normalisation, else 1.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PYTHON = sys.executable
WIDTH = 1400  # screenshot window width (px)
MAX_HEIGHT = 60000  # longest full-page screenshot (px)
TEXT = {".html", ".htm", ".css", ".js", ".json", ".txt", ".csv", ".svg", ".md", ".tsv"}

# the same environment for both trees: fixed hash seed, one thread, time zone, locale, no display
ENV = {
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TZ": "UTC",
    "LC_ALL": "C.UTF-8",
    "MPLBACKEND": "Agg",
    "COLUMNS": "200",
    "SOURCE_DATE_EPOCH": "0",
    "CUDA_VISIBLE_DEVICES": "",
}


def commands(out: Path, work: Path) -> dict[str, list[str]]:
    """The command of each output (run with cwd = ``work``), writing into ``out``."""
    return {
        "report": ["demo", "--quick", "--out", str(out)],
        "microscope": [
            "microscope",
            *("--model", "digits-cnn", "--data", "digits", "--n", "20"),
            *("--layers", "features.4,features.7", "--steps", "4", "--max-channels", "3"),
            *("--samples", "1", "--k", "3", "--no-cache", "--out", str(out)),
        ],
        "explore": [
            "explore",
            *("--model", "digits-cnn", "--data", "digits", "--cache", str(work / "cache")),
            *("--export", str(out), "--cells", "3"),
        ],
    }


# pages to screenshot: globs relative to the output, at most this many matches each (sorted)
PAGES = {
    "report": [("index.html", 1)],
    "microscope": [("index.html", 1), ("layer-*.html", 2), ("unit-*.html", 2), ("sample-*.html", 1)],
    "explore": [("index.html", 1), ("cell-*.html", 2)],
    "live": [],  # screenshots taken while the server runs (see run_live)
}
# the live explorer: pages fetched and shot (found on the first server: a cell's first sample, the first layer
# and its first unit), and the JSON of the older /api URLs
LIVE_PAGES = ["/", "/cell/8/5", "/upload", "/layers", "/leaderboard"]
LIVE_JSON = ["/api/overview", "/api/cell/8/5", "/api/layers"]
# buttons pressed on pages (path prefix: button id), each then shot again
LIVE_CLICKS = {"/sample/": "run-attack", "/leaderboard": "run-leaderboard"}

# volatile text: (pattern, replacement), applied in order
VOLATILE = [
    (re.compile(r"/(?:tmp|work|home|root|var)/[^\s\"'<>)]*"), "<PATH>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?"), "<DATETIME>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d\b"), "<DATE>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<TIME>"),
    (
        re.compile(
            r"\b\d+(?:\.\d+)?(?:\s|&nbsp;|&#160;|\u00a0|\u202f)*"
            r"(?:ms|µs|us|s|sec|secs|seconds?|min|mins|minutes?|h|hours?)\b"
        ),
        "<DUR>",
    ),
    (
        re.compile(r"(\"(?:\w*_)?(?:time|seconds|elapsed|duration|created|started|finished|date)\w*\"\s*:\s*)[^,}\]]+"),
        r"\1<V>",
    ),
    (re.compile(r"\b\d+(?:\.\d+)?\s*(?:it/s|img/s|images/s|/s)\b"), "<RATE>"),
    (re.compile(r"\bcnnlens-[a-z]+-[A-Za-z0-9_]{6,}\b"), "<TMPNAME>"),
]


# a table header or JSON key naming a timing: its cells / values are replaced
TIMING = re.compile(
    r"^\s*(?:s\s*/\s*\w+|seconds\b.*|secs?\b.*|time\b.*|timings?\b.*|elapsed\b.*|duration\b.*|"
    r".*\((?:s|ms|seconds)\)|\w*_(?:s|ms|seconds|time|timings?)|seconds_\w+|\w*timings?_\w*)\s*$",
    re.I,
)
CELL = re.compile(r"(<t([dh])\b[^>]*>)(.*?)(</t\2>)", re.S)


def normalise(text: str, roots: list[str], json_file: bool = False) -> str:
    """``text`` with the run's folders, timing values (table cells under a timing header, JSON values under a
    timing key), then dates, clock times, durations and rates replaced by tokens."""
    for root in sorted(roots, key=len, reverse=True):
        text = text.replace(root, "<OUT>")
    if json_file:
        try:
            text = json.dumps(blank_timings(json.loads(text)), indent=1, sort_keys=True, ensure_ascii=False)
        except ValueError:
            pass
    else:
        text = re.sub(r"<table\b.*?</table>", blank_timing_cells, text, flags=re.S)
    for pattern, repl in VOLATILE:
        text = pattern.sub(repl, text)
    return text


def blank_timings(value):
    """``value`` (parsed JSON) with everything under a timing key replaced by "<V>"."""
    if isinstance(value, dict):
        return {k: "<V>" if TIMING.match(str(k)) else blank_timings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [blank_timings(v) for v in value]
    return value


def blank_timing_cells(table: re.Match) -> str:
    """One HTML table with the cells of timing columns (header row) and timing rows (a header cell first)
    replaced by <V>."""
    columns: set[int] = set()

    def row(m: re.Match) -> str:
        cells = list(CELL.finditer(m.group(0)))
        texts = [re.sub(r"<[^>]+>", "", c.group(3)) for c in cells]
        if cells and all(c.group(2) == "h" for c in cells):
            columns.update(i for i, t in enumerate(texts) if TIMING.match(t))
            return m.group(0)
        blank = {i for i in columns if i < len(cells)}
        if len(cells) > 1 and cells[0].group(2) == "h" and TIMING.match(texts[0]):
            blank |= set(range(1, len(cells)))
        out, pos = [], 0
        for i, c in enumerate(cells):
            if i in blank:
                out += [m.group(0)[pos : c.start(3)], "<V>"]
                pos = c.end(3)
        return "".join(out) + m.group(0)[pos:]

    return re.sub(r"<tr\b.*?</tr>", row, table.group(0), flags=re.S)


def run_output(kind: str, tree: Path, out: Path, work: Path, log: Path) -> float:
    """Run ``kind`` from ``tree`` into ``out`` (removed first); returns the seconds it took."""
    if out.exists():
        shutil.rmtree(out)
    work.mkdir(parents=True, exist_ok=True)
    for stale in (work / "cache", out.with_name(out.name + ".work"), out.with_name(out.name + ".fvcache")):
        if stale.exists():
            shutil.rmtree(stale)
    home = work / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, **ENV, PYTHONPATH=str(tree / "src"), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    cmd = ["nice", "-n", "10", PYTHON, "-m", "cnnlens", *commands(out, work)[kind]]
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} from {tree} failed ({proc.returncode}); see {log}")
    return time.monotonic() - t0


def run_live(kind: str, tree: Path, out: Path, work: Path, log: Path) -> float:
    """Serve the explorer from ``tree``, save its pages' HTML and JSON into ``out`` and their screenshots into
    ``out``/../shots; returns the seconds it took. The pages are found on the first run and reused."""
    import urllib.error
    import urllib.request

    for stale in (out, work):
        if stale.exists():
            shutil.rmtree(stale)
    out.mkdir(parents=True)
    work.mkdir(parents=True)
    shots = out.parent / "shots"
    shots.mkdir(exist_ok=True)
    home = work / "home"
    home.mkdir()
    env = dict(os.environ, **ENV, PYTHONPATH=str(tree / "src"), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    args = ["--model", "digits-cnn", "--data", "digits", "--cache", str(work / "cache"), "--port", str(port)]
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            ["nice", "-n", "10", PYTHON, "-m", "cnnlens", "explore", *args],
            cwd=work,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(base, proc, log)

            def get(path: str) -> str:
                """The body of ``path`` (an error status as "HTTP <code>" and its body)."""
                try:
                    with urllib.request.urlopen(base + path, timeout=120) as r:
                        return r.read().decode("utf-8", "replace")
                except urllib.error.HTTPError as e:
                    return f"HTTP {e.code}\n" + e.read().decode("utf-8", "replace")

            t1 = time.monotonic()  # the unit pages answer 503 while the layer statistics are computed
            while get("/api/layers").startswith("HTTP 5") and time.monotonic() - t1 < 300:
                time.sleep(1)
            listing = out.parent / "paths.json"
            if listing.exists():
                pages = json.loads(listing.read_text())
            else:
                cell, layers = get("/cell/8/5"), get("/layers")
                found = [re.search(r'href="(/sample/[^"?#]+)"', cell), re.search(r'href="(/layer/[^"?#]+)"', layers)]
                pages = LIVE_PAGES + [m.group(1) for m in found if m]
                if found[1]:
                    unit = re.search(r'href="(/unit/[^"?#]+)"', get(found[1].group(1)))
                    pages += [unit.group(1)] if unit else []
                listing.write_text(json.dumps(pages))
            for path in pages + LIVE_JSON:
                name = path.strip("/").replace("/", "_") or "index"
                (out / (name + (".json" if path in LIVE_JSON else ".html"))).write_text(get(path))
            driver = chromium()
            try:
                for path in pages:
                    name = path.strip("/").replace("/", "_") or "index"
                    screenshot(driver, base + path, shots / f"{out.name}-{name}.png", settle=True)
                    for prefix, button in LIVE_CLICKS.items():
                        if path.startswith(prefix):
                            png = shots / f"{out.name}-{name}-{button}.png"
                            screenshot(driver, base + path, png, settle=True, click=button)
            finally:
                driver.quit()
                shutil.rmtree(driver.profile_dir, ignore_errors=True)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    return time.monotonic() - t0


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until the explorer at ``base`` says its scan is ready."""
    import urllib.request

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the explorer exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(base + "/api/status", timeout=5) as r:
                if json.loads(r.read()).get("state") == "ready":
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the explorer was not ready in {timeout:.0f} s; see {log}")


def live_shots(work: Path) -> dict:
    """Compare the live explorer's screenshots taken by ``run_live``."""
    folder = work / "live" / "shots"
    out: dict = {}
    for diff in folder.glob("diff-*.png"):
        diff.unlink()
    for a in sorted(folder.glob("before-*.png")):
        name = a.name.removeprefix("before-").removesuffix(".png")
        b = folder / f"after-{name}.png"
        if b.exists():
            out[name] = {**shot_diff(a, b, folder / f"diff-{name}.png"), "shot": str(b)}
        else:
            out[name] = {"size": [], "max": None, "frac": 1.0, "shot": "missing after"}
    return out


def files_of(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def png_diff(a: Path, b: Path) -> dict:
    """{"equal": "bytes"|"pixels"|False, "max": largest channel difference, "frac": fraction of pixels differing,
    "size": (w, h) of each}."""
    if a.read_bytes() == b.read_bytes():
        return {"equal": "bytes", "max": 0, "frac": 0.0}
    ia, ib = Image.open(a).convert("RGBA"), Image.open(b).convert("RGBA")
    if ia.size != ib.size:
        return {"equal": False, "max": None, "frac": 1.0, "size": [ia.size, ib.size]}
    xa, xb = np.asarray(ia, dtype=np.int16), np.asarray(ib, dtype=np.int16)
    d = np.abs(xa - xb)
    frac = float((d.max(axis=2) > 0).mean())
    return {"equal": "pixels" if frac == 0 else False, "max": int(d.max()), "frac": frac}


def text_diff(a: Path, b: Path, roots: list[str]) -> tuple[bool, bool, list[str]]:
    """(byte-equal, equal after normalising, the first lines of a unified diff of the normalised texts)."""
    ta, tb = a.read_bytes(), b.read_bytes()
    if ta == tb:
        return True, True, []
    js = a.suffix.lower() == ".json"
    na = normalise(ta.decode("utf-8", "replace"), roots, js)
    nb = normalise(tb.decode("utf-8", "replace"), roots, js)
    if na == nb:
        return False, True, []
    la, lb = split_long(na), split_long(nb)
    diff = list(difflib.unified_diff(la, lb, "before/" + a.name, "after/" + b.name, n=1, lineterm=""))
    return False, False, [line[:300] for line in diff[:40]]


def split_long(text: str) -> list[str]:
    """Lines, with long lines (minified HTML) cut after each closing tag so a diff shows where."""
    out: list[str] = []
    for line in text.splitlines():
        out.extend(re.split(r"(?<=>)(?=<)", line) if len(line) > 300 else [line])
    return out


def normalised_copy(src: Path, dst: Path, roots: list[str]) -> None:
    """``src`` copied to ``dst`` with every HTML file normalised (for screenshots)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for p in dst.rglob("*.htm*"):
        p.write_text(normalise(p.read_text(encoding="utf-8", errors="replace"), roots), encoding="utf-8")


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="cnnlens-looks-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--font-render-hinting=none",
        f"--window-size={WIDTH},1000",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    driver.profile_dir = profile
    return driver


def screenshot(driver, page: Path | str, png: Path, settle: bool = False, click: str | None = None) -> None:
    """A full-page screenshot of ``page`` (a file or URL; every lazy image loaded, animations off) into ``png``.

    ``settle``: wait until the page stops changing (a live page filling itself in), then blank its timings;
    ``click``: the id of a button to press first (then settle again)."""
    driver.set_window_size(WIDTH, 1000)
    driver.get(page if isinstance(page, str) else page.resolve().as_uri())
    still_images(driver)
    if settle:
        wait_settled(driver)
    if click:
        driver.find_element("id", click).click()
        time.sleep(1)
        wait_settled(driver)
        still_images(driver)
    if settle:
        driver.execute_script(
            "const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT); let n;"
            "while ((n = w.nextNode())) n.nodeValue = n.nodeValue"
            ".replace(/\\d+(\\.\\d+)?\\s*(ms|s|min)\\b/g, '<DUR>')"
            ".replace(/\\d{4}-\\d\\d-\\d\\d[ T]\\d\\d:\\d\\d(:\\d\\d)?/g, '<DATETIME>');"
            # the cells of a table column headed by a timing ("s / map", "seconds …")
            "document.querySelectorAll('table').forEach(t => { const h = Array.from(t.rows[0] ? t.rows[0].cells : []);"
            " h.forEach((c, i) => { if (/^\\s*(s\\s*\\/\\s*\\w+|seconds\\b.*|time\\b.*)$/i.test(c.textContent))"
            " Array.from(t.rows).slice(1).forEach(r => { if (r.cells[i]) r.cells[i].textContent = '<V>'; }); }); });"
        )
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": WIDTH, "height": min(int(height), MAX_HEIGHT), "scale": 1},
        },
    )
    png.write_bytes(base64.b64decode(shot["data"]))


def still_images(driver) -> None:
    """Lazy images loaded eagerly, animations and transitions off; until every image is loaded (30 s at most)."""
    driver.execute_script(
        "document.querySelectorAll('img[loading]').forEach(i => i.loading = 'eager');"
        "const s = document.createElement('style');"
        "s.textContent = '*{animation:none!important;transition:none!important;caret-color:transparent!important}';"
        "document.head.appendChild(s);"
    )
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        if driver.execute_script("return Array.from(document.images).every(i => i.complete)"):
            break
        time.sleep(0.2)


def wait_settled(driver, timeout: float = 300) -> None:
    """Until the page has not changed for 2 s, shows no progress bar and says nothing is running or queued."""
    last, same, t0 = None, 0, time.monotonic()
    while same < 4 and time.monotonic() - t0 < timeout:
        try:
            now = driver.execute_script(
                "return [document.body.innerHTML.length, Array.from(document.images).every(i => i.complete),"
                " Array.from(document.querySelectorAll('.progress')).some(e => e.offsetParent !== null)"
                " || /\\b(running|queued|computing)\\b/.test(document.body.innerText)]"
            )
        except Exception:  # noqa: BLE001 - the page is reloading
            now = None
        same = same + 1 if now is not None and now == last and now[1] and not now[2] else 0
        last = now
        time.sleep(0.5)


def shot_diff(a: Path, b: Path, out: Path) -> dict:
    """Pixel difference of two screenshots (padded to the same size); writes ``out`` marking differing pixels."""
    ia, ib = Image.open(a).convert("RGB"), Image.open(b).convert("RGB")
    w, h = max(ia.width, ib.width), max(ia.height, ib.height)
    xa = np.full((h, w, 3), 255, np.int16)
    xb = np.full((h, w, 3), 255, np.int16)
    xa[: ia.height, : ia.width] = np.asarray(ia)
    xb[: ib.height, : ib.width] = np.asarray(ib)
    d = np.abs(xa - xb).max(axis=2)
    res = {"size": [list(ia.size), list(ib.size)], "max": int(d.max()), "frac": float((d > 0).mean())}
    if d.any():
        ys, xs = np.nonzero(d)
        res["box"] = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
        rows = np.nonzero(d.any(axis=1))[0]
        bands, start = [], rows[0]
        for r0, r1 in zip(rows[:-1], rows[1:], strict=True):
            if r1 - r0 > 20:
                bands.append([int(start), int(r0)])
                start = r1
        bands.append([int(start), int(rows[-1])])
        res["row_bands"] = bands[:20]
        marked = (xb * 0.35 + 255 * 0.65).astype(np.uint8)
        marked[d > 0] = (255, 0, 0)
        Image.fromarray(marked).save(out)
    return res


def pages_of(kind: str, root: Path) -> list[str]:
    chosen: list[str] = []
    for pattern, n in PAGES[kind]:
        found = sorted(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file())
        chosen.extend(f for f in found[:n] if f not in chosen)
    return chosen


def compare(kind: str, work: Path, shots: bool) -> dict:
    a, b = work / kind / "before", work / kind / "after"
    roots = [str(work / kind / side) for side in ("before", "after")] + [str(work)]
    fa, fb = files_of(a), files_of(b)
    res: dict = {
        "only_before": sorted(fa - fb),
        "only_after": sorted(fb - fa),
        "files": len(fa | fb),
        "png": {"bytes": 0, "pixels": 0, "differ": []},
        "text": {"bytes": 0, "normalised": 0, "differ": {}},
        "other": {"equal": 0, "differ": []},
    }
    for rel in sorted(fa & fb):
        pa, pb = a / rel, b / rel
        suffix = pa.suffix.lower()
        if suffix == ".png":
            d = png_diff(pa, pb)
            if d["equal"]:
                res["png"][d["equal"]] += 1
            else:
                res["png"]["differ"].append({"file": rel, **d})
        elif suffix in TEXT:
            same, norm, diff = text_diff(pa, pb, roots)
            if same:
                res["text"]["bytes"] += 1
            elif norm:
                res["text"]["normalised"] += 1
            else:
                res["text"]["differ"][rel] = diff
        elif pa.read_bytes() == pb.read_bytes():
            res["other"]["equal"] += 1
        else:
            res["other"]["differ"].append(rel)
    if shots and kind == "live":
        res["shots"] = live_shots(work)
    elif shots:
        res["shots"] = compare_shots(kind, work, sorted(set(pages_of(kind, a)) & set(pages_of(kind, b))), roots)
    return res


def compare_shots(kind: str, work: Path, pages: list[str], roots: list[str]) -> dict:
    folder = work / kind / "shots"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    out: dict = {}
    for side in ("before", "after"):
        normalised_copy(work / kind / side, work / kind / f"{side}.norm", roots)
    driver = chromium()
    try:
        for page in pages:
            name = page.replace("/", "_").removesuffix(".html")
            png = {side: folder / f"{side}-{name}.png" for side in ("before", "after")}
            for side in ("before", "after"):
                screenshot(driver, work / kind / f"{side}.norm" / page, png[side])
            out[page] = {
                **shot_diff(png["before"], png["after"], folder / f"diff-{name}.png"),
                "shot": str(png["after"]),
            }
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
    return out


def summary_lines(kind: str, res: dict) -> list[str]:
    png, text = res["png"], res["text"]
    worst = max((256 if d["max"] is None else d["max"] for d in png["differ"]), default=0)
    lines = [
        f"== {kind}: {res['files']} files; only before: {len(res['only_before'])}, "
        f"only after: {len(res['only_after'])}",
        f"   PNG: {png['bytes']} byte-equal, {png['pixels']} pixel-equal, {len(png['differ'])} differ (max {worst})",
        f"   text: {text['bytes']} byte-equal, {text['normalised']} equal after normalising, "
        f"{len(text['differ'])} differ; other files: {res['other']['equal']} equal, "
        f"{len(res['other']['differ'])} differ",
    ]
    lines += [f"   only before: {f}" for f in res["only_before"][:10]]
    lines += [f"   only after:  {f}" for f in res["only_after"][:10]]
    for d in png["differ"][:15]:
        lines.append(f"   PNG differs: {d['file']} max {d['max']} frac {d['frac']:.4f} {d.get('size', '')}")
    for rel, diff in list(text["differ"].items())[:6]:
        lines.append(f"   text differs: {rel}")
        lines += ["      " + line for line in diff[:16]]
    for page, d in res.get("shots", {}).items():
        lines.append(
            f"   screenshot {page}: sizes {d['size']}, max {d['max']}, frac {d['frac']:.5f}"
            + (f", box {d['box']}, rows {d['row_bands'][:6]}" if d.get("box") else "")
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="the old source tree (holds src/cnnlens)")
    ap.add_argument("--after", type=Path, required=True, help="the new source tree")
    ap.add_argument("--work", type=Path, default=Path("/tmp/compare-looks"), help="where outputs are written")
    ap.add_argument("--only", default="report,microscope,explore,live", help="comma-separated outputs to compare")
    ap.add_argument("--no-run", action="store_true", help="compare the outputs already in --work")
    ap.add_argument("--no-shots", action="store_true", help="no browser screenshots")
    args = ap.parse_args()
    work = args.work.resolve()
    kinds = [k for k in args.only.split(",") if k]
    for k in kinds:
        if k not in PAGES:
            ap.error(f"unknown output {k!r}; choose from {', '.join(PAGES)}")
    results: dict = {}
    for kind in kinds:
        if not args.no_run:
            if kind == "live" and (work / "live" / "paths.json").exists():
                (work / "live" / "paths.json").unlink()
            for side, tree in (("before", args.before), ("after", args.after)):
                secs = (run_live if kind == "live" else run_output)(
                    kind,
                    tree.resolve(),
                    work / kind / side,
                    work / kind / f"{side}.run",
                    work / kind / f"{side}.log",
                )
                print(f"{kind} {side}: {secs:.0f} s", flush=True)
        results[kind] = compare(kind, work, shots=not args.no_shots)
        print("\n".join(summary_lines(kind, results[kind])), flush=True)
    (work / "summary.json").write_text(json.dumps(results, indent=1))
    equal = all(
        not r["only_before"]
        and not r["only_after"]
        and not r["png"]["differ"]
        and not r["text"]["differ"]
        and not r["other"]["differ"]
        and all(s.get("max") == 0 for s in r.get("shots", {}).values())
        for r in results.values()
    )
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
