"""BatchNorm running statistics made one model across ranks (``sofnet.train.loop.average_bn_statistics``).

Two real processes on a gloo process group (what DeepSpeed uses on CPU) train-mode-forward different batches, so
their running statistics differ as they do under DeepSpeed, which never syncs buffers; after the call both ranks
hold the mean of the two, bit for bit the same, and weights and non-BN buffers are untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sofnet.train.loop import average_bn_statistics
from sofnet.session import free_port


def _net() -> nn.Module:
    torch.manual_seed(0)  # the same weights on both ranks, as after DeepSpeed's initial broadcast
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    net.register_buffer("other", torch.full((3,), float(7)))  # not BN statistics: must be left alone
    return net


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        net = _net()
        net.other += rank  # a buffer that differs per rank but is no BN statistic
        torch.manual_seed(100 + rank)
        net.train()
        for _ in range(3):  # each rank sees its own batches: its running statistics drift apart
            net(torch.randn(4, 3, 8, 8) * (1 + rank) + rank)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        assert average_bn_statistics(net) == 4  # two BN layers, mean and var each
        torch.save({"before": before, "after": net.state_dict()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_end_with_the_mean_of_their_statistics(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    stats = [k for k in r0["after"] if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 4
    for key in stats:
        assert not torch.equal(r0["before"][key], r1["before"][key]), f"{key}: the ranks did not drift (test inert)"
        assert torch.equal(r0["after"][key], r1["after"][key]), f"{key}: ranks still differ"
        mean = (r0["before"][key].double() + r1["before"][key].double()) / 2
        assert torch.allclose(r0["after"][key].double(), mean, rtol=0, atol=1e-6), key
    for key in r0["after"]:
        if key not in stats:  # weights, num_batches_tracked and other buffers stay as each rank had them
            assert torch.equal(r0["after"][key], r0["before"][key]) and torch.equal(r1["after"][key],
                                                                                      r1["before"][key]), key
    assert not torch.equal(r0["after"]["other"], r1["after"]["other"])


def test_one_process_without_a_group_is_a_no_op() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert average_bn_statistics(net) == 0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
