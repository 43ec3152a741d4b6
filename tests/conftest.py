"""Shared test fixtures: where the real data lives, and CPU-only settings for DeepSpeed and torch."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# A job a test runs without naming a tracking URI logs here, not into ./mlflow.db of the checkout (the user's runs)
# nor to a server the user's shell points at; children inherit it. Removed when the session ends.
_MLFLOW_DIR = tempfile.mkdtemp(prefix="sofnet-tests-mlflow-")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_MLFLOW_DIR}/mlflow.db"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repo: real annotations, split lists and video clips (see its README)."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests need the shared data folder beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def _ray_core_threads() -> list[str]:
    """Names of Ray core-worker threads alive in this process (Linux: /proc/self/task/*/comm)."""
    tasks = Path("/proc/self/task")
    names = []
    for task in tasks.iterdir() if tasks.is_dir() else []:
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended while we looked
            continue
    return [n for n in names if n in {"worker.io", "gcs_client_io_s"}]


@pytest.fixture(scope="session", autouse=True)
def no_ray_session_in_the_test_process():
    """Ray runs in subprocesses only (``ray start``, jobs, ``process_helpers.prepare_on_ray``): a Ray session started
    inside pytest leaves core-worker threads that outlive ``ray.shutdown()`` and crashed the interpreter at exit,
    after every test had passed. This fails the run at its end, by name, if a test starts one again."""
    yield
    threads = _ray_core_threads()
    if threads:
        pytest.fail(f"a test started a Ray session inside the pytest process (threads {threads}); "
                    "run it in a subprocess (see tests/process_helpers.py)")


@pytest.fixture(scope="session", autouse=True)
def _remove_the_default_tracking_store():
    yield
    shutil.rmtree(_MLFLOW_DIR, ignore_errors=True)


# The object stores of the bucket tests (tests/test_multinode_s3.py, test_data_prep_buckets.py): one server per
# module, its variables (the standard ones a user sets) in os.environ while it runs.
@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (own process group, torn down by it) with bucket ``runs``; yields its URL."""
    from s3_helpers import environ, moto_server

    with moto_server("127.0.0.1", tmp_path_factory.mktemp("moto"), buckets=["runs"]) as aws, environ(aws):
        yield aws["AWS_ENDPOINT_URL"]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory) -> Iterator[str]:
    """A GCS emulator on 127.0.0.1 (own process group, torn down by it) with bucket ``runs``; yields its URL."""
    from s3_helpers import environ, gcs_server

    with gcs_server("127.0.0.1", tmp_path_factory.mktemp("gcs"), buckets=["runs"]) as env, environ(env):
        yield env["CLOUD_STORAGE_EMULATOR_ENDPOINT"]


@pytest.fixture(params=["s3", "gs"])
def bucket(request: pytest.FixtureRequest) -> str:
    """The bucket ``runs`` on each store, as the URI prefix a user writes: ``s3://runs`` or ``gs://anonymous@runs``."""
    request.getfixturevalue("s3" if request.param == "s3" else "gcs")
    return "s3://runs" if request.param == "s3" else "gs://anonymous@runs"
