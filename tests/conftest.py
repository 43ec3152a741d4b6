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
# Disk: one run of the suite writes ~6 GB (checkpoints of every epoch, shards, Ray sessions' logs), and a CI machine
# may have a few GB free: a run filled one and failed 38 tests on "disk is full". So pytest keeps the files of failed
# tests only (pyproject: tmp_path_retention_policy), a module's fixture files go when its tests have passed
# (_module_files below), and what the tests' children write to the temporary directory goes here: Ray's sessions
# ($TMPDIR/ray, not /tmp/ray), and the staging directories a SIGKILLed worker cannot remove (~180 MB each). The whole
# folder is removed when the session ends. The pytest process itself keeps /tmp (tempfile caches it at first use).
# A pytest-xdist worker (`make test TEST_WORKERS=2`) inherits the controller's folder as TMPDIR and takes a subfolder
# named for itself, short: Ray's socket paths under it may not exceed 107 bytes (a second `sofnet-tests-xxxxxxxx` level
# broke that). The whole folder is then the controller's, removed at its end with whatever a crashed worker left.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_INHERITED = os.environ.get("TMPDIR", "")
if _WORKER and os.path.basename(_INHERITED).startswith("sofnet-tests-"):
    _SESSION_TMP = os.path.join(_INHERITED, _WORKER)
    os.makedirs(_SESSION_TMP)
else:
    _SESSION_TMP = tempfile.mkdtemp(prefix="sofnet-tests-")
os.environ["TMPDIR"] = _SESSION_TMP
# A job a test runs without naming a tracking URI logs here, not into ./mlflow.db of the checkout (the user's runs)
# nor to a server the user's shell points at; children inherit it.
_MLFLOW_DIR = os.path.join(_SESSION_TMP, "mlflow")
os.makedirs(_MLFLOW_DIR)
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


# The suite's peak in the temporary directory, measured (README "Two commands"): 2.1 GB; asked for with a margin.
# Two workers (`make test TEST_WORKERS=2`) peaked at 2.9 GB: give them SOFNET_TESTS_MIN_FREE_GB=4.
MIN_FREE_GB = float(os.environ.get("SOFNET_TESTS_MIN_FREE_GB", "3"))


def pytest_configure(config: pytest.Config) -> None:
    """Too little disk is one line (exit 4, pytest's usage error) before any test, not dozens of failures part-way
    ("disk is full" from sqlite, "unexpected pos" from torch.save: how a CI run on a full machine read)."""
    where = os.path.dirname(_SESSION_TMP)
    free = shutil.disk_usage(where).free / 1e9
    if free < MIN_FREE_GB:
        shutil.rmtree(_SESSION_TMP, ignore_errors=True)
        raise pytest.UsageError(f"{where}: {free:.1f} GB free; the suite writes up to ~2.1 GB there and asks for "
                                f"{MIN_FREE_GB:g} GB: free some, point TMPDIR at a disk with room, or lower "
                                "SOFNET_TESTS_MIN_FREE_GB to run a few tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with end-to-end (``slow``) tests first, each module's tests kept together and in file order.

    ``make test TEST_WORKERS=N`` runs N pytest workers (pytest-xdist, ``--dist loadfile``: a module on one worker,
    its module-scoped cluster or server started once) that take the next module as they finish one: the longest
    ones handed out first, the short ones fill in at the end, so no worker is left alone with a 5-minute module at
    the end. A serial run is the same tests in that order."""
    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    first_at: dict = {}
    slow: set = set()
    for i, item in enumerate(items):
        first_at.setdefault(module(item), i)
        if item.get_closest_marker("slow"):
            slow.add(module(item))
    items.sort(key=lambda it: (module(it) not in slow, first_at[module(it)]))


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session folder goes at the very end, in every process: a worker's own, and the controller's with whatever
    a crashed worker left in it (a session fixture would never run in the controller, nor with --collect-only)."""
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _module_files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Remove what this module's fixtures made under pytest's base temp (``tmp_path_factory.mktemp``: shards, a
    server's store, trained runs; up to ~850 MB a module) once the module is done, unless one of its tests failed:
    then they stay beside the failed test's ``tmp_path`` for a post-mortem. Autouse and module-scoped, it is set up
    before the module's own fixtures and so torn down after them (servers stopped before their folders go)."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(os.listdir(base)), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for name in set(os.listdir(base)) - before:
            shutil.rmtree(base / name, ignore_errors=True)


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
