"""A command's skeleton, once: where it runs (torchrun or not) → the model → the data → a progress bar.

Every command that takes ``--model`` (explain, attack, robustness, benchmark, evaluate, explore, layers,
microscope and the ``inside`` commands) opens it from the shared options (``--model --weights --pretrained
--trust-pickle --device`` and the spec options, see :mod:`cnnlens.cli.options`), takes data from ``--data`` and
shows progress; :func:`session` (under ``torchrun`` with a process group) and :func:`open_model` (one process) are
that sequence.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import UserError, distributed, load_model_from_options, names_from_data, parse_device, progress_bar

# Imported late, inside functions: torch, cnnlens.data (imports torch). `cnnlens --help` imports this module, and
# torch alone would add ≈2 s to it.


@dataclasses.dataclass
class Session:
    """The model a command works on and where it runs: ``rank`` of ``world`` processes on ``device``."""

    name: str  #: the model as given on the command line (``--model``)
    model: Any  #: the loaded model, on ``device``
    device: str
    rank: int = 0
    world: int = 1

    @property
    def writes(self) -> bool:
        """Whether this process prints and writes files (rank 0)."""
        return self.rank == 0

    @property
    def class_names(self) -> list[str] | None:
        """The model's class names (the data's folder names once a dataset named classes the model had not)."""
        spec = getattr(self.model, "spec", None)
        return list(getattr(spec, "class_names", ()) or ()) or None

    def progress(self, description: str, total: int | None = None):
        """A progress bar drawn by rank 0 only (see :func:`cnnlens.cli.common.progress_bar`)."""
        return progress_bar(description, total, rank=self.rank, world=self.world)

    def dataset(self, data: str, n: int | None = None, labels_for: str | None = None):
        """``--data`` read for the model (its class names given to the model when it has none); the first ``n``
        items if ``n``; labels required (the error names ``labels_for``) if given."""
        from ..data import as_dataset, require_labels

        ds = as_dataset(data, self.model)
        if labels_for is not None:
            require_labels(ds, labels_for)
        names_from_data(self.model, ds)
        if n:
            import torch

            ds = torch.utils.data.Subset(ds, range(min(n, len(ds))))
        return ds


def open_model(
    model: str,
    weights: Path | None,
    pretrained: bool,
    trust_pickle: bool,
    device: str,
    rank: int = 0,
    world: int = 1,
) -> Session:
    """The command's model from its options, as a :class:`Session` of one process (or of ``rank``/``world``)."""
    m = load_model_from_options(model, weights, pretrained, trust_pickle, device)
    return Session(model, m, parse_device(device), rank, world)


@contextlib.contextmanager
def session(
    model: str,
    weights: Path | None,
    pretrained: bool,
    trust_pickle: bool,
    device: str,
    *,
    one_process: str | None = None,
) -> Iterator[Session]:
    """:func:`open_model` inside :func:`cnnlens.cli.common.distributed`: under ``torchrun`` each process gets its
    rank, and the process group ends with the block. A command that cannot share its work passes
    ``one_process`` (the error shown under ``torchrun``)."""
    with distributed(device) as (rank, world, dev):
        if world > 1 and one_process:
            raise UserError(one_process)
        yield open_model(model, weights, pretrained, trust_pickle, dev, rank, world)
