"""FLOPs: FlopCounterMode agrees with an independent count, and accounting agrees with execution."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torchvision

from helpers import clips, gated
from sofnet.flops import dense_costs, executed_gflops, summarize


def hook_count_gmacs(net: torch.nn.Module, size: int) -> float:
    """Independent count: multiply-accumulates of every conv and linear from their output shapes."""
    total = 0

    def conv(m, _inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, _inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(linear)
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return total / 1e9


def test_dense_resnet50_at_224_matches_an_independent_count():
    ours = dense_costs("tsn", "resnet50", segments=16, size=224, num_classes=1000)
    independent = hook_count_gmacs(torchvision.models.resnet50(weights=None).eval(), 224)
    assert ours["gflops_per_frame"] == pytest.approx(independent, rel=0.01)
    assert ours["gflops_per_frame"] == pytest.approx(4.09, rel=0.01)  # the published ResNet-50 figure
    assert ours["gflops_per_video"] == pytest.approx(16 * ours["gflops_per_frame"])


def test_cli_prints_json():
    res = subprocess.run([sys.executable, "-m", "sofnet.flops", "--model", "tsn", "--backbone", "resnet50",
                          "--segments", "16", "--size", "224"], capture_output=True, text=True, check=True)
    data = json.loads(res.stdout)
    assert data["gflops_per_video"] == pytest.approx(65.4, rel=0.01)
    assert data["gflops_per_frame"] == pytest.approx(4.09, rel=0.01)


def test_executed_flops_equal_accounting():
    x = clips(2, 8, 64, 0)
    model = gated("sofnet_tsm", x, seed=0)
    out, executed = executed_gflops(model, x)
    assert executed == pytest.approx(float(out.gflops.mean()), rel=1e-6)
    table = model.cost_table(64, 64)
    dense = sum(table.blocks) + sum(table.gates) + table.fc
    assert executed < 0.8 * dense * 8  # gates stopped frames: the skipped blocks were really not run
    # Early exit in one-step chunks wastes nothing; longer chunks may compute frames past the exit.
    out1, ex1 = executed_gflops(model, x, rho=0.9, t_min=2, chunk=1)
    assert ex1 == pytest.approx(float(out1.gflops.mean()), rel=1e-6)
    out4, ex4 = executed_gflops(model, x, rho=0.9, t_min=2, chunk=4)
    assert ex4 >= ex1 - 1e-9 and torch.equal(out4.decisions, out1.decisions)


def test_summarize():
    x = clips(2, 8, 64, 1)
    model = gated("sofnet", x, seed=1)
    outs = [model.infer(x[:1]), model.infer(x[1:])]
    s = summarize(outs)
    full = model.infer(x)
    assert s["videos"] == 2
    assert s["frame_usage"] == pytest.approx(float((full.decisions == 5).float().mean()))
    assert s["gflops_per_frame"] == pytest.approx(s["gflops_per_video"] / 8)
    assert s["survival"][0] == 1.0 and s["survival"][-1] == pytest.approx(s["frame_usage"])
