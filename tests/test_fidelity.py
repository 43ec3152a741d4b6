"""Each switch to the official SoF-Net recipe computes the official code's formula (README's deviation table).

The reference of each test is the official code's computation written out here independently (loops as in
``main_base.py`` / ``ops/models_sof.py``), not a call of the function under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import clips, gated, tiny_model
from sofnet.config import ConfigError, load_config, model_config
from sofnet.losses import (gate_guidance_loss, official_efficiency_loss, official_eff_weights, official_reach,
                           sofnet_loss)
from sofnet.metrics import map_metrics
from sofnet.models import build_model
from sofnet.models.backbone import CostTable
from sofnet.replay import ETCache, replay
from sofnet.schema import ModelConfig
from sofnet.train.deepspeed_config import (batch_params, deepspeed_config, effective_lr, lr_at, param_groups,
                                           per_worker_batch)

REPO = Path(__file__).resolve().parents[1]
PAPER = sorted([*(REPO / "jobs" / "configs").glob("anet_*.yaml"), *(REPO / "jobs" / "configs").glob("sports1m_*.yaml")])
COSTS = CostTable(blocks=[0.5, 1.0, 1.5, 2.0, 2.5], gates=[0.01, 0.02, 0.03, 0.04, 0.05], fc=0.2)


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_paper_configs_use_every_official_setting(path: Path) -> None:
    cfg = load_config(path)
    if cfg.model.arch == "arnet":  # AR-Net's authors' settings (their facts sheet, sections 4-5; test_train_unit)
        assert cfg.model.partial_bn is False and cfg.data.global_batch_size == 48
        assert (cfg.loss.alpha, cfg.loss.uniform_weight, cfg.early_exit.enabled) == (0.95, 3.0, False)
        for stage in ("stage1", "stage2", "stage3"):
            optim = cfg.train[stage].optim
            assert (optim.base_batch_size, optim.linear_lr_mult, optim.clip_grad) == (0, 5.0, 20.0)
        return
    assert cfg.model.partial_bn is False and cfg.model.gate_init == "official"
    assert (cfg.loss.gate_target, cfg.loss.eff_weights, cfg.early_exit.mode) == ("sample", "official", "official")
    assert (cfg.loss.gate_label, cfg.loss.gate_margin) == ("next", 0.0)
    assert cfg.model.video_score == "passed_mean"  # the benchmark recipe's frames_seen is a deviation (bench.yaml)
    assert cfg.data.global_batch_size == 24
    for stage in ("stage1", "stage2"):
        optim = cfg.train[stage].optim
        assert optim.base_batch_size == 0 and optim.gate_lr_mult == 1.0 and optim.linear_lr_mult == 5.0


def test_partial_bn_is_off_by_default_and_every_batchnorm_trains() -> None:
    assert ModelConfig().partial_bn is False  # the published commands pass --npb
    model = tiny_model("sofnet", segments=4, dtype=torch.float32).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bn.training and bn.weight.requires_grad and bn.bias.requires_grad for bn in bns)
    grouped = {id(p) for g in param_groups(model, 0.1, 1e-4, 5.0) for p in g["params"]}
    assert all(id(bn.weight) in grouped and id(bn.bias) in grouped for bn in bns)


def _official_policies(model: torch.nn.Module) -> dict[int, tuple[float, float]]:
    """(lr_mult, decay_mult) per parameter, as ``get_optim_policies`` (fc_lr5, partial BN off) assigns them."""
    out: dict[int, tuple[float, float]] = {}
    for m in model.modules():
        ps = list(m.parameters(recurse=False))
        if isinstance(m, torch.nn.Conv2d):
            out[id(ps[0])] = (1, 1)  # first conv and normal weights alike
            if len(ps) == 2:
                out[id(ps[1])] = (2, 0)
        elif isinstance(m, torch.nn.Linear):
            out[id(m.weight)], out[id(m.bias)] = (5, 1), (10, 0)
        elif isinstance(m, torch.nn.BatchNorm2d):
            out.update({id(p): (1, 0) for p in ps})
        elif isinstance(m, torch.nn.LSTMCell):
            out[id(m.weight_ih)] = out[id(m.weight_hh)] = (1, 1)
            out[id(m.bias_ih)] = out[id(m.bias_hh)] = (2, 0)
    return out


def test_lr_groups_equal_the_official_policies_lstm_biases_included() -> None:
    model = tiny_model("sofnet", segments=4, dtype=torch.float32)
    official = _official_policies(model)
    ours = {id(p): (g["lr_mult"], g["weight_decay"] / 1e-4) for g in param_groups(model, 0.01, 1e-4, 5.0)
            for p in g["params"]}
    assert ours == {k: (float(a), float(b)) for k, a, b in ((k, *v) for k, v in official.items())}
    groups = {g["name"]: g for g in param_groups(model, 0.01, 1e-4, 5.0)}
    lstm = model.gates[0].lstm
    assert lstm.bias_ih in groups["gate_lstm_bias"]["params"] and lstm.weight_ih in groups["gate_base"]["params"]


def _official_pseudo_and_gate_loss(sample: torch.Tensor, heads: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``confidence_criterion_loss``'s policy term, loop for loop."""
    probs = F.softmax(heads, dim=-1)
    loss, cnt = 0.0, 0.0
    for b in range(heads.shape[0]):
        conf = probs[b, :, :, target[b]]
        diff = torch.stack([conf[:, k] - conf[:, k - 1] for k in range(1, heads.shape[2])], dim=1)
        policy = (diff > 0).long()
        for k in range(heads.shape[2] - 1):
            cnt += 1.0
            loss = loss + torch.nn.CrossEntropyLoss()(sample[b, :, k, :], policy[:, k])
    return loss / cnt


def test_gate_target_sample_is_the_official_cross_entropy_of_the_hard_sample() -> None:
    torch.manual_seed(3)
    model = tiny_model("sofnet", segments=4, dtype=torch.float32, classes=4).train()
    out = model(clips(3, 4, 64, 3, dtype=torch.float32))
    y = torch.tensor([0, 2, 3])
    sample = out.gate_sample
    assert sample.shape == (3, 4, 5, 2) and set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(sample.detach().sum(-1), torch.ones(3, 4, 5))
    torch.testing.assert_close(torch.cumprod(sample[..., 1], dim=-1).detach(), out.reach[..., 1:].detach())
    heads = torch.cat([out.aux_logits, out.frame_logits.unsqueeze(2)], dim=2)
    expect = _official_pseudo_and_gate_loss(sample, heads.detach(), y)
    got = gate_guidance_loss(out, y, "sample")
    torch.testing.assert_close(got, expect)
    right, wrong = math.log1p(math.exp(-1)), math.log1p(math.e)  # the only two values a frame's term takes
    n_wrong = (got.item() * 60 - 60 * right) / (wrong - right)  # 60 = 3 videos x 4 frames x 5 gates
    assert abs(n_wrong - round(n_wrong)) < 1e-3 and 0 <= round(n_wrong) <= 60
    got.backward()  # the straight-through estimator carries the gradient to the gate
    assert model.gates[2].head.weight.grad is not None and model.gates[2].head.weight.grad.abs().sum() > 0
    assert not torch.allclose(gate_guidance_loss(out, y, "logits"), got)


def _official_cal_eff(sample: torch.Tensor, stage_gflops: list[float]) -> torch.Tensor:
    """``gate_fc_rnn_block_full``'s r and ``cal_eff``, written out as the official code runs them."""
    b, t, g, _ = sample.shape
    per_time = []
    for ti in range(t):
        old = torch.cat([torch.zeros(b, 1), torch.ones(b, 1)], 1)
        per_time.append(old)
        for k in range(g):
            take_bool = old[:, -1].unsqueeze(-1) > 0.5
            take_old, take_curr = (~take_bool).float(), take_bool.float()
            old = old * take_old + sample[:, ti, k] * take_curr
            per_time.append(old)
    r = torch.stack(per_time, dim=1).view(b, t, g + 1, 2)[..., -1]
    vec = list(stage_gflops)
    for i in range(1, len(vec)):
        vec[i] += vec[i - 1]
    total = vec[-1]
    vec = [total - v for v in vec]
    vec[-1] += 0.00001
    return torch.sum(torch.mean(r, dim=[0, 1]) * torch.tensor(vec))


def test_eff_weights_official_is_cal_eff_over_the_dense_cost_with_its_gradient() -> None:
    g = torch.Generator().manual_seed(5)
    fwd = (torch.rand(4, 6, 5, generator=g) < 0.7).float()
    sample = torch.stack([1 - fwd, fwd], dim=-1).requires_grad_(True)
    stages = [b + gg for b, gg in zip(COSTS.blocks, COSTS.gates)] + [COSTS.fc]
    expect = _official_cal_eff(sample, stages) / COSTS.dense()
    got = official_efficiency_loss(sample, COSTS)
    torch.testing.assert_close(got, expect.float())
    (g_expect,) = torch.autograd.grad(expect, sample)
    (g_got,) = torch.autograd.grad(official_efficiency_loss(sample, COSTS), sample)
    torch.testing.assert_close(g_got, g_expect)  # the gradient goes to the deciding gate only, as officially
    torch.testing.assert_close(official_reach(sample).detach(), torch.cat([torch.ones(4, 6, 1),
                                                                           torch.cumprod(fwd, -1)], -1))
    assert official_eff_weights(COSTS)[1:] == pytest.approx([sum(stages[i:]) for i in range(2, 6)] + [1e-5])


def test_official_eff_weights_of_resnet50_at_192_match_the_reference() -> None:
    with torch.device("meta"):
        model = build_model(model_config(arch="sofnet", num_classes=200))
    w = official_eff_weights(model.cost_table(192, 192))[1:]  # per gate: forwarding at gate j
    assert w == pytest.approx([2.44, 1.68, 0.60, 0.0004, 0.0], abs=0.01)


def test_sofnet_loss_official_switches_train_the_gates() -> None:
    torch.manual_seed(4)
    model = tiny_model("sofnet", segments=4, dtype=torch.float32).train()
    out = model(clips(2, 4, 64, 4, dtype=torch.float32))
    costs = model.cost_table(64, 64)
    y = torch.tensor([1, 3])
    terms = sofnet_loss(out, y, costs, alpha=0.95, beta=0.05, gate_target="sample", eff_weights="official")
    torch.testing.assert_close(terms["eff"], official_efficiency_loss(out.gate_sample, costs).detach())
    torch.testing.assert_close(terms["gate"], gate_guidance_loss(out, y, "sample").detach())
    terms["loss"].backward()
    assert all(gate.head.weight.grad.abs().sum() > 0 for gate in model.gates)
    with pytest.raises(ValueError, match="eff_weights"):
        sofnet_loss(out, y, costs, alpha=0.9, beta=None, eff_weights="thop")


def _official_exit(frame_logits: torch.Tensor, passed: torch.Tensor, rho: float, t_min: int, mode: str) -> list:
    """``use_early_stop_inf`` (``official``) and our ``reached`` counting, loop for loop, in float64."""
    steps = []
    for b in range(frame_logits.shape[0]):
        max_i, acc, cnt = frame_logits.shape[1], 0, 0.0
        for t in range(frame_logits.shape[1]):
            acc = acc + frame_logits[b, t].detach().double() * float(passed[b, t])
            if passed[b, t]:
                cnt += 1
                p = float(F.softmax(acc / cnt, dim=-1).max())
                if (t > t_min - 1 and p > rho) if mode == "official" else (cnt >= t_min and p >= rho):
                    max_i = t + 1
                    break
        steps.append(max_i)
    return steps


@pytest.mark.parametrize("mode", ["official", "reached"])
def test_bf16_early_exit_is_decided_in_float32(mode: str) -> None:
    # gates calibrated in float32, then the network cast: calibrating in bf16 took 6 forwards of ~2.5 s each on a CPU
    # without bf16 units; the decisions below are the bf16 network's own either way. At this fc_scale both modes fail
    # when the exit is decided in bf16 (checked by making sofnet.models.output.first_exit keep the logits' dtype).
    x = clips(4, 8, 64, 21, dtype=torch.float32)
    model = gated("sofnet", x, seed=21, survival=(0.95, 0.9, 0.85, 0.8, 0.75), fc_scale=0.3).to(torch.bfloat16)
    x = x.to(torch.bfloat16)
    assert model.fc.weight.dtype == torch.bfloat16
    cache = ETCache.from_outputs([model.infer(x)], model.cost_table(64, 64).by_decision())
    for run in (model.infer(x, rho=0.999, t_min=2, mode=mode), model(x, rho=0.999, t_min=2, mode=mode)):
        expect = _official_exit(run.frame_logits, run.decisions == 5, 0.999, 2, mode)
        assert run.exit_step.tolist() == expect
        assert (run.exit_step < 8).any()  # in bf16, 0.999 rounds to 1.0: the official test never fired
        rep = replay(cache, 0.999, 2, mode)
        assert torch.equal(rep.exit_step, run.exit_step) and torch.equal(rep.decisions, run.decisions)


def test_global_batch_is_split_over_the_workers_and_lr_scaling_is_opt_in() -> None:
    cfg = load_config(REPO / "jobs" / "configs" / "anet_sofnet.yaml")
    assert per_worker_batch(cfg.data, 8) == 3 and per_worker_batch(cfg.data, 1) == 24
    ds = deepspeed_config(cfg, stage_optim=cfg.train.stage1.optim, world_size=8, precision="fp32")
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (3, 24)
    with pytest.raises(ConfigError, match="global_batch_size=24 is not a positive multiple of the 5 workers"):
        per_worker_batch(cfg.data, 5)
    with pytest.raises(ConfigError, match="anet_sofnet.yaml.*global_batch_size=24.*5 workers"):
        load_config(REPO / "jobs" / "configs" / "anet_sofnet.yaml", ["scaling.num_workers=5"])
    per = load_config(REPO / "jobs" / "configs" / "anet_sofnet.yaml", ["data.global_batch_size=0",
                                                                        "data.batch_size=6"])
    assert per_worker_batch(per.data, 4) == 6  # 0: batch_size per worker, as before
    optim = cfg.train.stage2.optim
    assert effective_lr(optim, 192) == 0.001 and lr_at(optim, 30, global_batch=192) == pytest.approx(1e-4)
    scaled = load_config(REPO / "jobs" / "configs" / "anet_sofnet.yaml",
                         ["train.stage2.optim.base_batch_size=24", "data.global_batch_size=48"]).train.stage2.optim
    assert effective_lr(scaled, 48) == pytest.approx(0.002) and lr_at(scaled, 30, 48) == pytest.approx(2e-4)
    assert batch_params(cfg, 8) == {"world_size": 8, "per_worker_batch_size": 3, "global_batch_size": 24,
                                    "stage1.effective_lr": 0.001, "stage2.effective_lr": 0.001}


def _official_cal_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """``utils.cal_map``: softmax, per class sort, precision at the positives / max(positives, 1), mean."""
    probs = torch.softmax(torch.from_numpy(scores), dim=1)
    gt = torch.zeros(scores.shape[0], scores.shape[1] + 1)
    for i in range(labels.shape[1]):
        gt[torch.arange(scores.shape[0]), torch.from_numpy(labels[:, i])] = 1
    gt = gt[:, :scores.shape[1]]
    aps = []
    for k in range(scores.shape[1]):
        _, order = torch.sort(probs[:, k], 0, True)
        truth = gt[:, k][order]
        precision = truth.cumsum(0) / torch.arange(1, scores.shape[0] + 1).float()
        aps.append(float(precision[truth.bool()].sum()) / max(float(truth.sum()), 1))
    return float(np.mean(aps))


def test_map_names_say_which_map_the_official_code_computes() -> None:
    rng = np.random.default_rng(7)
    n, k = 40, 5
    scores = rng.normal(size=(n, k))
    first = np.arange(n) % k  # every class is some video's first label: no official renumbering
    second = np.where(rng.random(n) < 0.4, (first + 1 + rng.integers(0, k - 1, n)) % k, -1)
    labels = np.stack([np.minimum(first, np.where(second < 0, k, second)),
                       np.where(second < 0, -1, np.maximum(first, second))], axis=1)  # smallest id first
    multi_hot = np.zeros((n, k), dtype=int)
    for i, row in enumerate(labels):
        multi_hot[i, row[row >= 0]] = 1
    got = map_metrics(torch.softmax(torch.from_numpy(scores), 1).numpy(), multi_hot)
    assert got["mAP"] == pytest.approx(_official_cal_map(scores, labels))  # official mmAP
    assert got["mAP_first_label"] == pytest.approx(_official_cal_map(scores, labels[:, :1]))  # official mAP
    assert got["mAP"] != pytest.approx(got["mAP_first_label"])
