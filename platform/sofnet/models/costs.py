"""Per-block compute, counted by ``torch.utils.flop_counter.FlopCounterMode`` on a meta-device twin.

The field reports multiply-accumulates as "GFLOPs" (thop's MACs, fvcore's "flops"); FlopCounterMode counts
2 FLOPs per MAC, so every number here is its count / 2 / 1e9 and is called GMACs in code, "GFLOPs" in
reports. Like thop and fvcore on convolutions, it counts convs, matmuls and the LSTM's matmuls, not the
element-wise work (BN, ReLU, pooling, sigmoids): the part that dominates and that skipping saves.

Counting on ``meta`` tensors costs no compute and leaves the real model (BN statistics, ZeRO-partitioned
parameters) untouched.
"""

from __future__ import annotations

from typing import Callable, List

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sofnet.models.backbone import CostTable


def count_gmacs(fn: Callable[[], object]) -> float:
    """GMACs executed by ``fn()`` (FLOPs counted by FlopCounterMode / 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2 / 1e9


def measure_cost_table(trunk: nn.Module, gates: List[nn.Module], fc: nn.Module, height: int, width: int,
                       frames: int) -> CostTable:
    """Cost per frame of each block, gate and the classifier of a meta-device model.

    Args:
        trunk: a ``ResNetTrunk`` on the meta device.
        gates: its gates (may be empty for TSN/TSM), on the meta device.
        fc: the classifier, on the meta device.
        height, width: input resolution.
        frames: frames to push through at once (the TSM reshape needs a multiple of num_segments); the
            result is divided by it.
    """
    x = torch.empty(frames, 3, height, width, device="meta")
    blocks, gate_costs = [], []
    for k, block in enumerate(trunk.blocks):
        blocks.append(count_gmacs(lambda: block(x)) / frames)
        x = block(x)
        if gates:
            gate = gates[k]
            h = torch.empty(frames, gate.lstm.hidden_size, device="meta")

            def run_gate() -> None:
                hn, _ = gate.step(gate.input_gates(x), h, h)
                gate.head(hn)
                gate.aux(hn)

            gate_costs.append(count_gmacs(run_gate) / frames)
    pooled = torch.empty(frames, x.shape[1], device="meta")
    return CostTable(blocks=blocks, gates=gate_costs, fc=count_gmacs(lambda: fc(pooled)) / frames)
