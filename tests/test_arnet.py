"""AR-Net: the adaptive inference path returns what the training path returns, runs only what was chosen, and its
GFLOPs are what really ran. Tiny sizes (resnet18 backbones at 32/24 px, policy at 16 px) keep it to seconds."""

from __future__ import annotations

import pytest
import torch

from sofnet.models.arnet import ARNet
from sofnet.models.costs import count_gmacs

KW = {"num_classes": 5, "backbones": (("resnet18", 32), ("resnet18", 24)), "policy_size": 16, "hidden": 16,
      "skips": (1, 2)}


def _model(seed: int = 0) -> ARNet:
    torch.manual_seed(seed)
    model = ARNet(**KW)
    for bn in model.modules():  # BN statistics of real activations (at init they are 0/1 and the features vanish)
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(4, 4, 3, 32, 32))
        # a policy with an opinion: the official N(0, 0.001) init picks almost uniformly
        model.linear.weight.normal_(0, 3.0)
        model.lite_fc.weight.normal_(0, 0.5)
    return model.eval()


def test_infer_equals_training_path_with_every_kind_of_action() -> None:
    model = _model()
    x = torch.randn(6, 8, 3, 32, 32)
    dense = model(x)
    fast = model.infer(x)
    used = set(fast.actions.flatten().tolist())
    assert {0, 1, 2} & used and {3, 4} & used and len(used) >= 3, used  # backbones, the policy's own head, skips
    assert torch.equal(dense.actions, fast.actions)
    torch.testing.assert_close(fast.logits, dense.logits, rtol=1e-4, atol=1e-5)


def test_skip_covers_the_next_frames_and_all_skipped_gives_zeros() -> None:
    model = _model(1)
    skip2 = model.reso_dim + 1  # "skip 2": the deciding frame and the next one
    with torch.no_grad():
        model.linear.bias[skip2] += 4.0  # make skip 2 common, not universal
    actions = model.infer(torch.randn(6, 8, 3, 32, 32)).actions
    decided = 0
    for row in actions.tolist():
        t = 0
        while t < len(row):  # walk the decisions: a skip s decided at t covers t .. t+s-1
            span = model.skips[row[t] - model.reso_dim] if row[t] >= model.reso_dim else 1
            assert row[t:t + span] == [row[t]] * len(row[t:t + span]), row
            decided += row[t] == skip2 and t + 1 < len(row)
            t += span
    assert decided > 0, actions
    with torch.no_grad():
        model.linear.bias[skip2] += 100.0  # every decision skips: no frame votes, the video logits are zeros
    out = model.infer(torch.randn(2, 8, 3, 32, 32))
    assert bool((out.actions == skip2).all()) and bool((out.logits == 0).all())


def test_gflops_are_what_ran() -> None:
    model = _model()
    x = torch.randn(3, 8, 3, 32, 32)
    costs = model.frame_costs()  # cached before counting, so the count below holds only infer's own work
    executed = count_gmacs(lambda: model.infer(x))
    out = model.infer(x)
    assert float(out.gflops.sum()) == pytest.approx(executed, rel=1e-6)
    fresh = count_gmacs(lambda: model.backbones[1](torch.zeros(1, 3, 24, 24)))  # counted on the real module
    assert costs[1] == pytest.approx(fresh, rel=1e-9) and costs[0] > costs[1] > 0 and costs[2] > 0
    skipped = (out.actions >= model.reso_dim).sum()
    assert skipped > 0  # frames that skip cost the policy alone
    assert float(model.action_costs()[model.reso_dim]) == pytest.approx(costs[2])


def test_infer_refuses_training_mode() -> None:
    model = _model().train()
    with pytest.raises(RuntimeError, match="model.eval"):
        model.infer(torch.randn(1, 2, 3, 32, 32))


def test_official_costs_match_the_authors_table() -> None:
    """The authors' thop table (facts sheet, section 6: R50@224 4.132, R34@168 2.253, R18@112 0.488 GFLOPs, C=200):
    thop also counts BN and ReLU, this counter only convs, matmuls and the LSTM's, hence ~1 % below."""
    costs = ARNet(num_classes=200).frame_costs()
    for ours, theirs in zip(costs[:3], (4.132, 2.253, 0.488)):
        assert 0.98 * theirs <= ours <= theirs
    assert 0.045 <= costs[3] <= 0.055 + 0.0033  # MobileNetV2@84 + LSTMCell(1280, 512) + heads


def test_loss_is_the_authors_formula_by_hand() -> None:
    from sofnet.models.arnet import ARNetOutput, arnet_loss

    # 2 videos x 2 frames, actions [R0, skip] and [R1, R1] over A = 5 (2 backbones, lite, 2 skips)
    one_hot = torch.zeros(2, 2, 5)
    one_hot[0, 0, 0] = one_hot[0, 1, 3] = one_hot[1, 0, 1] = one_hot[1, 1, 1] = 1
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = ARNetOutput(logits, one_hot.argmax(-1), one_hot=one_hot.requires_grad_())
    terms = arnet_loss(out, torch.tensor([0, 2]), [4.0, 2.0])
    loss = terms["loss"]
    ce = (-torch.log_softmax(logits, -1)[0, 0] - torch.log_softmax(logits, -1)[1, 2]) / 2
    eff = (1 * 4.0 + 2 * 2.0) / 4  # frames on R0, R1 times their GFLOPs, over batch x frames
    usage = torch.tensor([1, 2, 0, 1, 0]) / 4
    uniform = float(((usage - usage.mean()) ** 2).sum().sqrt())
    assert float(terms["eff"].detach()) == pytest.approx(eff)
    assert float(terms["uniform"].detach()) == pytest.approx(uniform)
    assert float(loss.detach()) == pytest.approx(0.95 * float(ce) + 0.05 * (eff + 3.0 * uniform))
    loss.backward()
    assert one_hot.grad is not None  # the policy learns through the straight-through one-hots
