"""Set SoF-Net's gates to stop chosen fractions of frames at each block, using the real gates.

Benchmarks and tests need gates that stop a known share of frames (the paper's 49.6% frame usage, or a stop at
every block) before any training. Instead of bypassing the gates, this module only moves each gate head's
bias: gate by gate, it runs the dense path in evaluation, takes the forward-minus-stop margins of the frames
that reached the gate, and shifts the bias so that the wanted fraction falls below zero (half way between two
frames, so no margin sits on the tie). The LSTMs, the pooling and the schedule stay the real ones.

    survival = [0.9, 0.8, 0.7, 0.6, 0.496]         # share of frames that pass gate 0..4
    calibrate_gates(model, clips, survival)
    model.infer(clips).frame_usage.mean()          # ~0.496
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


@torch.no_grad()
def spread_gate_heads(model: torch.nn.Module, seed: int = 0, scale: float = 4.0) -> None:
    """Give every gate head random, decisive weights (the trained heads' job), so that decisions depend on
    the frame. ``scale`` multiplies a unit-variance init of the 2-way head."""
    g = torch.Generator().manual_seed(seed)
    for gate in model.gates:
        w = torch.randn(gate.head.weight.shape, generator=g) * scale
        gate.head.weight.copy_(w.to(gate.head.weight))
        proj = torch.randn(gate.proj.weight.shape, generator=g) / gate.proj.weight.shape[1] ** 0.5
        gate.proj.weight.copy_(proj.to(gate.proj.weight))


@torch.no_grad()
def calibrate_gates(model: torch.nn.Module, clips: torch.Tensor, survival: Sequence[float],
                    seed: Optional[int] = 0) -> list[float]:
    """Move each gate's bias so that a share ``survival[k]`` of all frames passes gate k.

    Args:
        model: a SoF-Net in eval mode.
        clips: [B, T, 3, H, W] inputs the fractions are measured on.
        survival: non-increasing shares in (0, 1], one per gate: frames passing gate k / all frames.
        seed: when not None, first spread the heads with :func:`spread_gate_heads`.

    Returns:
        The measured survival after each gate.
    """
    if len(survival) != len(model.gates):
        raise ValueError(f"survival needs {len(model.gates)} values, got {len(survival)}")
    if any(b > a for a, b in zip([1.0, *survival], survival)) or not all(0 < s <= 1 for s in survival):
        raise ValueError(f"survival must be non-increasing within (0, 1]: {list(survival)}")
    if model.training:
        raise RuntimeError("calibrate_gates() measures evaluation decisions: call model.eval() first")
    if seed is not None:
        spread_gate_heads(model, seed)
    total = clips.shape[0] * clips.shape[1]
    for k, gate in enumerate(model.gates):
        gate.head.bias.zero_()
        out = model(clips)
        reached = out.decisions >= k
        margin = (out.gate_logits[..., k, 1] - out.gate_logits[..., k, 0])[reached].double()
        m = margin.sort(descending=True).values
        keep = min(max(int(round(survival[k] * total)), 0), m.numel())
        if keep == m.numel():
            shift = -float(m[-1]) + 1.0
        elif keep == 0:
            shift = -float(m[0]) - 1.0
        else:
            shift = -0.5 * float(m[keep - 1] + m[keep])  # half way between the last kept and first stopped
        gate.head.bias.copy_(torch.tensor([0.0, shift], dtype=gate.head.bias.dtype))
    out = model(clips)
    return [float((out.decisions > k).float().mean()) for k in range(len(model.gates))]
