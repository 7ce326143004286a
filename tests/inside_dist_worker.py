"""Run under torchrun by test_inside_distributed.py: one scan with search, statistics and influence."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))


def run_scan(batch_size: int = 1):
    from inside_nets import pixel_chain_net

    from cnnlens import scan
    from cnnlens.inside import InfluenceAccumulator, SearchAccumulator, StatsAccumulator

    torch.set_num_threads(1)
    model = pixel_chain_net(seed=7)
    g = torch.Generator().manual_seed(11)
    ds = torch.utils.data.TensorDataset(torch.rand(21, 1, 16, 16, generator=g), torch.randint(0, 3, (21,), generator=g))
    accs = [
        SearchAccumulator(model, "features.4", k=4),
        StatsAccumulator("net.features.7", torch.linspace(0, 4, 9), num_classes=3),
        InfluenceAccumulator(model, "features.7", target="true"),
    ]
    return scan(model, ds, accs, batch_size=batch_size)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    search, stats, infl = run_scan()
    if dist.get_rank() == 0:
        torch.save({"search": search, "stats": stats, "influence": infl, "world": dist.get_world_size()}, sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()
