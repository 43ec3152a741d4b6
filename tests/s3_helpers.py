"""Real servers the object-storage tests start: an S3 API (moto's standalone server), a GCS JSON API
(gcp-storage-emulator) and MLflow's tracking server, each in its own process group, waited for a bounded time and
stopped by process group.

    with moto_server("127.0.0.1", log_dir, buckets=["runs"]) as aws:     # {"AWS_ENDPOINT_URL": ..., credentials}
        os.environ.update(aws)                                             # pyarrow / boto3 read these
    with gcs_server("127.0.0.1", data_dir, buckets=["runs"]) as gcs:     # {"CLOUD_STORAGE_EMULATOR_ENDPOINT": ...}
        os.environ.update(gcs)                                             # then gs://anonymous@runs/... (no login)
    with mlflow_server("127.0.0.1", srv_dir, artifacts="s3://runs/mlflow", env=...) as uri:   # http://127.0.0.1:port
        ...
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, Mapping, Sequence

from process_helpers import stop_process_group

from sofnet.session import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEALTH_WAIT_S = 240.0  # how long mlflow_server waits for the server's /health
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, tries: int = 150) -> None:
    for _ in range(tries):  # bounded: tries x 0.2 s
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    raise RuntimeError(f"{host}:{port} not listening after {tries * 0.2:.0f} s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def moto_server(host: str, log_dir: Path, buckets: Sequence[str] = ()) -> Iterator[Dict[str, str]]:
    """A moto S3 server on ``host`` (a free port) with ``buckets``; yields the AWS variables that address it."""
    port = free_port(host)
    log_path = Path(log_dir) / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", host, "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", **CREDENTIALS}
    try:
        _wait_port(host, port, proc, log_path)
        import boto3

        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield env
    finally:
        stop_process_group(proc, grace=10)


_GCS_THREADED = """
import sys
from http import server
server.HTTPServer = server.ThreadingHTTPServer
from gcp_storage_emulator.__main__ import main
main(sys.argv[1:])
"""


@contextlib.contextmanager
def gcs_server(host: str, data_dir: Path, buckets: Sequence[str] = ()) -> Iterator[Dict[str, str]]:
    """A GCS emulator on ``host`` (a free port), its objects in memory and its log in ``data_dir``, with ``buckets``;
    yields the variable pyarrow's GCS client reads. Its URIs take ``anonymous@`` (``gs://anonymous@bucket/...``):
    without it the client first looks for Google credentials, which a machine off the cloud waits on for minutes."""
    port = free_port(host)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "gcs.log"
    # In memory: its disk store maps an object to a file, so a directory marker "a/" (pyarrow's create_dir writes
    # them) and an object "a/b" cannot both exist there, and the request fails without an answer. Threaded: its
    # HTTPServer answers one request at a time, and pyarrow's copy_files (Ray Train's checkpoint download) reads
    # several objects at once, so the server sat writing one response while the client waited on another.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _GCS_THREADED, "start", "-H", host, "--port", str(port),
                                 "--in-memory", "-q"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{host}:{port}"
    try:
        _wait_port(host, port, proc, log_path)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for bucket in buckets:  # the JSON API's buckets.insert
            body = f'{{"name": "{bucket}"}}'.encode()
            request = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=body,
                                             headers={"Content-Type": "application/json"}, method="POST")
            with opener.open(request, timeout=10) as r:
                assert r.status == 200, r.status
        yield {"CLOUD_STORAGE_EMULATOR_ENDPOINT": url}
    finally:
        stop_process_group(proc, grace=10)


@contextlib.contextmanager
def mlflow_server(host: str, directory: Path, artifacts: str = "", env: Mapping[str, str] | None = None,
                  allowed_hosts: str = "") -> Iterator[str]:
    """``infra/mlflow_server.sh`` on ``host`` (a free port), store in ``directory``; yields its URI."""
    port = free_port(host)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    args = [str(REPO / "infra/mlflow_server.sh"), "--host", host, "--port", str(port), "--dir", str(directory / "srv")]
    args += ["--artifacts", artifacts] if artifacts else []
    args += ["--allowed-hosts", allowed_hosts] if allowed_hosts else []
    log_path = directory / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, env={**os.environ, **(env or {}), "MLFLOW_BIN": str(BIN / "mlflow")},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://{host}:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        # Bounded in time and count. It starts in ~6 s on a quiet machine, once took 77 s beside a training job: a slow
        # CI machine gets room, a dead server is still seen at once (proc.poll).
        healthy, deadline = False, time.monotonic() + HEALTH_WAIT_S
        for _ in range(int(HEALTH_WAIT_S / 0.5) + 1):
            try:
                with opener.open(f"{uri}/health", timeout=2) as r:
                    healthy = r.status == 200
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-2000:]}") from None
            if healthy or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if not healthy:
            raise RuntimeError(f"mlflow server not healthy after {HEALTH_WAIT_S:.0f} s: {log_path.read_text()[-2000:]}")
        yield uri
    finally:
        stop_process_group(proc, grace=20)


@contextlib.contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` inside, restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def other_bucket(bucket: str) -> str:
    """The same store's URI of a bucket that does not exist."""
    return bucket.replace("runs", "nobucket")


def upload_tree(local: Path, uri: str) -> None:
    """Copy the folder ``local`` under ``uri`` (an ``s3://`` / ``gs://`` prefix), object by object."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
