"""A whole two-stage job in this process (no Ray): real DeepSpeed, real shards, real MLflow (sqlite).

Also the trust boundary of resume: a pickle payload planted in any file a resume or an initialisation reads never
runs: a changed file fails its seal, and a re-sealed one fails the weights-only load, each in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from sofnet import checkpoint
from sofnet.config import load_config
from sofnet.train.cli import SMOKE, ensure_synthetic_shards
from sofnet.train.context import LocalContext
from sofnet.train.worker import run_dir, run_job

REPO = Path(__file__).resolve().parents[1]


def _cfg(shards: Path, out: Path, db: Path, *extra: str):
    return load_config(REPO / "jobs/configs/demo.yaml", SMOKE + [
        f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3", "scaling.num_workers=1",
        f"train.output_dir={out}", "train.stage1.epochs=2", "train.stage2.epochs=2", "train.zero_stage=0",
        f"mlflow.tracking_uri=sqlite:///{db}", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    # system metrics every second (default 10 s: a stage of this tiny job may end before the first sample)
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    root = tmp_path_factory.mktemp("inproc")
    shards = ensure_synthetic_shards(root / "data")
    db = root / "mlflow.db"
    cfg = _cfg(shards, root / "runs", db)
    start = time.perf_counter()
    run_job(cfg, LocalContext(run_dir(cfg)), tracking_uri=f"sqlite:///{db}")
    return cfg, shards, db, time.perf_counter() - start


def test_deepspeed_started_without_building_its_shm_op(trained) -> None:
    """DeepSpeed's CPU backend would JIT-compile its shared-memory all-reduce (g++, 25-45 s at a job's start, a
    failed start without a compiler); training never uses it, so the job's backend was started without it."""
    import deepspeed.comm.comm as ds_comm
    import deepspeed.ops

    from sofnet.train.deepspeed_config import SHM_OP

    assert ds_comm.cdb is not None and ds_comm.cdb.shm_comm_op is None
    assert deepspeed.ops.__compatible_ops__[SHM_OP] is False


class _Payload:
    """What an attacker plants: unpickling it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"module": _Payload(marker)}, path)


def test_two_stage_job_runs_in_process_and_keeps_best_epochs(trained) -> None:
    cfg, _, db, _ = trained  # no time limit here: speed targets live in bench/, and this machine is shared
    rd = run_dir(cfg)
    want = cfg.train.best_metric or "val/mAP"  # demo.yaml picks by top-1 (see its comment)
    for stage in ("stage1", "stage2"):
        meta = checkpoint.verify(rd / "best" / stage)
        assert meta["stage"] == stage and meta["best"]["metric"] == want and 0 <= meta["best"]["epoch"] < 2
    last = checkpoint.epoch_checkpoints(rd)
    assert [p.name for p in last] == ["checkpoint-stage2-epoch000", "checkpoint-stage2-epoch001"]  # keep 2
    # jobs/evaluate.py's default for a run directory is the final stage's best epoch; --which last the newest
    assert checkpoint.resolve(rd) == rd / "best" / "stage2"
    assert checkpoint.resolve(rd, "last") == rd / "checkpoint-stage2-epoch001"
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on training runs
    runs = client.search_runs([exp.experiment_id])
    jobs = [r for r in runs if "stage" not in r.data.tags]
    stages = {r.data.tags["stage"]: r for r in runs if "stage" in r.data.tags}
    assert len(jobs) == 1 and sorted(stages) == ["stage1", "stage2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    job = jobs[0]
    assert all(r.data.tags["mlflow.parentRunId"] == job.info.run_id for r in stages.values())  # nested
    assert "sofnet" in job.data.tags["mlflow.note.content"] and job.data.params["world_size"] == "1"
    assert stages["stage1"].data.params["model.arch"] == "tsn"  # what stage 1 trains, not the job's sofnet
    assert stages["stage2"].data.params["model.arch"] == "sofnet"
    for run in (job, *stages.values()):  # what makes machines differ, on every run (sofnet.machine)
        assert run.data.tags["machine.aten_capability"] == torch.backends.cpu.get_cpu_capability()
        assert run.data.tags["machine.torch"] == torch.__version__ and run.data.tags["machine.onednn"]
    for run in stages.values():
        inputs = {{t.key: t.value for t in i.tags}["mlflow.data.context"]: i for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation"}
        assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)  # system metrics
    version = client.get_model_version_by_alias(cfg.mlflow.registered_model, "best")
    best = json.loads((rd / "best/stage2/meta.json").read_text())["best"]
    assert version.tags["best_metric"] == want and version.tags["best_epoch"] == str(best["epoch"] + 1)
    assert float(version.tags["val_score"]) == pytest.approx(best["value"])
    # the registered weights are the best epoch's
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    from sofnet.train.pyfunc import load_network

    served = load_network(f"models:/{cfg.mlflow.registered_model}@best").state_dict()
    kept = checkpoint.load_state(str(rd / "best" / "stage2"))
    assert all(torch.equal(served[k], kept[k]) for k in kept)


@pytest.mark.parametrize("target", ["ds/mp_rank_00_model_states.pt", "weights.pt"])
def test_planted_pickle_never_runs_on_resume(trained, tmp_path: Path, target: str) -> None:
    cfg, shards, db, _ = trained
    out = tmp_path / "runs"
    shutil.copytree(run_dir(cfg).parent, out)
    cfg2 = _cfg(shards, out, db)
    ckpt = checkpoint.epoch_checkpoints(run_dir(cfg2))[-1]
    marker = tmp_path / "pwned"
    _plant(ckpt / target, marker)
    with pytest.raises(checkpoint.CheckpointError, match="changed since it was written"):
        run_job(cfg2, LocalContext(run_dir(cfg2)), tracking_uri=f"sqlite:///{db}")
    checkpoint.seal(ckpt, 0)  # an attacker who can also rewrite the seal: the weights-only load still refuses
    if target == "weights.pt":
        with pytest.raises(checkpoint.CheckpointError, match="refused: holds objects other than tensors"):
            checkpoint.load_network(ckpt)
    else:
        with pytest.raises(checkpoint.CheckpointError, match="refused: holds objects other than tensors"):
            run_job(cfg2, LocalContext(run_dir(cfg2)), tracking_uri=f"sqlite:///{db}")
    assert not marker.exists()


def test_planted_pickle_in_best_never_runs_on_init(trained, tmp_path: Path) -> None:
    cfg, _, _, _ = trained
    best = tmp_path / "best"
    shutil.copytree(run_dir(cfg) / "best" / "stage1", best)
    marker = tmp_path / "pwned"
    _plant(best / "weights.pt", marker)
    checkpoint.seal(best, 0)
    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        checkpoint.load_state(str(best))  # what train.stage2.init_from reads
    assert not marker.exists()


def test_resume_continues_from_the_last_checkpoint(trained, tmp_path: Path) -> None:
    cfg, shards, db, _ = trained
    out = tmp_path / "runs"
    shutil.copytree(run_dir(cfg).parent, out)
    cfg3 = _cfg(shards, out, db, "train.stage2.epochs=3")
    ctx = LocalContext(run_dir(cfg3))
    run_job(cfg3, ctx, tracking_uri=f"sqlite:///{db}")
    assert [(r["stage"], r["epoch"]) for r in ctx.reports] == [(2, 2)]  # only the one new epoch of stage 2
    assert checkpoint.epoch_checkpoints(run_dir(cfg3))[-1].name == "checkpoint-stage2-epoch002"


def _copy_of_run(trained, tmp_path: Path) -> tuple:
    """(the trained job's config, the config of a copy of its run directory and MLflow store, the copy's store URI)."""
    cfg, shards, db, _ = trained
    shutil.copytree(run_dir(cfg).parent, tmp_path / "runs")
    shutil.copy(db, tmp_path / "mlflow.db")
    return cfg, _cfg(shards, tmp_path / "runs", tmp_path / "mlflow.db"), f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_an_epoch_trained_again_after_a_lost_attempt_is_logged_once(trained, tmp_path: Path) -> None:
    """An attempt lost after logging an epoch but before its checkpoint was registered: the resumed attempt trains
    that epoch again, and MLflow keeps one value per epoch (the first), the run tagged with the epoch."""
    cfg, cfg2, uri = _copy_of_run(trained, tmp_path)
    newest = checkpoint.epoch_checkpoints(run_dir(cfg2))[-1]
    assert newest.name == "checkpoint-stage2-epoch001"
    shutil.rmtree(newest)  # lost: its metrics are in MLflow, its checkpoint never registered
    ctx = LocalContext(run_dir(cfg2))
    run_job(cfg2, ctx, tracking_uri=uri)
    assert [(r["stage"], r["epoch"]) for r in ctx.reports] == [(2, 1)]  # epoch 2 of stage 2 trained again
    stage2 = checkpoint.read_meta(checkpoint.epoch_checkpoints(run_dir(cfg2))[-1])["runs"]["stage2"]
    client = MlflowClient(tracking_uri=uri)
    for key in ("val/mAP", "train/loss", "epoch"):
        steps = [m.step for m in client.get_metric_history(stage2, key)]
        assert sorted(steps) == sorted(set(steps)) and {1, 2} <= set(steps), (key, steps)
    assert client.get_run(stage2).data.tags["epochs_logged_by_lost_attempt"] == "2"


def test_a_best_cut_by_a_lost_attempt_is_restored_and_its_score_stands(trained, tmp_path: Path) -> None:
    """The attempt lost in stage 2's last epoch had moved the old ``best/stage2`` aside and not yet renamed its new
    one in (cut between ``sofnet.best.write``'s two renames), and its checkpoint was never registered. The resumed
    job puts the newer copy back, keeps its score as the one to beat (a record no retrained epoch beats here), trains
    the epoch again and registers that copy, its tags naming its epoch and score. Before the repair, the end of the
    stage failed on the missing best."""
    from sofnet import best

    cfg, cfg2, uri = _copy_of_run(trained, tmp_path)
    rd = run_dir(cfg2)
    lost = checkpoint.epoch_checkpoints(rd)[-1]
    network, spec = checkpoint.load_network(lost)  # the lost attempt's last epoch
    record = {"value": 2.0, "epoch": 1, "metric": cfg.train.best_metric or "val/mAP"}
    copy = best.write(tmp_path / "lost", "stage2", network, spec["early_exit"],
                      {"stage": "stage2", "epoch": 1, "best": record, "runs": spec["meta"]["runs"]})
    shutil.rmtree(lost)
    (rd / "best" / "stage2").replace(rd / "best" / ".stage2.old4242")  # the swap's first rename done ...
    Path(copy).replace(rd / "best" / ".stage2.k3x9q1")  # ... its second not
    ctx = LocalContext(rd)
    run_job(cfg2, ctx, tracking_uri=uri)
    assert [(r["stage"], r["epoch"]) for r in ctx.reports] == [(2, 1)]
    assert sorted(p.name for p in (rd / "best").iterdir()) == ["stage1", "stage2"]  # no hidden copy left
    assert checkpoint.verify(rd / "best" / "stage2")["best"] == record
    kept = checkpoint.load_state(str(rd / "best" / "stage2"))
    assert all(torch.equal(v, kept[k]) for k, v in network.state_dict().items())
    version = MlflowClient(tracking_uri=uri).get_model_version_by_alias(cfg.mlflow.registered_model, "best")
    assert (version.tags["best_epoch"], float(version.tags["val_score"])) == ("2", 2.0)


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "no checkpoint here"),
    (lambda d: (d / "weights.pt").write_bytes(b"\x00random bytes"), "not a sealed checkpoint"),
])
def test_unusable_checkpoints_are_one_line(tmp_path: Path, make, message: str) -> None:
    d = tmp_path / "ckpt"
    d.mkdir()
    make(d)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load_network(d)


def test_truncated_and_foreign_checkpoints_are_refused(trained, tmp_path: Path) -> None:
    cfg, _, _, _ = trained
    best = tmp_path / "best"
    shutil.copytree(run_dir(cfg) / "best" / "stage2", best)
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.backbone='resnet34' \(checkpoint: 'resnet18'\)"):
        checkpoint.load_network(best, expect={"backbone": "resnet34"})
    data = (best / "weights.pt").read_bytes()
    (best / "weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="changed since it was written"):
        checkpoint.load_network(best)
    checkpoint.seal(best, 0)
    with pytest.raises(checkpoint.CheckpointError, match="not a readable torch file"):
        checkpoint.load_network(best)


def test_results_table_and_evaluate_log_to_mlflow(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every row of the table from the one evaluator on the run's best checkpoints; the evaluations are child runs
    of their stage's run, the table an artifact of the job's run; jobs/evaluate.py logs the same way."""
    import importlib.util

    cfg, shards, db, _ = trained
    jobs = {}
    for name in ("results_table", "evaluate"):
        spec = importlib.util.spec_from_file_location(name, REPO / "jobs" / f"{name}.py")
        jobs[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(jobs[name])
    common = [f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3", "model.num_segments=4",
              "model.input_size=64", "data.resize=73", "data.num_workers=0", "early_exit.t_min=2",
              f"train.output_dir={cfg.train.output_dir}", f"mlflow.tracking_uri=sqlite:///{db}"]
    assert jobs["results_table"].main(["--config", str(REPO / "jobs/configs/demo.yaml"), "--out",
                                       str(tmp_path / "table"), *common]) == 0
    printed = capsys.readouterr().out
    assert "| TSN | no |" in printed and "| SoF-Net | yes |" in printed and "shard digest" in printed
    stage1 = json.loads((tmp_path / "table/stage1/metrics.json").read_text())
    stage2 = json.loads((tmp_path / "table/stage2/metrics.json").read_text())
    assert stage1["metrics"]["val/videos"] == stage2["metrics"]["val/videos"]  # the same videos
    assert stage1["model"]["arch"] == "tsn" and stage2["model"]["arch"] == "sofnet"
    assert "val/stop_rate/background/block2" in stage2["metrics"] and "val/et/exit/fired" in stage2["metrics"]
    assert jobs["evaluate"].main(["--config", str(REPO / "jobs/configs/demo.yaml"), "--checkpoint", str(run_dir(cfg)),
                                  "--out", str(tmp_path / "eval"), *common]) == 0
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id])
    evals = [r for r in runs if r.data.tags.get("kind") == "evaluation"]
    assert len(evals) == 3  # two from the table, one from jobs/evaluate.py
    assert sorted(r.data.tags["evaluated_stage"] for r in evals) == \
        ["stage1", "stage2", "stage2"]
    assert all("val/mAP" in r.data.metrics for r in evals)
    assert all(r.data.tags["machine.aten_capability"] for r in evals)  # the evaluating machine, maybe not the trainer
    job = next(r for r in runs if "stage" not in r.data.tags and "kind" not in r.data.tags)
    assert "results_table.md" in {a.path for a in client.list_artifacts(job.info.run_id)}


def test_zero_optimizer_states_load_weights_only_and_refuse_a_planted_pickle(tmp_path: Path) -> None:
    """ZeRO 1/2 keep the optimizer in their own file, with three plain DeepSpeed types: resume reads it weights-only
    (allow-listing those types), and a pickle planted there (seal re-written) is refused without running."""
    from sofnet.models import build_model
    from sofnet.train.deepspeed_config import build_engine

    LocalContext(tmp_path / "run")  # the one-rank process group DeepSpeed needs
    cfg = load_config(REPO / "jobs/configs/demo.yaml", SMOKE + ["train.zero_stage=1", "scaling.num_workers=1"])
    model = build_model(cfg.model)
    engine = build_engine(model, cfg, cfg.train.stage2.optim, world_size=1, precision="fp32")
    x = torch.randn(2, cfg.model.num_segments, 3, cfg.model.input_size, cfg.model.input_size)
    engine.backward(engine(x).logits.sum())
    engine.step()
    ckpt = tmp_path / "ckpt"
    engine.save_checkpoint(str(ckpt), tag=checkpoint.DS_TAG)
    checkpoint.seal(ckpt, 0)
    optim = sorted((ckpt / checkpoint.DS_TAG).glob("*optim_states.pt"))
    assert optim, sorted(p.name for p in (ckpt / checkpoint.DS_TAG).iterdir())
    assert checkpoint.safe_load(optim[0])["optimizer_state_dict"]["partition_count"]  # real states, weights-only
    fresh = build_engine(build_model(cfg.model), cfg, cfg.train.stage2.optim, world_size=1, precision="fp32")
    checkpoint.restore_engine(fresh, ckpt)  # a real ZeRO-1 resume through the safe loader
    assert all(torch.equal(a, b) for a, b in zip(fresh.module.state_dict().values(), model.state_dict().values()))
    marker = tmp_path / "pwned"
    _plant(optim[0], marker)
    checkpoint.seal(ckpt, 0)
    with pytest.raises(checkpoint.CheckpointError, match="refused: holds objects other than tensors"):
        checkpoint.restore_engine(build_engine(build_model(cfg.model), cfg, cfg.train.stage2.optim, world_size=1,
                                               precision="fp32"), ckpt)
    assert not marker.exists()
