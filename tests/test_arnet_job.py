"""AR-Net as a job of the platform: its three phases as stages (warm-up, joint, fine-tuning with the policy frozen),
real DeepSpeed, real shards, real MLflow, every stage scored by the one evaluator (``sofnet.evaluation``).

Tiny sizes (two ResNet-18 at 64/32 px, policy at 32 px, 4 frames) keep the whole job to about a minute.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from sofnet import checkpoint
from sofnet.config import ConfigError, load_config
from sofnet.train.cli import SMOKE, ensure_synthetic_shards
from sofnet.train.context import LocalContext
from sofnet.train.report import evaluate_run
from sofnet.train.worker import plan, run_dir, run_job

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.arch=arnet", "model.arnet_backbones=[resnet18,resnet18]", "model.arnet_sizes=[64,32]",
        "model.arnet_policy_size=32", "model.arnet_hidden=16", "model.arnet_skips=[1,2]", "early_exit.enabled=false",
        "loss.alpha=0.5", "train.stage3.epochs=1", "model.dropout=0.0"]


def _cfg(shards: Path, out: Path, db: Path, *extra: str):
    return load_config(REPO / "jobs/configs/demo.yaml", SMOKE + TINY + [
        f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3", "scaling.num_workers=1",
        f"train.output_dir={out}", "train.zero_stage=0", f"mlflow.tracking_uri=sqlite:///{db}",
        "mlflow.registered_model=arnet-test", *extra])


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("arnet")
    shards = ensure_synthetic_shards(root / "data")
    db = root / "mlflow.db"
    cfg = _cfg(shards, root / "runs", db)
    run_job(cfg, LocalContext(run_dir(cfg)), tracking_uri=f"sqlite:///{db}")
    return cfg, db


def test_the_plan_is_the_authors_three_phases(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tmp_path, tmp_path / "m.db")
    stages = plan(cfg)
    assert [(s.name, s.model["arch"], s.model["arnet_phase"]) for s in stages] == [
        ("stage1", "arnet", "warmup"), ("stage2", "arnet", "joint"), ("stage3", "arnet", "finetune")]
    sofnet = load_config(REPO / "jobs/configs/demo.yaml", SMOKE)
    assert [s.name for s in plan(sofnet)] == ["stage1", "stage2"]  # stage 3 is AR-Net's only


@pytest.mark.parametrize("override, message", [
    (["early_exit.enabled=true"], "early_exit.enabled AR-Net has no early exit"),
    (["model.arnet_sizes=[64]"], "model.arnet_sizes needs one resolution per entry"),
    (["model.arnet_sizes=[96,32]"], "model.arnet_sizes must be <= model.input_size (64)"),
    (["model.arnet_backbones=[resnet18,vgg16]"], "model.arnet_backbones='vgg16' is not one of"),
    (["model.arnet_phase=policy"], "model.arnet_phase='policy' is not one of"),
    (["loss.arnet_eff=normalized"], "loss.arnet_eff='normalized' is not one of"),
])
def test_bad_arnet_settings_are_one_line(tmp_path: Path, override: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _cfg(tmp_path, tmp_path, tmp_path / "m.db", *override)


def test_efficiency_term_official_raw_gflops_or_relative(tmp_path: Path) -> None:
    """``loss.arnet_eff: official`` charges the authors' raw GFLOPs per frame (their gflops_vec); ``relative`` the
    share of the largest backbone's cost, the same trade-off for an alpha at any model size."""
    from sofnet.models import build_model
    from sofnet.train.worker import _loss_fn

    for setting in ("official", "relative"):
        cfg = _cfg(tmp_path, tmp_path, tmp_path / "m.db", f"loss.arnet_eff={setting}")
        stage = plan(cfg)[1]
        model = build_model(stage.model)
        costs = model.frame_costs()[:2]
        fn = _loss_fn(cfg, stage, model)
        want = costs if setting == "official" else [c / max(costs) for c in costs]
        assert fn.keywords["backbone_gflops"] == pytest.approx(want) and costs[0] > costs[1] > 0
        assert (fn.keywords["accuracy_weight"], fn.keywords["efficiency_weight"]) == (0.5, 0.5)
    assert load_config(REPO / "jobs/configs/anet_arnet.yaml").loss.arnet_eff == "official"


def test_three_stages_trained_scored_and_registered(job) -> None:
    cfg, db = job
    best = run_dir(cfg) / checkpoint.BEST
    assert all((best / s / checkpoint.WEIGHTS).is_file() for s in ("stage1", "stage2", "stage3"))
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = {r.data.tags.get("stage"): r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("stage")}
    assert set(runs) == {"stage1", "stage2", "stage3"}
    m1, m2, m3 = (runs[s].data.metrics for s in ("stage1", "stage2", "stage3"))
    # stage 1 is the largest backbone alone on every frame: TSN, no policy
    assert m1["val/frame_usage"] == 1.0 and m1["val/action_share/resnet18_64"] == 1.0
    for m in (m2, m3):  # the policy decides: shares of the 5 actions cover every frame
        shares = [v for k, v in m.items() if k.startswith("val/action_share/")]
        assert len(shares) == 5 and sum(shares) == pytest.approx(1.0)
        assert "train/loss_eff" in m and "train/loss_uniform" in m and "train/loss_acc" in m
    assert "train/loss_ce0" in m1 and "train/loss_ce1" in m1
    assert {"val/et/mAP"}.isdisjoint(m2)  # no early exit for AR-Net
    version = client.get_model_version_by_alias("arnet-test", "best")
    assert version.run_id == runs["stage3"].info.run_id  # the final stage's best epoch is the registered model


def test_fine_tuning_leaves_the_policy_as_joint_training_left_it(job) -> None:
    cfg, _ = job
    best = run_dir(cfg) / checkpoint.BEST
    joint, tuned = checkpoint.load_state(str(best / "stage2")), checkpoint.load_state(str(best / "stage3"))
    policy = [k for k in tuned if k.startswith(("rnn.", "linear.", "lite_fc.")) or
              (k.startswith("policy.") and "running_" not in k and "num_batches" not in k)]
    assert policy and all(torch.equal(joint[k], tuned[k]) for k in policy)
    backbone = [k for k in tuned if k.startswith("backbones.") and k.endswith("weight")]
    assert any(not torch.equal(joint[k], tuned[k]) for k in backbone)  # the backbones did learn


def test_results_table_names_every_stage(job, tmp_path: Path) -> None:
    cfg, _ = job
    rows = evaluate_run(cfg, run_dir(cfg), tmp_path / "eval", device="cpu")
    assert [name for name, _ in rows] == ["TSN (AR-Net warm-up)", "AR-Net (joint)", "AR-Net"]
    runs = MlflowClient(f"sqlite:///{job[1]}")  # the evaluator's numbers are the training run's last logged ones
    assert rows[2][1]["metrics"]["val/gflops_per_video"] > 0 and runs is not None
    mlflow.set_tracking_uri(f"sqlite:///{job[1]}")
