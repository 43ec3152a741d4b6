"""Bad input at the training and evaluation entry points: one line naming the key or file, exit status 2, nothing
started (no Ray, no DeepSpeed, no MLflow run), nothing half-written. Data prep and sweeps have their own tables
(tests/test_bad_inputs_data_prep.py, tests/test_bad_inputs_tune.py).

Each case runs the real ``main([...])`` of the job in this process (as open_clip's tests do); every case is caught
before Ray would start, so a Ray session here would be a failure of the case itself (conftest checks that too).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch

from sofnet import checkpoint
from sofnet.config import model_config
from sofnet.models import build_model
from sofnet.train.cli import ensure_synthetic_shards
from sofnet.train.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "jobs/configs/demo.yaml")


def _job(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    shards = ensure_synthetic_shards(root / "data")
    torch.manual_seed(0)
    ckpt = root / "ckpt"
    model = build_model(model_config(arch="sofnet", backbone="resnet18", num_classes=3, num_segments=4, input_size=64,
                                     gate_hidden=16))
    checkpoint.write_model(ckpt, model, {"enabled": True, "rho": 0.99, "t_min": 2, "mode": "reached"})
    checkpoint.seal(ckpt)
    empty = root / "empty"
    empty.mkdir()
    random_ckpt = root / "random"
    random_ckpt.mkdir()
    (random_ckpt / "weights.pt").write_bytes(bytes(range(256)) * 4)
    truncated = root / "truncated"
    shutil.copytree(ckpt, truncated)
    data = (truncated / "weights.pt").read_bytes()
    (truncated / "weights.pt").write_bytes(data[: len(data) // 3])
    two_class = root / "two_class"
    shutil.copytree(shards, two_class)
    manifest = json.loads((two_class / "manifest.json").read_text())
    manifest["classes"] = manifest["classes"][:2]
    (two_class / "manifest.json").write_text(json.dumps(manifest))
    partial = root / "partial"  # a manifest listing fewer shards than are there: shards of another run mixed in
    shutil.copytree(shards, partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest["subsets"]["training"]["shards"] = manifest["subsets"]["training"]["shards"][:1]
    (partial / "manifest.json").write_text(json.dumps(manifest))
    no_shards = root / "no_shards"
    no_shards.mkdir()
    blocker = root / "a_file"
    blocker.write_text("not a directory")
    return {"shards": shards, "ckpt": ckpt, "empty": empty, "random": random_ckpt, "truncated": truncated,
            "two_class": two_class, "partial": partial, "no_shards": no_shards, "blocker": blocker, "root": root}


def _train(w: Dict[str, Path], *extra: str) -> List[str]:
    s = w["shards"]
    return ["--config", DEMO, "--smoke-test", f"data.train_shards={s}", f"data.val_shards={s}", "model.num_classes=3",
            f"train.output_dir={w['root'] / 'runs'}", f"mlflow.tracking_uri=sqlite:///{w['root'] / 'mlflow.db'}",
            *extra]


def _eval(w: Dict[str, Path], ckpt: str, *extra: str) -> List[str]:
    return ["--config", DEMO, "--checkpoint", ckpt, "--out", str(w["root"] / "eval_out"),
            f"data.val_shards={w['shards']}", "data.num_workers=0", *extra]


# (name, entry point, argv builder, words the one line must contain)
CASES: List[tuple] = [
    ("config file missing", "train", lambda w: ["--config", "nope.yaml"], ["nope.yaml", "not found"]),
    ("unknown key", "train", lambda w: _train(w, "model.bogus=1"), ["model.bogus"]),
    ("negative training workers", "train", lambda w: _train(w, "scaling.num_workers=-1"), ["scaling.num_workers"]),
    ("negative loader workers", "train", lambda w: _train(w, "data.num_workers=-1"), ["data.num_workers"]),
    ("t_min beyond the segments", "train", lambda w: _train(w, "early_exit.t_min=99"), ["early_exit.t_min", "4"]),
    ("alpha out of range", "train", lambda w: _train(w, "loss.alpha=2.0"), ["loss.alpha"]),
    ("rho out of range", "train", lambda w: _train(w, "early_exit.rho=1.5"), ["early_exit.rho"]),
    ("resize below the crop", "train", lambda w: _train(w, "data.resize=32"), ["data.resize"]),
    ("zero epochs", "train", lambda w: _train(w, "train.stage1.epochs=0"), ["epochs"]),
    ("a name that is a path", "train", lambda w: _train(w, "name=../../elsewhere"),
     ["name='../../elsewhere'", "letters, digits"]),
    ("shards missing", "train", lambda w: _train(w, f"data.train_shards={w['root'] / 'missing'}"),
     ["data.train_shards", "does not exist"]),
    ("shard dir without shards", "train", lambda w: _train(w, f"data.train_shards={w['no_shards']}"),
     ["data.train_shards", "no training"]),
    ("manifest of another class count", "train", lambda w: _train(w, f"data.val_shards={w['two_class']}"),
     ["manifest.json", "2 classes", "model.num_classes"]),
    ("manifest lists fewer shards than present", "train", lambda w: _train(w, f"data.train_shards={w['partial']}"),
     ["manifest.json", "not listed"]),
    ("output dir is a file", "train", lambda w: _train(w, f"train.output_dir={w['blocker']}"), ["train.output_dir"]),
    ("unreachable MLflow server", "train", lambda w: _train(w, "mlflow.tracking_uri=http://127.0.0.1:9"),
     ["http://127.0.0.1:9", "not usable"]),
    ("eval: checkpoint path missing", "evaluate", lambda w: _eval(w, str(w["root"] / "nothing")),
     ["nothing", "no such"]),
    ("eval: empty directory", "evaluate", lambda w: _eval(w, str(w["empty"])), ["empty", "no checkpoint"]),
    ("eval: random bytes as weights.pt", "evaluate", lambda w: _eval(w, str(w["random"])), ["random", "not a sealed"]),
    ("eval: truncated weights", "evaluate", lambda w: _eval(w, str(w["truncated"])), ["weights.pt", "changed"]),
    ("eval: a weights file instead of its directory", "evaluate", lambda w: _eval(w, str(w["ckpt"] / "weights.pt")),
     ["weights.pt", "a file"]),
    ("eval: model override conflicts with the checkpoint", "evaluate",
     lambda w: _eval(w, str(w["ckpt"]), "model.backbone=resnet34"), ["model.backbone='resnet34'", "resnet18"]),
    ("eval: rho out of range", "evaluate", lambda w: _eval(w, str(w["ckpt"]), "--rho", "1.5"), ["early_exit.rho"]),
    ("eval: t_min 0", "evaluate", lambda w: _eval(w, str(w["ckpt"]), "--t-min", "0"), ["early_exit.t_min"]),
    ("eval: t_min beyond the model's segments", "evaluate", lambda w: _eval(w, str(w["ckpt"]), "--t-min", "100"),
     ["early_exit.t_min", "num_segments=4"]),
    ("eval: shards of another class count", "evaluate",
     lambda w: _eval(w, str(w["ckpt"]), f"data.val_shards={w['two_class']}"), ["2 classes", "3"]),
    ("eval: shards missing", "evaluate", lambda w: _eval(w, str(w["ckpt"]), "--shards", str(w["root"] / "gone")),
     ["--shards", "does not exist"]),
    ("eval: --out is a file", "evaluate", lambda w: [*_eval(w, str(w["ckpt"]))[:4], "--out", str(w["blocker"]),
                                                     f"data.val_shards={w['shards']}"], ["--out", "not a directory"]),
    ("eval: registry unreachable", "evaluate",
     lambda w: ["--config", DEMO, "--model", "models:/sofnet-demo@best", "--out", str(w["root"] / "o"),
                "mlflow.tracking_uri=http://127.0.0.1:9"], ["models:/sofnet-demo@best", "127.0.0.1:9"]),
    ("eval: no such registered model", "evaluate",
     lambda w: ["--config", DEMO, "--model", "models:/no-such-model@best", "--out", str(w["root"] / "o"),
                f"mlflow.tracking_uri=sqlite:///{w['root'] / 'mlflow.db'}"], ["no-such-model"]),
]


@pytest.mark.parametrize("name, entry, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(world, capsys: pytest.CaptureFixture, name: str, entry: str,
                                           argv: Callable, words: List[str]) -> None:
    evaluate = _job("evaluate")
    runs = world["root"] / "runs"
    try:
        status = train_main("activitynet", argv(world)) if entry == "train" else evaluate.main(argv(world))
    except SystemExit as e:  # load_config_or_exit and argparse exit directly
        status = e.code
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.startswith("error:")]
    assert status == 2, f"{name}: exit {status}"
    assert len(err) == 1, f"{name}: {err}"
    for word in words:
        assert word in err[0], f"{name}: {word!r} not in {err[0]!r}"
    assert "Traceback" not in err[0]
    assert not runs.exists() or not any(runs.rglob("checkpoint-*")), f"{name}: a run started"
    assert not (world["root"] / "eval_out" / "metrics.json").exists(), f"{name}: evaluation wrote results"


def test_relative_shards_in_a_submitted_job_say_why(world, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`ray job submit --working-dir .` does not upload data/: the line says so and asks for an absolute path."""
    monkeypatch.chdir(tmp_path)  # the uploaded working directory, without data/
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "raysubmit_x"}}))
    status = train_main("activitynet", ["--config", DEMO, f"train.output_dir={tmp_path / 'runs'}",
                                        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(err) == 1
    assert "data.train_shards=data/demo/shards" in err[0] and "uploaded working directory" in err[0]
    assert "absolute path" in err[0]


def test_local_storage_refused_on_several_nodes_only() -> None:
    from sofnet.preflight import PreflightError, check_storage_for_nodes

    check_storage_for_nodes("runs", nodes=1, shared=False)  # the laptop default is never refused
    check_storage_for_nodes("s3://bucket/runs", nodes=4, shared=False)
    check_storage_for_nodes("/mnt/nfs/runs", nodes=4, shared=True)
    with pytest.raises(PreflightError, match=r"^train.output_dir=/data/runs: a local path, but the Ray cluster has 3 "
                                             r"nodes .* train.shared_storage=true$"):
        check_storage_for_nodes("/data/runs", nodes=3, shared=False)
