"""The SoF-Net objective: each term does what its docstring says, and gradients reach the gates."""

from __future__ import annotations

import pytest
import torch

from helpers import clips, tiny_model
from sofnet.losses import classification_loss, efficiency_loss, gate_guidance_loss, gate_pseudo_labels, sofnet_loss
from sofnet.models import SoFOutput
from sofnet.models.backbone import CostTable

COSTS = CostTable(blocks=[1.0, 2.0, 3.0, 4.0, 5.0], gates=[0.1] * 5, fc=0.5)


def test_efficiency_loss_is_expected_cost_over_dense_cost():
    big = 50.0
    forward_all = torch.tensor([-big, big]).expand(2, 3, 5, 2)
    stop_first = torch.tensor([big, -big]).expand(2, 3, 5, 2)
    assert efficiency_loss(forward_all, COSTS).item() == pytest.approx((15.0 + 0.5 + 0.5) / 15.5)
    assert efficiency_loss(stop_first, COSTS).item() == pytest.approx(1.1 / 15.5)
    half = torch.zeros(1, 1, 5, 2)  # p = 0.5 at every gate: enter block k with 0.5 ** k
    expect = sum(0.5 ** k * (b + 0.1) for k, b in enumerate(COSTS.blocks)) + 0.5 ** 5 * 0.5
    assert efficiency_loss(half, COSTS).item() == pytest.approx(expect / 15.5)
    logits = torch.zeros(1, 1, 5, 2, requires_grad=True)
    efficiency_loss(logits, COSTS).backward()
    assert (logits.grad[..., 1] > 0).all() and (logits.grad[..., 0] < 0).all()  # descent favours "stop"


def _output(aux_conf: list[float], final_conf: float) -> SoFOutput:
    """One video, one frame, two classes; head k puts probability aux_conf[k] on class 0."""
    def logit(p: float) -> torch.Tensor:
        return torch.tensor([0.0, -torch.log(torch.tensor(p / (1 - p))).item()])

    aux = torch.stack([logit(p) for p in aux_conf]).view(1, 1, 5, 2)
    frame = logit(final_conf).view(1, 1, 2)
    gates = torch.zeros(1, 1, 5, 2, requires_grad=True)
    return SoFOutput(logits=frame[:, 0], decisions=torch.tensor([[5]]), exit_step=torch.tensor([1]),
                     frame_logits=frame, aux_logits=aux, gate_logits=gates, reach=torch.ones(1, 1, 6),
                     gflops=torch.zeros(1), fallback=torch.tensor([False]))


def test_gate_guidance_forwards_where_the_next_head_is_more_confident():
    # confidences on the true class along heads 0..5: up, down, up, down, up
    out = _output([0.3, 0.6, 0.4, 0.7, 0.5], final_conf=0.8)
    loss = gate_guidance_loss(out, torch.tensor([0]))
    loss.backward()
    grad_fwd = out.gate_logits.grad[0, 0, :, 1]
    # gradient descent raises the forward logit exactly where the pseudo-label says forward
    assert (grad_fwd < 0).tolist() == [True, False, True, False, True]
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_gate_label_final_forwards_where_the_final_head_beats_this_one_by_the_margin():
    # heads 0..4 know nothing (0.125 +- noise) and the final head a little more: the official rule follows the
    # noise between heads, ``final`` asks whether the rest of the network adds confidence beyond the margin
    conf = torch.tensor([0.13, 0.12, 0.14, 0.11, 0.125, 0.16]).view(1, 1, 6)
    assert gate_pseudo_labels(conf, "next").flatten().tolist() == [0, 1, 0, 1, 1]
    assert gate_pseudo_labels(conf, "final").flatten().tolist() == [1, 1, 1, 1, 1]
    assert gate_pseudo_labels(conf, "final", 0.03).flatten().tolist() == [0, 1, 0, 1, 1]
    assert gate_pseudo_labels(conf, "final", 0.05).flatten().tolist() == [0, 0, 0, 0, 0]
    assert gate_pseudo_labels(conf, "next", 0.02).flatten().tolist() == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="loss.gate_label"):
        gate_pseudo_labels(conf, "deeper")
    out = _output([0.3, 0.6, 0.4, 0.7, 0.5], final_conf=0.65)  # the final head beats heads 0, 2, 4 by > 0.1
    loss = gate_guidance_loss(out, torch.tensor([0]), label="final", margin=0.1)
    loss.backward()
    assert (out.gate_logits.grad[0, 0, :, 1] < 0).tolist() == [True, False, True, False, True]


def test_sofnet_loss_terms_and_weights():
    x = clips(2, 4, 64, 0, dtype=torch.float32)
    model = tiny_model("sofnet", segments=4, dtype=torch.float32).train()
    out = model(x)
    costs = model.cost_table(64, 64)
    y = torch.tensor([1, 3])
    full = sofnet_loss(out, y, costs, alpha=0.9, beta=0.5)
    assert set(full) == {"loss", "acc", "eff", "pg", "gate", "aux"}
    f = {k: float(v.detach()) for k, v in full.items()}
    assert f["loss"] == pytest.approx(0.9 * f["acc"] + 0.1 * f["eff"] + f["pg"], rel=1e-5)
    assert f["pg"] == pytest.approx(0.5 * f["gate"] + 0.5 * f["aux"], rel=1e-5)
    off = sofnet_loss(out, y, costs, alpha=1.0, beta=None)
    assert set(off) == {"loss", "acc", "eff"} and off["loss"].item() == pytest.approx(off["acc"].item())
    full["loss"].backward()
    for name in ("proj.weight", "lstm.weight_ih", "head.weight", "aux.weight"):
        grad = dict(model.gates[1].named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    stage1 = classification_loss(tiny_model("tsn", segments=4, dtype=torch.float32)(x), y)
    assert stage1["loss"].requires_grad and stage1["loss"].item() > 0
