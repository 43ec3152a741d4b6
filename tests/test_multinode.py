"""Multi-node for real: a Ray head and three worker nodes, each a separate host (its own network namespace and IP
on a 198.51.100.0/24 bridge), and the training job's two ranks on two of them.

The module's cluster (``infra/local_cluster.py``, started once, brought down in the finalizer whatever happens):
head 198.51.100.10 (0 CPUs: job drivers), w1 .11 with 2 CPUs (two ranks can share it), w2 .12 and w3 .13 with 1.
Data prep runs on it too (its shard tasks spread over the workers). Jobs are submitted from the host as a user would
(``ray job submit --address http://198.51.100.10:8265``). Most use absolute paths on this machine's filesystem,
which the namespaces share (the stand-in for an NFS mount); the lost-host test and both data-prep tests share no
directory: their videos, shards, Ray Train's storage and MLflow's artifacts are in a real S3 API (moto) and MLflow
behind its server, both on the bridge.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch

import multinode_helpers as mn
from multinode_helpers import local_cluster
from process_helpers import RAY_GRACE
from s3_helpers import environ, mlflow_server, moto_server

pytestmark = pytest.mark.slow

SUBNET = ipaddress.ip_network(f"{local_cluster.NET}.0/24")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> list:
    failed = request.session.testsfailed

    def down() -> None:  # also after a failed or interrupted `up`; the nodes' Ray logs (~200 MB) kept for a failure
        local_cluster.down(mn.STATE_DIR, grace=RAY_GRACE)
        if request.session.testsfailed == failed:
            shutil.rmtree(mn.STATE_DIR, ignore_errors=True)

    request.addfinalizer(down)
    return mn.start_cluster(workers=3, cpus=[2, 1, 1])


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sofnet.session import ensure_synthetic_shards

    return ensure_synthetic_shards(tmp_path_factory.mktemp("mn_data"), videos=24, classes=3)


@pytest.fixture(scope="module")
def spread(cluster: list, shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Both stages with the two ranks on two different worker nodes (STRICT_SPREAD): (output dir, job log)."""
    out = tmp_path_factory.mktemp("mn_spread")
    done = mn.submit("mn-spread", mn.train_entry(shards, out, "mn", "scaling.placement_strategy=STRICT_SPREAD"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return out, mn.logs("mn-spread")


def _in_subnet(ip: str) -> bool:
    return ipaddress.ip_address(ip) in SUBNET


def test_two_ranks_on_two_nodes_meet_over_the_bridge(cluster: list, spread: tuple) -> None:
    out, log = spread
    (ips, rendezvous), *more = mn.placements(log)
    assert not more, f"one attempt expected, the log shows {len(more) + 1}"
    workers = {n.ip for n in cluster if not n.head}
    assert len(ips) == 2 and len(set(ips)) == 2, f"the ranks share a node: {ips}"
    assert set(ips) <= workers, f"ranks on {ips}, worker nodes are {sorted(workers)}"
    assert _in_subnet(rendezvous) and rendezvous == ips[0], f"gloo met at {rendezvous}, rank 0 is on {ips[0]}"
    client, runs = mn.mlflow_runs(out, "mn")
    assert set(runs) == {"job", "stage1", "stage2"}, sorted(runs)
    assert runs["job"].data.tags["node_ips"] == ",".join(ips)
    assert runs["stage1"].data.tags["machine.ranks_differ"] == "none"  # the nodes share this machine's CPU
    assert all(r.info.status == "FINISHED" for r in runs.values())


def test_two_nodes_train_the_same_weights_as_one_node(cluster: list, shards: Path, spread: tuple,
                                                      tmp_path: Path) -> None:
    from sofnet.checkpoint import load_state

    done = mn.submit("mn-pack", mn.train_entry(shards, tmp_path, "mn", "scaling.placement_strategy=STRICT_PACK"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    [(ips, _)] = mn.placements(mn.logs("mn-pack"))
    assert len(set(ips)) == 1 and len(ips) == 2, f"STRICT_PACK should put both ranks on w1: {ips}"
    two_nodes, one_node = spread[0] / "runs" / "mn", tmp_path / "runs" / "mn"
    for part in ("checkpoint-stage1-epoch000", "best/stage1", "checkpoint-stage2-epoch000", "best/stage2"):
        a, b = load_state(str(two_nodes / part)), load_state(str(one_node / part))
        assert a.keys() == b.keys(), part
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{part}: {len(differ)} of {len(a)} tensors differ between 2 nodes and 1, e.g. {differ[:3]}"
    init = load_state(str(two_nodes / "best/stage1"))
    trained = load_state(str(two_nodes / "best/stage2"))
    moved = [k for k in init
             if k in trained and trained[k].is_floating_point() and not torch.equal(init[k], trained[k])]
    assert moved, "stage 2 left every stage-1 weight as it was: nothing was trained, the comparison proves nothing"


@pytest.fixture(scope="module")
def bucket(cluster: list, shards: Path, tmp_path_factory: pytest.TempPathFactory):
    """No shared disk: a real S3 API (moto) and an MLflow server on the host's bridge address (198.51.100.1), the
    module's shards uploaded to s3://data/shards, MLflow's artifacts in s3://runs/mlflow; yields (runtime env file
    with the S3 endpoint and credentials, MLflow URI). This process gets the same variables (it reads the bucket)."""
    import pyarrow.fs as pafs

    tmp = tmp_path_factory.mktemp("mn_bucket")
    with moto_server(local_cluster.HOST_IP, tmp, buckets=["data", "runs"]) as aws, environ(aws):
        fs, root = pafs.FileSystem.from_uri("s3://data/shards")
        pafs.copy_files(str(shards), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        with mlflow_server(local_cluster.HOST_IP, tmp, artifacts="s3://runs/mlflow") as uri:
            yield mn.runtime_env(tmp / "runtime_env.yaml", aws), uri


def _videos_in_bucket(tmp_path: Path, prefix: str, videos: int, *sizes: str) -> tuple:
    """Generate ``videos`` encoded videos with ActivityNet-style annotations, copy both to ``s3://data/<prefix>``
    and delete them here, so that no node can find a video or the annotations on a disk: (annotations, videos)."""
    import pyarrow.fs as pafs

    from data_prep.synthetic import main as synthetic
    from sofnet import storage

    raw = tmp_path / f"raw-{prefix}"
    assert synthetic(["--out", str(raw), "--videos", str(videos), "--classes", "3", *sizes, "--no-progress"]) == 0
    fs, root = pafs.FileSystem.from_uri(f"s3://data/{prefix}/videos")
    pafs.copy_files(str(raw / "videos"), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    storage.write_bytes(f"s3://data/{prefix}/anet.json", (raw / "activity_net.synthetic.json").read_bytes())
    shutil.rmtree(raw)
    return f"s3://data/{prefix}/anet.json", f"s3://data/{prefix}/videos"


def _prep_entry(annotations: str, videos: str, out: str) -> list:
    return ["python", "-m", "data_prep.activitynet", "--annotations", annotations, "--videos", videos, "--out", out,
            "--shard-size", "2", "--ray-address", "auto", "--no-progress"]


def test_data_prep_spreads_over_the_nodes_into_the_bucket(cluster: list, bucket: tuple, tmp_path: Path) -> None:
    """``python -m data_prep.activitynet --annotations s3://... --videos s3://... --out s3://... --ray-address auto``
    as a job on the cluster, with no file of the dataset on any disk: shard tasks run on several worker nodes, each
    copies its videos from the bucket one at a time and uploads its shards and their state there, ``report.json``
    says which node wrote which shard and video, and no video is lost or doubled."""
    import json

    from sofnet import storage

    runtime, _ = bucket
    out = "s3://data/prep-spread"
    annotations, videos = _videos_in_bucket(tmp_path, "spread", 16, "--min-duration", "3", "--max-duration", "4")
    done = mn.submit("mn-prep", _prep_entry(annotations, videos, out), runtime=runtime)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = json.loads(storage.read_text(f"{out}/report.json"))
    workers = {n.ip for n in cluster if not n.head}
    assert set(report["nodes"]) <= workers and len(report["nodes"]) >= 2, report["nodes"]
    videos = [v for node in report["nodes"].values() for v in node["videos"]]
    sizes = json.loads(storage.read_text(f"{out}/sizes.json"))
    assert len(videos) == len(set(videos)) == sum(sizes.values()) == report["counts"]["written"] == 16
    assert sorted(s for node in report["nodes"].values() for s in node["shards"]) == sorted(sizes)
    assert sorted(sizes) == [n for n in storage.list_names(out) if n.endswith(".tar")]


def test_lost_hosts_resume_from_the_bucket(cluster: list, bucket: tuple, tmp_path: Path) -> None:
    """Shards, Ray Train's storage and MLflow's artifacts in S3, MLflow behind its server: the nodes share no
    directory. SIGKILL every process on rank 1's node during stage 1: Ray Train restarts the ranks on the two nodes
    left (one of them the spare) from the last checkpoint in the bucket. Then the head is lost (SIGKILL) and brought
    back, and the job submitted again resumes from the bucket's newest checkpoint. Each epoch is logged once over the
    three attempts."""
    from sofnet import storage

    runtime, tracking = bucket
    epochs, pid_dir, run_dir = 5, tmp_path / "pids", "s3://runs/runs/lost"
    entry = mn.train_entry("s3://data/shards", tmp_path, "lost", "scaling.placement_strategy=STRICT_SPREAD",
                           f"train.stage1.epochs={epochs}", "train.stage2.enabled=false", "train.max_failures=2",
                           "scaling.collective_timeout_s=120", storage="s3://runs/runs", tracking=tracking)
    entry[5:5] = ["--pid-dir", str(pid_dir)]
    done = mn.submit("mn-lost", entry, wait=False, timeout=120, runtime=runtime)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    mn.wait_checkpoint(run_dir, "checkpoint-stage1-epoch000")
    victim = int((pid_dir / "rank1.pid").read_text())
    netns = local_cluster.node_of_pid(victim)
    node = {n.netns: n for n in cluster}.get(netns)
    assert node is not None and not node.head, f"rank 1 (pid {victim}) is in namespace {netns!r}"
    killed = local_cluster.kill_node(node.name, mn.STATE_DIR, signal.SIGKILL)
    assert victim in killed, f"rank 1's pid {victim} was not among {node.name}'s processes {killed}"
    assert "checkpoint-stage1-epoch002" not in mn.registered(run_dir), "training went on too far before the kill"
    # The restarted attempt trains on; once it has registered a checkpoint of its own, the head is lost (its GCS,
    # the job's driver and the job server with it) and brought back: a new cluster, every node's Ray restarted.
    mn.wait_checkpoint(run_dir, "checkpoint-stage1-epoch002", timeout=400)
    first_log = mn.logs("mn-lost")  # the job server's logs go with the head
    local_cluster.kill_node("head", mn.STATE_DIR, signal.SIGKILL)
    local_cluster.restart(mn.STATE_DIR, grace=RAY_GRACE)
    newest = max(int(e) for e in re.findall(r"checkpoint-stage1-epoch(\d{3})", mn.registered(run_dir)))
    again = mn.submit("mn-lost-again", entry, timeout=600, runtime=runtime)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    log = mn.logs("mn-lost-again")
    attempts = mn.placements(first_log)
    assert len(attempts) == 2, f"expected one restart, the log shows {len(attempts)} attempts:\n{first_log[-3000:]}"
    (first, _), (second, rendezvous) = attempts
    assert node.ip in first and node.ip not in second, f"{node.ip} lost; ranks on {first} then {second}"
    assert len(set(second)) == 2 and _in_subnet(rendezvous), (second, rendezvous)
    assert first_log.count("resuming from s3://runs/runs/lost/checkpoint-stage1-epoch") == 1, first_log[-4000:]
    [(third, _)] = mn.placements(log)
    resumed = log.split("resuming from ", 1)[1]
    assert resumed.startswith(f"s3://runs/runs/lost/checkpoint-stage1-epoch{newest:03d}"), (newest, resumed[:300])
    for epoch in range(1, newest + 2):
        assert f"stage1 epoch {epoch}/{epochs} done" not in resumed, f"checkpointed epoch {epoch} was trained again"
    assert newest + 1 == epochs or f"stage1 epoch {newest + 2}/{epochs} done" in resumed, resumed[-3000:]
    client, runs = mn.mlflow_runs(tracking, "lost")
    assert set(runs) == {"job", "stage1"}, sorted(runs)  # the same MLflow runs continued over the three attempts
    assert all(r.info.status == "FINISHED" for r in runs.values()), {k: r.info.status for k, r in runs.items()}
    assert runs["stage1"].data.tags["node_ips"] == ",".join(third), runs["stage1"].data.tags
    assert runs["stage1"].data.tags["node_ips_history"].startswith(",".join(first)), runs["stage1"].data.tags
    steps = sorted(m.step for m in client.get_metric_history(runs["stage1"].info.run_id, "val/mAP"))
    assert steps == list(range(1, epochs + 1)), f"val/mAP logged at epochs {steps}, want each of 1..{epochs} once"
    relogged = runs["stage1"].data.tags.get("epochs_logged_by_lost_attempt", "")  # logged, then lost before its ckpt
    assert all(int(e) > 1 for e in relogged.split(",") if e), relogged
    assert storage.kind(f"{run_dir}/checkpoint-stage1-epoch{epochs - 1:03d}") == "directory"
    assert storage.kind(f"{run_dir}/best/stage1/SEAL.rank0.json") == "file"
    version = client.get_model_version_by_alias("sofnet-lost", "best")
    assert version.run_id == runs["stage1"].info.run_id
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="runs", Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("/MLmodel") for k in keys), f"no logged model in s3://runs/mlflow: {keys[:20]}"


def test_local_storage_on_several_nodes_is_refused_before_training(cluster: list, shards: Path, tmp_path: Path) -> None:
    """Without train.shared_storage a local output_dir on a multi-node cluster is one line and exit 2, before any
    worker starts (Ray Train no longer syncs checkpoints to the head)."""
    entry = [a for a in mn.train_entry(shards, tmp_path, "mn-local") if a != "train.shared_storage=true"]
    done = mn.submit("mn-local", entry, timeout=300)
    assert done.returncode != 0 and mn.status("mn-local") == "FAILED"
    log = mn.logs("mn-local")
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.output_dir=" in errors[0] and "shared_storage" in errors[0], log[-3000:]
    assert "Traceback" not in log and "RayTrainWorker" not in log and not (tmp_path / "runs" / "mn-local").exists()


def test_data_prep_survives_a_lost_node_and_a_rerun(cluster: list, bucket: tuple, tmp_path: Path) -> None:
    """SIGKILL a worker node while data prep reads its videos from the bucket and writes its shards there (no disk
    shared; last: it costs the cluster a node). The runner resubmits a lost node's running shards elsewhere; a rerun
    writes nothing again; no video is lost or doubled."""
    import json
    import time

    from sofnet import storage

    runtime, _ = bucket
    out = "s3://data/prep-lost"
    annotations, videos = _videos_in_bucket(tmp_path, "lost", 48, "--min-duration", "4", "--max-duration", "6")
    entry = _prep_entry(annotations, videos, out)
    done = mn.submit("mn-prep-lost", entry, wait=False, timeout=120, runtime=runtime)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def finished() -> list:  # the shards whose state is in the bucket (written after the shard itself)
        return [n for n in storage.list_names(f"{out}/.state") if n.endswith(".tar.json")]

    for _ in range(600):  # bounded: 600 x 0.2 s, until the first shard is finished (tasks are running)
        if finished() or mn.status("mn-prep-lost") in {"SUCCEEDED", "FAILED"}:
            break
        time.sleep(0.2)
    first = finished()
    assert first, "no shard was written"
    busy = json.loads(storage.read_text(f"{out}/.state/{first[0]}"))["node"]  # writing shards: it holds the next task
    victim = next(n for n in cluster if n.ip == busy)
    assert local_cluster.kill_node(victim.name, mn.STATE_DIR, signal.SIGKILL)
    assert len(finished()) < 24, "data prep ended before the node was lost"
    mn.wait_status("mn-prep-lost", "SUCCEEDED", timeout=600)
    # Whether a shard task was in flight on the node at the kill is a race (usually one is, and the log then shows
    # "shard ... failed"); what must hold either way is below: every video once, and an idempotent rerun.
    report = json.loads(storage.read_text(f"{out}/report.json"))
    written = sorted(v for node in report["nodes"].values() for v in node["videos"])
    assert len(written) == len(set(written)) == report["counts"]["written"] == 48 and report["counts"]["skipped"] == 0
    sizes = json.loads(storage.read_text(f"{out}/sizes.json"))
    assert sum(sizes.values()) == 48 and sorted(sizes) == [n for n in storage.list_names(out) if n.endswith(".tar")]
    digest = json.loads(storage.read_text(f"{out}/manifest.json"))["digest"]
    again = mn.submit("mn-prep-rerun", entry, timeout=600, runtime=runtime)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert json.loads(storage.read_text(f"{out}/manifest.json"))["digest"] == digest  # the same shards
    assert "0 videos decoded in this run" in mn.logs("mn-prep-rerun")
