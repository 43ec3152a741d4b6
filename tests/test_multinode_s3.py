"""Run directories, shards, MLflow's artifacts and a training job on object stores (no cluster): a real S3 API
(``moto_server``) and a real GCS JSON API (``gcp-storage-emulator``) on loopback, the fixtures ``s3``, ``gcs`` and
``bucket`` of ``conftest.py``; the tests taking ``bucket`` run on both (data prep: ``test_data_prep_buckets.py``).

``sofnet.checkpoint.local_copy`` downloads the one checkpoint an ``s3://`` / ``gs://`` URI names to a temp dir (removed
after use), and the seals and the weights-only load run on that local copy, as they do on the copy Ray's
``Checkpoint.as_directory`` makes. The endpoint and credentials are the standard variables (what a real user sets;
pyarrow and boto3 read them):
the AWS ones for S3, ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` and ``gs://anonymous@bucket`` for the GCS emulator::

    DS_ACCELERATOR=cpu .venv/bin/pytest tests/test_multinode_s3.py -q -p no:cacheprovider
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import tiny_model
from s3_helpers import environ, mlflow_server, upload_tree

REPO = Path(__file__).resolve().parents[1]
EE = {"enabled": True, "rho": 0.99, "t_min": 2, "mode": "reached"}


def _run_dir(tmp: Path) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """A run directory with best/stage1, best/stage2 and two epoch checkpoints (distinct weights each)."""
    from sofnet import best, checkpoint

    run = tmp / "run"
    s1 = tiny_model("sofnet", classes=3, segments=4, size=64, dtype=torch.float32, init_seed=1)
    s2 = tiny_model("sofnet", classes=3, segments=4, size=64, dtype=torch.float32, init_seed=2)
    best.write(run, "stage1", s1, EE, {"stage": "stage1", "epoch": 0})
    best.write(run, "stage2", s2, EE, {"stage": "stage2", "epoch": 0})
    for name, model, meta in (("checkpoint-a", s2, {"stage": "stage2", "epoch": 0}),
                              ("checkpoint-b", s1, {"stage": "stage1", "epoch": 3})):
        checkpoint.write_model(run / name, model, EE)
        checkpoint.write_meta(run / name, meta)
        checkpoint.seal(run / name)
    return run, s1, s2


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoints_resolve_and_load_from_a_bucket(bucket: str, tmp_path: Path) -> None:
    from sofnet import checkpoint

    run, s1, s2 = _run_dir(tmp_path)
    upload_tree(run, f"{bucket}/demo")
    best, spec = checkpoint.load_network(f"{bucket}/demo")
    assert _same(best, s2) and spec["path"] != str(run / "best" / "stage2")  # a downloaded copy, verified
    with checkpoint.local_copy(f"{bucket}/demo", which="last") as (last, name):
        assert name.startswith(f"{bucket}/demo/checkpoint-")  # the object named in messages, not the copy
        assert {k: checkpoint.read_meta(last)[k] for k in ("stage", "epoch")} == {"stage": "stage2", "epoch": 0}
        assert _same(checkpoint.build_network(checkpoint.read_spec(last), checkpoint.load_state(str(last))), s2)
        assert _same(checkpoint.build_network(checkpoint.read_spec(last),
                                              checkpoint.load_state(f"{bucket}/demo/best/stage1")), s1)
    assert not last.exists()  # the copy is gone with the block
    with pytest.raises(ValueError, match="local_copy"):  # resolve names local directories only: nothing to leak
        checkpoint.resolve(f"{bucket}/demo")


def test_tampered_or_missing_checkpoint_in_a_bucket_is_one_line(bucket: str, tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    from sofnet import checkpoint

    run, _, _ = _run_dir(tmp_path)
    upload_tree(run, f"{bucket}/tampered")
    fs, root = pafs.FileSystem.from_uri(f"{bucket}/tampered/best/stage2/weights.pt")
    with fs.open_output_stream(root) as f:  # a planted file: same name, other bytes
        f.write(b"not the sealed weights")
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"^{re.escape(bucket)}/tampered/best/stage2/weights\.pt: changed") as e:
        checkpoint.load_network(f"{bucket}/tampered")
    assert "\n" not in str(e.value)
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"^{re.escape(bucket)}/nothing: no such checkpoint or run directory$"):
        with checkpoint.local_copy(f"{bucket}/nothing"):
            pass


def test_mlflow_server_keeps_artifacts_in_a_bucket(bucket: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``infra/mlflow_server.sh --artifacts s3://...`` / ``gs://...``: a client with no access to the store logs an
    artifact through the server, the object lands in the bucket, and the client reads it back through the server."""
    from mlflow.tracking import MlflowClient

    from sofnet import storage

    gcs = bucket.startswith("gs://")  # the server's GCS client (google-cloud-storage) reads STORAGE_EMULATOR_HOST
    server_env = {"STORAGE_EMULATOR_HOST": os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"]} if gcs else {}
    artifacts = ("gs://runs/mlflow" if gcs else "s3://runs/mlflow")  # MLflow's URI: no pyarrow login part
    with mlflow_server("127.0.0.1", tmp_path, artifacts=artifacts, env=server_env) as uri:
        for key in ("CLOUD_STORAGE_EMULATOR_ENDPOINT",) if gcs else ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                                       "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(key)  # the client has no access to the store
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("bucket-artifacts")).info.run_id
        (tmp_path / "table.md").write_text("| method | mAP |\n")
        client.log_artifact(run, str(tmp_path / "table.md"))
        back = client.download_artifacts(run, "table.md", str(tmp_path / "back"))
        assert Path(back).read_text() == "| method | mAP |\n"
        monkeypatch.undo()
        files = storage.list_files(f"{bucket}/mlflow")
        assert any(f.endswith(f"{run}/artifacts/table.md") for f in files), files
        assert not (tmp_path / "srv" / "artifacts").exists()  # nothing on the server's disk
    repo = Path(__file__).resolve().parents[1]
    bad = subprocess.run([str(repo / "infra/mlflow_server.sh"), "--artifacts", "/mnt/shared"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.startswith("--artifacts /mnt/shared: give an s3://")
    # a server whose Python lacks the store's client: one line before it starts, not an error on the first upload
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "python").write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # -S: no site-packages
    (bare / "python").chmod(0o755)
    (bare / "mlflow").symlink_to(Path(sys.executable).parent / "mlflow")
    missing = subprocess.run([str(repo / "infra/mlflow_server.sh"), "--artifacts", artifacts], capture_output=True,
                             text=True, timeout=30, env={**os.environ, "MLFLOW_BIN": str(bare / "mlflow")})
    package = "google-cloud-storage" if gcs else "boto3"
    assert missing.returncode == 2 and missing.stderr.splitlines() == [
        f"--artifacts {artifacts}: the server's Python has no {package} (MLflow's client of that store): pip install "
        f"'.[cloud]' (or {package}) beside it"], missing.stderr


def _shards_in(bucket: str, tmp: Path, prefix: str) -> tuple[Path, str]:
    from sofnet.session import ensure_synthetic_shards

    local = ensure_synthetic_shards(tmp / "data", videos=16, classes=3)
    upload_tree(local, f"{bucket}/{prefix}")
    return local, f"{bucket}/{prefix}"


def _batches(loader) -> list:
    return [(list(b["id"]), b["frames"].clone(), b["labels"].clone()) for b in loader]


def test_shards_stream_from_a_bucket_exactly_as_from_disk(bucket: str, tmp_path: Path) -> None:
    """``data.train_shards`` / ``val_shards`` as an ``s3://`` / ``gs://`` prefix: the preflight, the class names and
    both loaders read the bucket (no local copy) and give what the same shards on disk give, batch for batch."""
    from sofnet.data import make_eval_loader, make_train_loader
    from sofnet.evaluation import class_names
    from sofnet.preflight import check_shards

    local, remote = _shards_in(bucket, tmp_path, "shards/tiny")
    for subset in ("training", "validation"):
        assert check_shards(remote, subset, key="k", num_classes=3) == check_shards(str(local), subset, key="k",
                                                                                     num_classes=3)
    assert class_names(remote, 3) == class_names(str(local), 3) != [f"class {k}" for k in range(3)]
    args = dict(num_segments=4, input_size=32, resize=40, batch_size=3, num_workers=0, num_classes=3)
    disk, bucket = _batches(make_eval_loader(local, **args)), _batches(make_eval_loader(remote, **args))
    assert len(disk) == len(bucket) > 0
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(disk, bucket))
    targs = dict(num_segments=4, input_size=32, batch_size=2, num_workers=0, num_classes=3, seed=5, shuffle_buffer=4)
    (ld, nd), (lr, nr) = make_train_loader(local, **targs), make_train_loader(remote, **targs)
    assert nd == nr and [b[0] for b in _batches(ld)] == [b[0] for b in _batches(lr)]


def test_bad_shards_in_a_bucket_are_one_line(bucket: str, tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    from sofnet.preflight import PreflightError, check_shards

    _, remote = _shards_in(bucket, tmp_path, "shards/extra")
    nothing = re.escape(f"{bucket}/nothing")
    with pytest.raises(PreflightError, match=rf"^k={nothing}: {nothing}/manifest.json does not exist$"):
        check_shards(f"{bucket}/nothing", "validation", key="k")
    fs, root = pafs.FileSystem.from_uri(remote)
    with fs.open_output_stream(f"{root}/validation-000099.tar") as f:  # a stray shard of another run
        f.write(b"")
    with pytest.raises(PreflightError, match=r"manifest.json lists \d+ validation shards but \d+ are there "
                                             r"\(validation-000099.tar not listed\)"):
        check_shards(remote, "validation", key="k")


def test_unwritable_bucket_is_one_line_before_ray(s3: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run whose ``train.output_dir`` is a bucket that does not exist (or an endpoint that does not answer) is one
    line and exit 2 from the preflight, before Ray starts; a writable one leaves no probe object behind."""
    from sofnet import storage
    from sofnet.preflight import PreflightError, check_output_dir
    from sofnet.session import ensure_synthetic_shards
    from sofnet.train.cli import main

    check_output_dir("s3://runs/ok/runs")
    assert storage.list_names("s3://runs/ok/runs") == []
    shards = ensure_synthetic_shards(tmp_path / "data", videos=12, classes=3)
    capsys.readouterr()  # only the command's own output below (an earlier in-process test may leave log handlers)
    code = main("activitynet", ["--config", "jobs/configs/demo.yaml", "--smoke-test", f"data.train_shards={shards}",
                                f"data.val_shards={shards}", "model.num_classes=3",
                                "train.output_dir=s3://nobucket/runs",
                                f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: train.output_dir=s3://nobucket/runs: cannot write there ("), err
    import ray

    assert not ray.is_initialized()
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with environ({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"}):
            with pytest.raises(storage.StorageError, match=r"^k=s3://runs/x: no answer within 2 s \(endpoint "
                                                           r"AWS_ENDPOINT_URL=http://127\.0\.0\.1:\d+\)$"):
                storage.check_writable("s3://runs/x", "k", timeout_s=2)
        # gs:// names its own client's endpoint variable, not S3's (pyarrow's GCS client reads it)
        with environ({"CLOUD_STORAGE_EMULATOR_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}"}):
            with pytest.raises(storage.StorageError, match=r"^k=gs://runs/x: no answer within 2 s \(endpoint "
                                                           r"CLOUD_STORAGE_EMULATOR_ENDPOINT=http://127\.0\.0\.1:"
                                                           r"\d+\); an emulator's URIs take no login: "
                                                           r"gs://anonymous@runs/x$"):
                storage.check_writable("gs://runs/x", "k", timeout_s=2)
            # ...and a command that met such an endpoint ends with its error: nothing of the check outlives it (a
            # thread left waiting once kept the process alive ~10 min after the error, the suite's too)
            for scheme, variable in (("gs", "CLOUD_STORAGE_EMULATOR_ENDPOINT"), ("s3", "AWS_ENDPOINT_URL")):
                with environ({variable: f"http://127.0.0.1:{silent.getsockname()[1]}"}):
                    start = time.monotonic()
                    done = subprocess.run([sys.executable, "-c", "import sys; from sofnet import storage\n"
                                           f"try: storage.check_writable('{scheme}://runs/x', 'k', timeout_s=2)\n"
                                           "except storage.StorageError as e: sys.exit(str(e))"],
                                          capture_output=True, text=True, timeout=60)
                    took = time.monotonic() - start
                assert done.returncode == 1 and "no answer within 2 s" in done.stderr, done.stderr[-2000:]
                assert took < 20, f"{scheme}: the command ended {took:.0f} s after a 2 s check"
    with pytest.raises(PreflightError):
        check_output_dir("s3://nobucket/runs")


def test_a_tree_written_object_by_object_lists_and_downloads_whole(bucket: str, tmp_path: Path) -> None:
    """``upload_dir`` writes objects by name, which on GCS makes no directory markers: the sub-prefixes are still
    listed and ``download_dir`` still brings the whole tree back (pyarrow's own listing and copy saw no folders
    there, and the copy failed on the first nested file)."""
    from sofnet import storage

    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    files = {"d.txt": b"d", "a/c.txt": b"c", "a/b/e.bin": bytes(range(256)) * 4, "SEAL.json": b"{}"}
    for rel, data in files.items():
        (tree / rel).write_bytes(data)
    storage.upload_dir(tree, f"{bucket}/tree", last="SEAL.json")
    assert storage.list_names(f"{bucket}/tree", directories=True) == ["a"]
    assert storage.list_names(f"{bucket}/tree/a", directories=True) == ["b"]
    assert storage.list_names(f"{bucket}/tree") == ["SEAL.json", "d.txt"]
    back = storage.download_dir(f"{bucket}/tree", tmp_path / "back")
    assert {p.relative_to(back).as_posix(): p.read_bytes() for p in back.rglob("*") if p.is_file()} == files


def test_gcs_bucket_missing_or_addressed_without_login_is_one_line(gcs: str) -> None:
    """Against the GCS emulator: a bucket that does not exist is one line from the preflight, and a URI without
    ``anonymous@`` (pyarrow's client then looks for Google credentials first, for minutes off the cloud) is a bounded
    one-line error that says what to write instead."""
    from sofnet import storage
    from sofnet.preflight import PreflightError, check_output_dir

    check_output_dir("gs://anonymous@runs/ok/runs")
    assert storage.list_names("gs://anonymous@runs/ok/runs") == []  # the probe object is gone
    with pytest.raises(PreflightError, match=r"^train.output_dir=gs://anonymous@nobucket/runs: cannot write there \("):
        check_output_dir("gs://anonymous@nobucket/runs")
    with pytest.raises(storage.StorageError, match=r"^k=gs://runs/x: no answer within 2 s \(endpoint "
                                                   rf"CLOUD_STORAGE_EMULATOR_ENDPOINT={re.escape(gcs)}\); "
                                                   r"an emulator's URIs take no login: gs://anonymous@runs/x$"):
        storage.check_writable("gs://runs/x", "k", timeout_s=2)


@pytest.mark.slow
def test_a_training_job_keeps_its_run_in_gcs(gcs: str, tmp_path: Path) -> None:
    """``train.output_dir=gs://...``, the user's command on local Ray: Ray Train's storage (each epoch's checkpoint) and
    ``best/<stage>`` are in the bucket and load from it, nothing of the run is on this disk; the same command again
    resumes from the bucket's newest checkpoint (Ray Train downloads it) and trains no epoch again."""
    from sofnet import checkpoint, storage
    from sofnet.session import ensure_synthetic_shards

    shards = ensure_synthetic_shards(tmp_path / "data", videos=12, classes=3)
    out = "gs://anonymous@runs/e2e"
    command = [sys.executable, "jobs/train_anet.py", "--config", "jobs/configs/demo.yaml", "--smoke-test",
               f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3",
               f"train.output_dir={out}", "name=gcs", "scaling.num_workers=1",
               f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=480)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    run = f"{out}/gcs"
    names = storage.list_names(run, directories=True)
    assert "best" in names and any(n.startswith("checkpoint-stage2-epoch") for n in names), names
    model, spec = checkpoint.load_network(run)
    assert spec["path"] == f"{run}/best/stage2" and spec["meta"]["stage"] == "stage2"
    with checkpoint.local_copy(run, which="last") as (last, _):
        assert checkpoint.read_meta(last)["stage"] == "stage2"
    assert not (REPO / "gs:").exists() and not list(tmp_path.glob("**/checkpoint-*"))
    trained = re.findall(r"stage\d epoch \d+/\d+ done", first.stdout + first.stderr)
    assert trained, (first.stdout + first.stderr)[-3000:]
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=480)
    log = again.stdout + again.stderr
    assert again.returncode == 0 and "resuming from gs://" in log, log[-3000:]
    assert not re.findall(r"stage\d epoch \d+/\d+ done", log), log[-3000:]
