"""The dense and skipping paths agree; the temporal shift, fallback, early exit and weight transfer behave."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from helpers import clips, gated, tiny_model
from sofnet.gate_control import calibrate_gates
from sofnet.config import model_config
from sofnet.models import TSN, SoFNet, build_model, load_backbone_state
from sofnet.models.backbone import TemporalShift

ET_CASES = [  # (rho, t_min, mode, chunk)
    (None, None, "reached", None),
    (0.9, 2, "reached", 1),
    (0.9, 2, "reached", 3),
    (0.9, 3, "official", 2),
]


def assert_same(dense, skip, atol=1e-9):
    assert torch.equal(dense.decisions, skip.decisions)
    assert torch.equal(dense.exit_step, skip.exit_step)
    assert torch.equal(dense.fallback, skip.fallback)
    torch.testing.assert_close(dense.logits, skip.logits, atol=atol, rtol=0)
    torch.testing.assert_close(dense.gflops, skip.gflops)
    g = dense.gate_computed
    torch.testing.assert_close(dense.gate_logits[g], skip.gate_logits[g], atol=atol, rtol=0)
    torch.testing.assert_close(dense.aux_logits[g], skip.aux_logits[g], atol=atol, rtol=0)
    p = dense.decisions == 5
    torch.testing.assert_close(dense.frame_logits[p], skip.frame_logits[p], atol=atol, rtol=0)
    assert not skip.gate_logits[~g].any() and not skip.frame_logits[~p].any(), "skipping path computed a skip"


@lru_cache(maxsize=None)
def calibrated(arch: str, seed: int):
    x = clips(3, 8, 64, seed)
    return x, gated(arch, x, seed=seed)


@pytest.mark.parametrize("arch", ["sofnet", "sofnet_tsm"])
@pytest.mark.parametrize("rho,t_min,mode,chunk", ET_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_dense_and_skipping_paths_agree(arch, rho, t_min, mode, chunk, seed):
    x, model = calibrated(arch, seed)
    dense = model(x, rho=rho, t_min=t_min, mode=mode)
    skip = model.infer(x, rho=rho, t_min=t_min, mode=mode, chunk=chunk)
    if rho is None:  # the gates really stop frames at every block, and some reach the classifier
        assert set(dense.decisions.flatten().tolist()) == {0, 1, 2, 3, 4, 5}
    else:
        assert (dense.exit_step < 8).any(), "early exit never fired: the case proves nothing"
        assert (dense.decisions == -1).any()
    assert_same(dense, skip)


def test_float32_paths_agree():
    x = clips(4, 8, 64, 3, dtype=torch.float32)
    model = gated("sofnet_tsm", x, seed=3, survival=(0.8, 0.6, 0.45, 0.3, 0.2))
    dense, skip = model(x), model.infer(x)
    assert set(dense.decisions.flatten().tolist()) == {0, 1, 2, 3, 4, 5}
    assert_same(dense, skip, atol=1e-4)


def test_skipping_path_survives_blocks_no_frame_reaches():
    # Very few frames go deep: with one-step chunks whole blocks see empty batches, and the causal shift's
    # carried features must still be reset to zeros there.
    x = clips(2, 10, 64, 4)
    model = gated("sofnet_tsm", x, seed=4, survival=(0.5, 0.3, 0.2, 0.15, 0.15), fc_scale=0.3)
    dense = model(x, rho=0.99, t_min=2)
    skip = model.infer(x, rho=0.99, t_min=2, chunk=1)
    assert_same(dense, skip)


def test_no_frame_passes_falls_back_to_deepest_auxiliary_head():
    x = clips(2, 6, 64, 5)
    model = gated("sofnet", x, seed=5)
    with torch.no_grad():  # gate 2 stops everything: frames end at gates 0, 1 or 2
        model.gates[2].head.bias.copy_(torch.tensor([0.0, -1e6], dtype=x.dtype))
    for out in (model(x), model.infer(x)):
        assert out.fallback.all()
        assert (out.decisions <= 2).all()
        for b in range(2):
            deepest = int(out.decisions[b].max())
            sel = out.decisions[b] == deepest
            expect = out.aux_logits[b, sel, deepest].mean(dim=0)
            torch.testing.assert_close(out.logits[b], expect)


def test_frames_seen_score_divides_by_the_frames_seen_on_both_paths():
    """model.video_score: the official mean over the frames that reached the classifier, and the deviation
    frames_seen, the same sum over the frames seen (T, or the exit step + 1); dense and skipping paths agree on both,
    with and without early exit (whose confidence is that of the score)."""
    import copy

    x, official = calibrated("sofnet", 0)
    seen = copy.deepcopy(official)
    seen.cfg.video_score = "frames_seen"
    for rho, t_min, chunk in ((None, None, None), (0.6, 2, 1)):
        out = {}
        for name, model in (("official", official), ("seen", seen)):
            out[name] = dense = model(x, rho=rho, t_min=t_min)
            assert_same(dense, model.infer(x, rho=rho, t_min=t_min, chunk=chunk))
            passed = (dense.decisions == 5).unsqueeze(-1)
            total = (dense.frame_logits * passed).sum(dim=1)
            ok = ~dense.fallback
            den = passed.sum(dim=1) if name == "official" else dense.exit_step.unsqueeze(-1)
            torch.testing.assert_close(dense.logits[ok], (total / den)[ok], atol=1e-9, rtol=0)
        assert not torch.equal(out["official"].logits, out["seen"].logits)
        if rho is not None:
            assert (out["seen"].exit_step < 8).any(), "early exit never fired: the case proves nothing"


def test_early_exit_counts_t_min_as_documented():
    x = clips(2, 8, 64, 6)
    model = gated("sofnet", x, seed=6, survival=(1, 1, 1, 1, 1))  # every frame reaches the classifier
    out = model.infer(x, rho=1e-9, t_min=3)  # any confidence suffices: exit as soon as the count allows
    assert out.exit_step.tolist() == [3, 3]
    assert (out.decisions[:, 3:] == -1).all() and (out.decisions[:, :3] == 5).all()
    official = model.infer(x, rho=1e-9, t_min=3, mode="official")  # t > t_min - 1 (0-based): 4 steps
    assert official.exit_step.tolist() == [4, 4]
    torch.testing.assert_close(out.logits, out.frame_logits[:, :3].mean(dim=1))


def test_bidirectional_shift_matches_reference():
    torch.manual_seed(0)
    shift = TemporalShift(torch.nn.Identity(), num_segments=4, div=4, mode="bidirectional")
    x = torch.randn(2 * 4, 8, 3, 3)
    y = shift(x).view(2, 4, 8, 3, 3)
    v = x.view(2, 4, 8, 3, 3)
    for t in range(4):
        nxt = v[:, t + 1, :2] if t < 3 else torch.zeros_like(v[:, 0, :2])
        prv = v[:, t - 1, 2:4] if t > 0 else torch.zeros_like(v[:, 0, 2:4])
        torch.testing.assert_close(y[:, t, :2], nxt)
        torch.testing.assert_close(y[:, t, 2:4], prv)
        torch.testing.assert_close(y[:, t, 4:], v[:, t, 4:])


def test_causal_shift_reads_only_the_past():
    torch.manual_seed(0)
    shift = TemporalShift(torch.nn.Identity(), num_segments=5, div=8, mode="causal")
    x = torch.randn(5, 16, 2, 2, requires_grad=True)
    y = shift(x)
    for t in range(5):  # output at t depends on no input after t
        (g,) = torch.autograd.grad(y[t].sum(), x, retain_graph=True)
        assert not g[t + 1:].any()
    torch.testing.assert_close(y[1:, :2], x[:-1, :2])
    assert not y[0, :2].any()


def test_gathered_causal_shift_equals_reshape_shift():
    # SoF-Net^TSM with every gate forwarding computes exactly the causal TSM of its stage-1 warm-up.
    x = clips(2, 6, 64, 7)
    sof = tiny_model("sofnet_tsm", segments=6)
    tsm = tiny_model("tsm", shift="causal", segments=6)
    load_backbone_state(sof, tsm.state_dict(), "tsm")
    calibrate_gates(sof, x, (1, 1, 1, 1, 1))
    out, ref = sof.infer(x), tsm.infer(x)
    assert (out.decisions == 5).all()
    torch.testing.assert_close(out.frame_logits, ref.frame_logits)
    torch.testing.assert_close(out.logits, ref.logits)


def test_stage1_weights_load_and_mismatch_is_named():
    tsn = tiny_model("tsn")
    sof = tiny_model("sofnet")
    load_backbone_state(sof, tsn.state_dict(), "stage1.pt")
    torch.testing.assert_close(sof.fc.weight, tsn.fc.weight)
    other = tiny_model("tsn", classes=9)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_backbone_state(sof, other.state_dict(), "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        load_backbone_state(sof, {"bogus.weight": torch.zeros(1)}, "other.pt")


def test_training_mode_is_stochastic_and_differentiable():
    x = clips(2, 4, 64, 8, dtype=torch.float32)
    model = tiny_model("sofnet", segments=4, dtype=torch.float32).train()
    assert model.set_epoch(10) == pytest.approx(5.0 * torch.exp(torch.tensor(-0.45)).item())
    out = model(x)
    assert set(out.reach.unique().tolist()) <= {0.0, 1.0}
    (out.logits.sum() + out.reach.sum()).backward()
    assert model.gates[0].head.weight.grad is not None and model.gates[0].head.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="model.eval"):
        model.infer(x)


def test_partial_bn_freezes_all_but_the_first():
    model = tiny_model("tsn", partial_bn=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns[0].training and bns[0].weight.requires_grad
    assert not any(bn.training or bn.weight.requires_grad for bn in bns[1:])
    model = tiny_model("tsn", partial_bn=False).train()
    assert all(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_build_model_by_name_and_bad_inputs():
    assert isinstance(build_model(model_config(arch="tsm", backbone="resnet18")), TSN)
    assert isinstance(build_model({"arch": "sofnet_tsm", "backbone": "resnet18"}), SoFNet)
    with pytest.raises(ValueError, match="unknown model.arch"):
        build_model({"arch": "i3d"})
    with pytest.raises(ValueError, match="unknown model config keys"):
        build_model({"arch": "tsn", "bakbone": "resnet18"})
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_model({"arch": "tsn", "backbone": "resnet18", "pretrained": "/tmp/nope.pt"})
    tsm = tiny_model("tsm")
    with pytest.raises(ValueError, match="causal"):
        tsm.infer(clips(1, 8, 64, 0), rho=0.9, t_min=2)


def test_gate_init_official_or_pytorch():
    """official: every new Linear N(0, 0.001), the gate projection too; pytorch: the projection keeps PyTorch's
    default, so the LSTM input follows the frame's features instead of being ~1e-3 of them."""
    x = clips(1, 8, 64, 3, dtype=torch.float32)
    spread = {}
    for init in ("official", "pytorch"):
        model = tiny_model(gate_init=init, dtype=torch.float32)
        proj = model.gates[0].proj
        if init == "official":
            assert proj.weight.std().item() == pytest.approx(0.001, rel=0.2) and not proj.bias.any()
        else:  # kaiming-uniform(a=sqrt(5)): std = 1 / sqrt(3 fan_in)
            assert proj.weight.std().item() == pytest.approx((3 * proj.in_features) ** -0.5, rel=0.2)
        for gate in model.gates:  # the heads follow the official init either way
            assert gate.head.weight.std().item() == pytest.approx(0.001, rel=0.3)
        with torch.no_grad():
            stem = model.trunk.blocks[0](x[0])
            z = model.gates[0].proj(stem.mean(dim=(2, 3)))
        spread[init] = z.std(dim=0).mean().item()  # how much the gate input differs between frames
    assert spread["pytorch"] > 30 * spread["official"]  # ~70x at 64 channels (std 0.072 vs 0.001)
    with pytest.raises(ValueError, match="gate_init"):
        build_model({"arch": "sofnet", "backbone": "resnet18", "gate_init": "xavier"})


def test_pretrained_file_loads_into_trunk(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save(net.state_dict(), path)
    model = build_model({"arch": "sofnet", "backbone": "resnet18", "pretrained": str(path), "num_classes": 3})
    torch.testing.assert_close(model.trunk.stem[0].weight, net.conv1.weight)
    torch.testing.assert_close(model.trunk.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
