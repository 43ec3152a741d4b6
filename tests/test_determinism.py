"""Determinism, stated and tested: one machine, one seed, one thread count -> bitwise the same weights and metrics.

A tiny two-stage job (TSN stage 1, SoF-Net stage 2; real DeepSpeed, real shards, real MLflow) runs twice in this
process with one seed and once with another. Every tensor of both stages' last and best weights must be equal to
the bit, and every logged training/validation metric equal as a float; the other seed must differ (so the test can
fail). Other CPUs are another matter: see ``sofnet.machine`` and the README's "Results that hold".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from sofnet import checkpoint
from sofnet.config import load_config
from sofnet.session import SMOKE, ensure_synthetic_shards
from sofnet.train.context import LocalContext
from sofnet.train.worker import run_dir, run_job

REPO = Path(__file__).resolve().parents[1]
# Logged values that measure the machine, not the model: wall time, throughput, system metrics.
TIMING = ("system/", "time", "per_s", "samples/s", "seconds", "throughput")


def _train(root: Path, shards: Path, name: str, seed: int) -> tuple[dict, dict]:
    db = root / f"{name}.db"
    cfg = load_config(REPO / "jobs/configs/demo.yaml", SMOKE + [
        f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3", "scaling.num_workers=1",
        f"train.output_dir={root / 'runs'}", f"name={name}", f"train.seed={seed}", "train.stage1.epochs=2",
        "train.stage2.epochs=2", "train.zero_stage=1", "data.num_workers=1", f"mlflow.tracking_uri=sqlite:///{db}"])
    run_job(cfg, LocalContext(run_dir(cfg)), tracking_uri=f"sqlite:///{db}")
    rd = run_dir(cfg)
    weights = {}
    for ckpt in [rd / "best" / "stage1", rd / "best" / "stage2", *checkpoint.epoch_checkpoints(rd)]:
        weights[ckpt.name if ckpt.parent == rd else f"best/{ckpt.name}"] = checkpoint.load_state(str(ckpt))
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    metrics = {}
    for run in client.search_runs([exp.experiment_id]):
        stage = run.data.tags.get("stage", "job")
        for key in run.data.metrics:
            if not any(t in key for t in TIMING):
                metrics[(stage, key)] = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
    return weights, metrics


@pytest.mark.slow
def test_same_seed_same_bits_other_seed_other_bits(tmp_path: Path) -> None:
    shards = ensure_synthetic_shards(tmp_path / "data", videos=16, classes=3)
    first_w, first_m = _train(tmp_path, shards, "a", seed=7)
    second_w, second_m = _train(tmp_path, shards, "b", seed=7)
    other_w, _ = _train(tmp_path, shards, "c", seed=8)
    assert sorted(first_w) == sorted(second_w) and len(first_w) >= 4
    for name, state in first_w.items():
        for key, tensor in state.items():
            assert torch.equal(tensor, second_w[name][key]), f"{name}: {key} differs between two runs of one seed"
    assert first_m.keys() == second_m.keys() and any(k[1] == "val/mAP" for k in first_m)
    for key, history in first_m.items():
        assert history == second_m[key], f"{key}: {history} != {second_m[key]}"
    last = "checkpoint-stage2-epoch001"
    assert any(not torch.equal(t, other_w[last][k]) for k, t in first_w[last].items()), "another seed, same weights"
