"""The commands' skeleton (cli/session.py): model, data and progress from the shared options."""

from __future__ import annotations

import pytest
import torch

from cnnlens.cli.common import UserError
from cnnlens.cli.session import Session, open_model, session
from cnnlens.data import as_dataset


def test_open_model_and_dataset_equal_the_direct_calls():
    s = open_model("digits-cnn", None, False, False, "cpu")
    assert isinstance(s, Session) and s.name == "digits-cnn" and s.device == "cpu" and s.writes
    assert s.class_names == [str(d) for d in range(10)]
    ds = s.dataset("digits", n=5, labels_for="a test")
    full = as_dataset("digits", s.model)
    assert len(ds) == 5
    for i in range(5):
        (a, ya), (b, yb) = ds[i], full[i]
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)) and int(ya) == int(yb)
    assert len(s.dataset("digits")) == len(full)


def test_session_in_one_process_and_one_process_only(monkeypatch):
    with session("digits-cnn", None, False, False, "cpu") as s:
        assert (s.rank, s.world, s.device) == (0, 1, "cpu")
        with s.progress("x", 3) as update:  # not a terminal: silent
            update(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29731")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr("torch.distributed.init_process_group", lambda **kw: None)
    monkeypatch.setattr("torch.distributed.is_initialized", lambda: True)  # no group of ours to end
    monkeypatch.setattr("torch.distributed.get_rank", lambda: 0)
    monkeypatch.setattr("torch.distributed.get_world_size", lambda: 2)
    with pytest.raises(UserError, match="one process"):
        with session("digits-cnn", None, False, False, "cpu", one_process="runs in one process"):
            pass
