"""sofnet.train building blocks: lr groups, the generated DeepSpeed config, stage models, tracking URIs, configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sofnet.config import load_config
from sofnet.models import build_model
from sofnet.train.deepspeed_config import (build_optimizer, deepspeed_config, lr_at, param_groups, resolve_precision,
                                           set_lr)
from sofnet.train.tracking import TrackingError, check_tracking, resolve_tracking_uri
from sofnet.train.worker import enabled_stages, stage_model_config, validates

REPO = Path(__file__).resolve().parents[1]
# Training-job configs (jobs/configs/study.yaml is a study's config, loaded and checked by tests/test_study.py).
CONFIGS = sorted(p for p in (REPO / "jobs" / "configs").glob("*.yaml") if not p.stem.startswith("study"))
PAPER = ("anet_", "sports1m_")


def _cfg(*over: str):
    return load_config(REPO / "jobs" / "configs" / "demo.yaml", ["model.input_size=32", "model.num_segments=2",
                                                                 "early_exit.t_min=2", "model.gate_hidden=8", *over])


def test_lr_groups_follow_the_official_code() -> None:
    model = build_model(_cfg("model.partial_bn=true").model).train()  # off by default (the published --npb)
    groups = {g["name"]: g for g in param_groups(model, lr=0.01, weight_decay=1e-4, linear_lr_mult=5.0)}
    assert groups["linear_weight"]["lr"] == pytest.approx(0.05) and groups["linear_weight"]["weight_decay"] == 1e-4
    assert groups["linear_bias"]["lr"] == pytest.approx(0.1) and groups["linear_bias"]["weight_decay"] == 0.0
    assert groups["gate_linear_bias"]["lr"] == pytest.approx(0.1)  # gate_lr_mult defaults to 1 (official)
    assert groups["bn"]["weight_decay"] == 0.0 and groups["base"]["lr"] == pytest.approx(0.01)
    assert model.fc.weight in groups["linear_weight"]["params"] and model.fc.bias in groups["linear_bias"]["params"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [p for g in groups.values() for p in g["params"]]
    assert len(grouped) == len(trainable) == len({id(p) for p in grouped})  # each trainable parameter once
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not bns[1].weight.requires_grad  # partial BN: frozen ones are left out
    doubled = {g["name"]: g["lr"] for g in param_groups(model, 0.01, 1e-4, 5.0, gate_lr_mult=10.0)}
    assert doubled["gate_linear_weight"] == pytest.approx(0.5) and doubled["linear_weight"] == pytest.approx(0.05)
    lstm_bias = {id(p) for g in model.gates for n, p in g.named_parameters() if "lstm" in n and "bias" in n}
    assert lstm_bias and {id(p) for p in groups["gate_lstm_bias"]["params"]} == lstm_bias  # official: own group
    assert groups["gate_lstm_bias"]["lr"] == pytest.approx(0.02) and groups["gate_lstm_bias"]["weight_decay"] == 0.0
    plain = {g["name"]: g for g in param_groups(model, 0.01, 1e-4, 5.0, lstm_bias_official=False)}
    assert "gate_lstm_bias" not in plain and lstm_bias <= {id(p) for p in plain["gate_base"]["params"]}
    assert plain["gate_base"]["weight_decay"] == 1e-4  # optim.lstm_bias_official=false: base lr, decayed


def test_step_schedule_and_set_lr() -> None:
    cfg = _cfg("train.stage2.optim.lr=0.002", "train.stage2.optim.lr_steps=[3,5]")
    optim = cfg.train.stage2.optim
    assert [lr_at(optim, e) for e in (0, 2, 3, 4, 5)] == pytest.approx([0.002, 0.002, 2e-4, 2e-4, 2e-5])
    opt = build_optimizer(build_model(cfg.model), optim)
    set_lr(opt, 1e-3)
    assert {g["name"]: g["lr"] for g in opt.param_groups}["linear_bias"] == pytest.approx(1e-2)


def test_deepspeed_config_is_generated_from_ours() -> None:
    cfg = _cfg("data.batch_size=6", "train.zero_stage=2", "train.stage1.optim.clip_grad=20")
    ds = deepspeed_config(cfg, stage_optim=cfg.train.stage1.optim, world_size=4, precision="fp32")
    assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["train_batch_size"] == 24
    assert ds["gradient_clipping"] == 20.0 and ds["zero_optimization"]["stage"] == 2
    assert ds["zero_allow_untested_optimizer"] and not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert deepspeed_config(cfg, stage_optim=cfg.train.stage1.optim, world_size=1, precision="bf16")["bf16"]["enabled"]
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config(_cfg("train.zero_stage=3"), stage_optim=cfg.train.stage1.optim, world_size=1,
                         precision="fp32")
    assert resolve_precision("auto", use_gpu=False) == "fp32"
    with pytest.raises(ValueError):
        resolve_precision("fp16", use_gpu=False)


def test_stage_models() -> None:
    cfg = _cfg("model.arch=sofnet_tsm", "model.shift=causal")
    assert stage_model_config(cfg, "stage1")["arch"] == "tsm" and stage_model_config(cfg, "stage1")["shift"] == "causal"
    assert stage_model_config(cfg, "stage2")["arch"] == "sofnet_tsm"
    # stage 1 of SoF-Net^TSM has exactly the trunk/classifier parameters of stage 2
    s1 = set(build_model(stage_model_config(cfg, "stage1")).state_dict())
    s2 = {k for k in build_model(stage_model_config(cfg, "stage2")).state_dict() if not k.startswith("gates.")}
    assert s1 == s2
    assert enabled_stages(_cfg("model.arch=tsn")) == ["stage1"]
    assert enabled_stages(_cfg()) == ["stage1", "stage2"]


def test_which_epochs_are_validated_and_may_be_kept() -> None:
    """val_every=1 (the official: every epoch, the best kept), every N-th and the last, 0 the last only (the
    benchmark recipe keeps each stage's last epoch); a negative value is refused."""
    from sofnet.config import ConfigError

    def epochs(n: int, every: int) -> list:
        return [e + 1 for e in range(n) if validates(e, n, every)]

    assert epochs(8, 1) == list(range(1, 9)) and epochs(10, 3) == [3, 6, 9, 10] and epochs(8, 0) == [8]
    assert epochs(6, 6) == [6] and epochs(10, 0) == [10]
    assert _cfg("train.val_every=0").train.val_every == 0
    with pytest.raises(ConfigError, match=r"train.val_every.*must be >= 0 \(0 = only each stage's last epoch\)"):
        _cfg("train.val_every=-1")


def test_tracking_uri_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("", cwd=str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///x.db", cwd=str(tmp_path)) == f"sqlite:///{tmp_path}/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert resolve_tracking_uri("") == "http://example:5000"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    exp = check_tracking(f"sqlite:///{tmp_path}/m.db", "e")
    assert check_tracking(f"sqlite:///{tmp_path}/m.db", "e") == exp
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(TrackingError, match="is not usable"):
        check_tracking(f"sqlite:///{tmp_path}/file/m.db", "e")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_job_config_loads_and_says_what_it_reproduces(path: Path) -> None:
    cfg = load_config(path)
    paper = path.stem.startswith(PAPER)
    assert path.read_text().startswith("#") and ("Reproduces" in path.read_text() or not paper)
    assert cfg.name == path.stem
    if paper and cfg.model.arch == "arnet":  # the authors' ActivityNet run (facts sheet, section 5)
        m, t = cfg.model, cfg.train
        assert (m.num_segments, m.input_size, list(m.arnet_backbones), list(m.arnet_sizes), m.arnet_policy_size) == (
            16, 224, ["resnet50", "resnet34", "resnet18"], [224, 168, 112], 84)
        assert (list(m.arnet_skips), m.arnet_hidden, m.tau0, m.tau_decay, m.dropout, m.pretrained) == (
            [1, 2, 4], 512, 5.0, 0.045, 0.5, "imagenet")
        assert (cfg.data.global_batch_size, cfg.loss.alpha, cfg.loss.uniform_weight) == (48, 0.95, 3.0)
        assert [(t[s].epochs, t[s].optim.lr, list(t[s].optim.lr_steps)) for s in ("stage1", "stage2", "stage3")] == [
            (10, 0.02, []), (50, 0.001, []), (50, 0.0005, [])]
        assert all(t[s].optim.clip_grad == 20.0 and t[s].optim.linear_lr_mult == 5.0 for s in ("stage1", "stage2"))
        assert not cfg.early_exit.enabled and not m.partial_bn
    elif paper:
        m, s1, s2 = cfg.model, cfg.train.stage1, cfg.train.stage2
        assert (m.num_segments, m.backbone, cfg.data.batch_size) == (16, "resnet50", 24)
        assert (s1.epochs, s1.optim.lr, s1.optim.clip_grad, s1.optim.weight_decay) == (15, 0.001, 20.0, 1e-4)
        assert s1.optim.momentum == 0.9 and s1.optim.linear_lr_mult == 5.0
        assert s2.enabled == m.arch.startswith("sofnet")
        if s2.enabled:
            assert (s2.epochs, s2.optim.lr, list(s2.optim.lr_steps)) == (60, 0.001, [30])
            assert (cfg.loss.alpha, cfg.loss.beta, cfg.early_exit.rho, cfg.early_exit.t_min) == (0.95, 0.05, 0.999, 4)


def test_gates_get_accuracy_gradient_when_every_frame_stops() -> None:
    """The fallback (no frame reached the classifier) must still tell the gates that passing would help."""
    torch.manual_seed(0)
    model = build_model(_cfg().model).train()
    with torch.no_grad():
        for k, gate in enumerate(model.gates):  # the first gate stops every frame, the others would forward
            gate.head.bias.copy_(torch.tensor([20.0, -20.0] if k == 0 else [-20.0, 20.0]))
    out = model(torch.randn(2, 2, 3, 32, 32))
    assert bool(out.fallback.all())
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    assert model.gates[0].head.weight.grad.abs().sum() > 0


def test_stage2_initializes_from_a_checkpoint_directory(tmp_path: Path) -> None:
    from sofnet import checkpoint
    from sofnet.models import load_backbone_state

    cfg = _cfg()
    torch.manual_seed(3)
    stage1 = build_model(stage_model_config(cfg, "stage1"))
    checkpoint.write_model(tmp_path / "checkpoint-stage1-epoch000", stage1)
    checkpoint.seal(tmp_path / "checkpoint-stage1-epoch000")
    stage2 = build_model(stage_model_config(cfg, "stage2"))
    load_backbone_state(stage2, checkpoint.load_state(str(tmp_path / "checkpoint-stage1-epoch000")), "test")
    assert torch.equal(stage2.fc.weight, stage1.fc.weight)
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint"):
        checkpoint.load_state(str(tmp_path / "missing"))


def test_a_killed_workers_staging_directory_is_removed_by_the_next(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    """A worker SIGKILLed while saving leaves its staging directory (a whole checkpoint); the next checkpoint staged
    on that host removes it, and leaves alone those of processes still running (their save is under way)."""
    import subprocess
    import sys
    import tempfile

    from sofnet import checkpoint

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process now
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead.pid, live.pid):
            (tmp_path / f"{checkpoint.STAGING}{pid}-abc" / "ds").mkdir(parents=True)
            (tmp_path / f"{checkpoint.STAGING}{pid}-abc" / "ds" / "state.pt").write_bytes(b"x" * 1000)
        (tmp_path / "other-dir").mkdir()
        with checkpoint.staging_dir() as stage:
            assert stage.is_dir() and stage.name.startswith(f"{checkpoint.STAGING}{os.getpid()}-")
            left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted(["other-dir", f"{checkpoint.STAGING}{live.pid}-abc", stage.name])
        assert not stage.exists()
    finally:
        live.kill()
        live.wait()
