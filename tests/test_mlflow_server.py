"""MLflow through a real `mlflow server` (infra/mlflow_server.sh): runs, registry aliases, the pyfunc model."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sofnet.config import load_config
from sofnet.models import build_model
from sofnet.session import free_port

REPO = Path(__file__).resolve().parents[1]
NAME = "sofnet-server-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """``infra/mlflow_server.sh`` on 127.0.0.1 (a free port), started once for the module; yields its URI."""
    from s3_helpers import mlflow_server

    with mlflow_server("127.0.0.1", tmp_path_factory.mktemp("mlflow_server")) as uri:
        yield uri


def _cfg(uri: str):
    return load_config(REPO / "jobs" / "configs" / "demo.yaml", [
        "name=server-test", f"mlflow.tracking_uri={uri}", "mlflow.experiment=server-test",
        f"mlflow.registered_model={NAME}", "model.num_classes=3", "model.num_segments=4", "model.input_size=32",
        "model.gate_hidden=16", "train.decision_maps_correct=1"])


def _model(cfg, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_model(cfg.model)
    with torch.no_grad():  # decisive gates and classifier, so that predictions differ between versions
        for gate in m.gates:
            gate.head.bias.copy_(torch.tensor([-1.0, 1.0]))
        m.fc.weight.normal_(0, 0.5)
    return m.eval()


@pytest.mark.slow
def test_runs_registry_alias_and_pyfunc_predict(server: str, tmp_path: Path) -> None:
    import mlflow

    from sofnet.train.tracking import RunTracker

    cfg = _cfg(server)
    tracker = RunTracker(cfg, server, tags={"git_commit": "abc", "ray_job_id": "test"})
    models = {}
    for seed, score in ((0, 0.5), (1, 0.7), (2, 0.6)):
        run_id = tracker.start("stage2", OmegaConf.to_container(cfg.model))
        tracker.log_metrics({"val/mAP": score, "val/gflops_per_video": 0.1}, step=0)
        models[tracker.log_model(_model(cfg, seed), register=True, score=score)] = seed
        tracker.end()
    client = mlflow.MlflowClient(tracking_uri=server)
    run = client.get_run(run_id)
    assert run.data.tags["stage"] == "stage2" and run.data.tags["git_commit"] == "abc"
    assert run.data.params["model.arch"] == "sofnet" and run.info.run_name == "server-test/stage2 sofnet resnet18 4x32"
    assert "config.yaml" in {a.path for a in client.list_artifacts(run_id)}
    best = client.get_model_version_by_alias(NAME, "best")
    assert models[best.version] == 1  # the version with the best val score, not the newest
    # A resumed attempt of the last run registers again: it replaces that run's version instead of adding one.
    tracker.start("stage2", OmegaConf.to_container(cfg.model), run_id=run_id)
    again = tracker.log_model(_model(cfg, 2), register=True, score=0.6)
    tracker.end()
    versions = {v.version: v.run_id for v in client.search_model_versions(f"name='{NAME}'")}
    assert len(versions) == 3 and versions[again] == run_id and list(versions.values()).count(run_id) == 1
    assert client.get_model_version_by_alias(NAME, "best").version == best.version

    mlflow.set_tracking_uri(server)
    (tmp_path / "loaded").mkdir()  # not MLflow's default: a temporary directory it never removes
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@best", dst_path=str(tmp_path / "loaded"))
    clip = torch.randn(2, 4, 3, 32, 32)
    probs = loaded.predict(clip.numpy())
    expected = _model(cfg, 1).infer(clip, rho=cfg.early_exit.rho, t_min=cfg.early_exit.t_min).logits.softmax(-1)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs, expected.numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(Exception, match="shape"):  # the signature says [-1, T, 3, H, W]: MLflow enforces it
        loaded.predict(clip[0].numpy())
    single = loaded.predict(clip[:1].numpy())  # one clip
    np.testing.assert_allclose(single[0], probs[0], rtol=1e-4, atol=1e-6)
    # no pickled Python object in the model: code + model.json + a weights-only state dict
    files = {Path(a).name for a in _walk(best.source, tmp_path / "walk")}
    assert "python_model.pkl" not in files and {"weights.pt", "model.json"} <= files


def _walk(uri: str, into: Path) -> list[str]:
    import mlflow

    into.mkdir()
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into))
    return [str(p) for p in Path(local).rglob("*") if p.is_file()]


@pytest.mark.slow
def test_unreachable_server_is_a_clear_error_before_training(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    done = subprocess.run([sys.executable, "jobs/train_anet.py", "--config", "jobs/configs/demo.yaml",
                           f"mlflow.tracking_uri=http://127.0.0.1:{port}", f"train.output_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: MLflow tracking store http://127.0.0.1:{port} is not usable" in done.stderr
    assert "Started a local Ray instance" not in done.stderr + done.stdout  # nothing started
    assert not any(tmp_path.iterdir())
    assert time.monotonic() - start < 90


def _rest(uri: str, path: str, body: dict | None = None) -> dict:
    """One call of MLflow's REST API, as the UI makes it (GET with a query, or POST with JSON)."""
    import json

    if body is None:
        req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}")
    else:
        req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_what_the_ui_reads_over_rest(server: str, tmp_path: Path) -> None:
    """A whole two-stage job (in process) against the real server; then the REST calls behind the UI's pages: the
    experiment opens as model training, the stage runs are nested in the job's run, each has its datasets, source
    and per-epoch history (steps = 1-based epochs), and the registered model's alias points at the best version."""
    import urllib.parse

    from sofnet.session import SMOKE, ensure_synthetic_shards
    from sofnet.train.context import LocalContext
    from sofnet.train.worker import run_dir, run_job

    shards = ensure_synthetic_shards(tmp_path / "data")
    cfg = load_config(REPO / "jobs/configs/demo.yaml", SMOKE + [
        f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3", "scaling.num_workers=1",
        f"train.output_dir={tmp_path / 'runs'}", "train.stage2.epochs=2", "train.zero_stage=0", "name=rest-ui",
        f"mlflow.tracking_uri={server}", "mlflow.experiment=rest-ui", "mlflow.registered_model=sofnet-rest-ui"])
    run_job(cfg, LocalContext(run_dir(cfg)), tracking_uri=server,
            tags={"mlflow.source.name": "jobs/train_anet.py", "mlflow.source.git.commit": "0" * 40})
    exp = _rest(server, "experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": "rest-ui"}))
    exp = exp["experiment"]
    assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    runs = _rest(server, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    job = [rid for rid, t in tags.items() if "stage" not in t]
    stages = {t["stage"]: rid for rid, t in tags.items() if "stage" in t}
    assert len(job) == 1 and sorted(stages) == ["stage1", "stage2"]
    by_id = {r["info"]["run_id"]: r for r in runs}
    for stage, rid in stages.items():
        t = tags[rid]
        assert t["mlflow.parentRunId"] == job[0] and t["mlflow.source.name"] == "jobs/train_anet.py"
        assert t["mlflow.note.content"].startswith(stage)
        contexts = sorted({tag["value"] for d in by_id[rid]["inputs"]["dataset_inputs"] for tag in d["tags"]
                           if tag["key"] == "mlflow.data.context"})
        assert contexts == ["training", "validation"]
        history = _rest(server, "metrics/get-history?" + urllib.parse.urlencode({"run_id": rid, "metric_key": "epoch"}))
        epochs = cfg.train[stage].epochs
        assert sorted(m["step"] for m in history["metrics"]) == list(range(1, epochs + 1))
        assert sorted(m["value"] for m in history["metrics"]) == list(range(1, epochs + 1))
    alias = _rest(server, "registered-models/alias?" + urllib.parse.urlencode(
        {"name": "sofnet-rest-ui", "alias": "best"}))["model_version"]
    assert alias["run_id"] == stages["stage2"]
    assert {t["key"]: t["value"] for t in alias["tags"]}["best_metric"] == (cfg.train.best_metric or "val/mAP")
