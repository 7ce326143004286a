"""Run under torchrun by test_dissect.py: network dissection of a small net, sharded over the processes."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def run_scan():
    from cnnlens import scan
    from cnnlens.inside.dissect import DissectionAccumulator

    torch.set_num_threads(1)
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1)).eval()
    g = torch.Generator().manual_seed(5)
    x = F.avg_pool2d(torch.rand(23, 1, 24, 24, generator=g), 3, 1, 1)
    seg = F.interpolate(torch.randint(-1, 3, (23, 1, 6, 6), generator=g).float(), size=(24, 24), mode="nearest")
    acc = DissectionAccumulator(["1", "2"], seg[:, 0].long(), ["a", "b", "c"], quantile=0.02)
    (d,) = scan(net, torch.utils.data.TensorDataset(x, torch.zeros(23, dtype=torch.long)), [acc], batch_size=4)
    return d


if __name__ == "__main__":
    dist.init_process_group("gloo")
    d = run_scan()
    if dist.get_rank() == 0:
        torch.save({"dissection": d, "world": dist.get_world_size()}, sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()
