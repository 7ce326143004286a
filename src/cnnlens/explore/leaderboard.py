"""The leaderboard the explorer runs on request: a few cheap methods scored by metrics without ground truth
(:func:`cnnlens.metrics.benchmark`) on the dataset's first images, in the worker, cached."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..data import dataset_images
from ..files import atomic_write
from ..metrics import benchmark
from ..metrics.report import leaderboard_table
from ..results import jsonable
from .workspace import Workspace, scaled

#: the leaderboard the explorer runs on request: cheap methods and metrics without ground truth
LEADERBOARD_METHODS = ("saliency", "gradient_x_input", "integrated_gradients", "gradcam")
LEADERBOARD_METRICS = ("deletion_auc", "insertion_auc", "faithfulness_correlation", "max_sensitivity")


class Leaderboard:
    """The leaderboard of :data:`LEADERBOARD_METHODS` by :data:`LEADERBOARD_METRICS` on the first ``n`` images."""

    def __init__(self, ws: Workspace, n: int = 16):
        self.ws, self.n = ws, n

    def path(self) -> Path:
        key = json.dumps({"n": self.n, "methods": LEADERBOARD_METHODS, "metrics": LEADERBOARD_METRICS}, sort_keys=True)
        return self.ws.results / f"leaderboard-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"

    def leaderboard(self, start: bool = False) -> dict:
        """The leaderboard (cached), its job's state (``start``: run it in the worker), or ``status: none`` when it
        has not been asked for."""
        path = self.path()
        out = {"n": self.n, "methods": list(LEADERBOARD_METHODS), "metrics": list(LEADERBOARD_METRICS)}
        if path.is_file():
            return {**out, "status": "done", "progress": 1.0, **json.loads(path.read_text())}
        job = self.ws.worker.get("leaderboard")
        if job is None and not start:
            return {**out, "status": "none", "progress": 0.0, "error": None}
        if start:
            job = self.ws.worker.submit("leaderboard", lambda report: self.run(path, report))
        assert job is not None  # found, or just submitted
        return {**out, **job.to_dict()}

    def run(self, path: Path, report) -> dict:
        """Score the methods (worker only) and keep the table at ``path``."""
        ws = self.ws
        n = min(self.n, ws.n)
        x = dataset_images(ws.dataset, range(n)).to(next(ws.model.parameters()).device)
        y = torch.tensor([int(ws.dataset[i][1]) for i in range(n)])
        lb = benchmark(
            ws.model, x, y=y, methods=LEADERBOARD_METHODS, metrics=LEADERBOARD_METRICS, progress=scaled(report)
        )
        header, rows = leaderboard_table(lb)
        info = {
            "header": header,
            "rows": rows,
            "best": {k: lb.clear_best(k) for k in lb.metrics},
            "scores": lb.rows(),
            "images": n,
            "target": lb.settings.get("target"),
            "auc_settings": lb.settings.get("metrics", {}).get("deletion_auc"),
        }
        atomic_write(path, json.dumps(jsonable(info)).encode())
        return info
