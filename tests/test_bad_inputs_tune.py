"""Bad sweep inputs are refused before anything is spent: both sweep jobs, run as users run them (subprocesses).

Each case writes a sweep file, runs ``jobs/tune_alpha_beta.py`` or ``jobs/tune_early_exit.py`` on it and checks:
exit status 2, exactly one stderr line, no traceback, the sweep file and the bad key named, and nothing started or
written: no Ray session (``RAY_TMPDIR`` stays absent), no MLflow store, nothing under ``storage_path`` (no shared
stage 1, no cache, no Tune experiment).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple

import pytest
import torch

from helpers import tiny_model

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "jobs/configs/demo.yaml"  # 8 frames, early exit at t_min 3


class Case(NamedTuple):
    job: str  # alpha_beta | early_exit
    sweep: str  # the sweep file's body after kind/base_config/storage_path; {ckpt} is a 4-frame checkpoint
    args: List[str]  # extra command-line arguments
    named: List[str]  # what the error line must name besides the sweep file
    kind: str = ""  # the sweep file's kind (default: the job's)


AB, EE = "alpha_beta", "early_exit"
POINT = "search:\n  points:\n    - {loss.alpha: 1.0, loss.beta: null}\n"
ET_GRID = "checkpoint: {ckpt}\nsearch:\n  space:\n    early_exit.rho: {sampler: grid, values: [0.95, 0.99]}\n"


def _missing_searcher() -> str:
    """A Bayesian searcher whose package is not installed here ("" if both are: that case cannot fail)."""
    return next((name for name in ("optuna", "hyperopt") if importlib.util.find_spec(name) is None), "")


CASES: Dict[str, Case] = {
    "alpha out of range (point)": Case(AB, "search:\n  points:\n    - {loss.alpha: 2.0, loss.beta: null}\n", [],
                                       ["search.points[0]", "loss.alpha"]),
    "uniform low above high": Case(AB, "search:\n  algorithm: random\n  space:\n"
                                       "    loss.alpha: {sampler: uniform, low: 1.0, high: 0.8}\n", [],
                                   ["search.space.loss.alpha", "low"]),
    "range end outside the schema": Case(AB, "search:\n  algorithm: random\n  space:\n"
                                             "    loss.beta: {sampler: uniform, low: 0.5, high: 1.5}\n", [],
                                         ["search.space.loss.beta", "loss.beta"]),
    "searcher not installed": Case(AB, "search:\n  algorithm: {searcher}\n  space:\n"
                                       "    loss.alpha: {sampler: uniform, low: 0.8, high: 1.0}\n", [],
                                   ["search.algorithm", "not installed"]),
    "empty search": Case(AB, "search:\n  space: {}\n", [], ["search", "points or a space"]),
    "a name that is a path": Case(AB, POINT, ["name=a/b"], ["name='a/b'", "letters, digits"]),
    "unknown sampler": Case(AB, "search:\n  algorithm: random\n  space:\n"
                                "    loss.alpha: {sampler: normal, low: 0.8, high: 1.0}\n", [],
                            ["search.space.loss.alpha", "sampler"]),
    "unknown config key": Case(AB, "search:\n  points:\n    - {loss.gamma: 1.0}\n", [],
                               ["search.points[0]", "loss.gamma"]),
    "wrong type": Case(AB, "search:\n  points:\n    - {loss.alpha: abc}\n", [], ["search.points[0]", "loss.alpha"]),
    "stage-1 key with a shared stage 1": Case(AB, "search:\n  points:\n    - {train.stage1.epochs: 2}\n", [],
                                              ["train.stage1.epochs", "shared stage 1"]),
    "asha reduction factor": Case(AB, POINT + "scheduler: {type: asha, reduction_factor: 1}\n", [],
                                  ["scheduler.reduction_factor"]),
    "resume without a sweep": Case(AB, POINT, ["--resume"], ["--resume", "no sweep to resume"]),
    "stage-1 checkpoint missing": Case(AB, POINT + "stage1_checkpoint: /nonexistent/stage1\n", [],
                                       ["stage1_checkpoint", "/nonexistent/stage1"]),
    "rho above 1": Case(EE, "checkpoint: {ckpt}\nsearch:\n  space:\n"
                            "    early_exit.rho: {sampler: grid, values: [0.99, 1.5]}\n", [],
                        ["search.space.early_exit.rho", "early_exit.rho"]),
    "t_min 0": Case(EE, ET_GRID + "    early_exit.t_min: {sampler: grid, values: [0, 2]}\n", [],
                    ["search.space.early_exit.t_min", "early_exit.t_min"]),
    "t_min above the model's frames": Case(EE, ET_GRID + "    early_exit.t_min: {sampler: grid, values: [2, 6]}\n",
                                           [], ["search.space.early_exit.t_min", "4 frames"]),
    "unknown counting mode": Case(EE, ET_GRID + "    early_exit.mode: {sampler: grid, values: [reached, paper]}\n",
                                  [], ["search.space.early_exit.mode", "early_exit.mode"]),
    "a key a replay ignores": Case(EE, ET_GRID + "    loss.alpha: {sampler: grid, values: [0.5, 0.9]}\n", [],
                                   ["loss.alpha", "early_exit sweep"]),
    "no cache and no checkpoint": Case(EE, "search:\n  space:\n"
                                           "    early_exit.rho: {sampler: grid, values: [0.95]}\n", [],
                                       ["checkpoint"]),
    "wrong kind for the job": Case(EE, POINT, [], ["kind=alpha_beta"], kind=AB),
}


@pytest.fixture(scope="module")
def checkpoint_4_frames(tmp_path_factory) -> Path:
    """A real SoF-Net checkpoint directory of 4 frames (sealed ``model.json`` + ``weights.pt``)."""
    from sofnet import checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "sofnet4"
    model = tiny_model("sofnet", classes=3, segments=4, size=64, dtype=torch.float32)
    checkpoint.write_model(out, model, {"enabled": True, "rho": 0.99, "t_min": 2, "mode": "reached"})
    checkpoint.seal(out)
    return out


def _run(case: Case, tmp: Path, ckpt: Path) -> subprocess.CompletedProcess:
    body = case.sweep.replace("{ckpt}", str(ckpt)).replace("{searcher}", _missing_searcher())
    sweep = tmp / "sweep.yaml"
    sweep.write_text(f"kind: {case.kind or case.job}\nbase_config: {DEMO}\nstorage_path: {tmp / 'tune'}\n{body}")
    env = {**os.environ, "RAY_TMPDIR": str(tmp / "ray"), "DS_ACCELERATOR": "cpu", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"tune_{case.job}.py"), "--sweep", str(sweep),
                           f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", *case.args],
                          env=env, cwd=tmp, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_sweep_is_refused_before_anything_starts(name: str, tmp_path: Path, checkpoint_4_frames: Path) -> None:
    case = CASES[name]
    if "{searcher}" in case.sweep and not _missing_searcher():
        pytest.skip("optuna and hyperopt are both installed: no missing searcher to refuse")
    proc = _run(case, tmp_path, checkpoint_4_frames)
    lines = proc.stderr.strip().splitlines()
    shown = f"exit {proc.returncode}\n--- stderr\n{proc.stderr[-3000:]}\n--- stdout\n{proc.stdout[-1000:]}"
    assert proc.returncode == 2, shown
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, shown
    assert str(tmp_path / "sweep.yaml") in lines[0], shown
    for word in case.named:
        assert word in lines[0], (word, shown)
    assert not (tmp_path / "ray").exists(), "a Ray session started"
    assert not (tmp_path / "mlflow.db").exists(), "an MLflow store was opened"
    assert not (tmp_path / "tune").exists(), "something was written under storage_path (stage 1, cache, Tune)"


def test_a_malformed_override_names_the_command_line_item(tmp_path: Path, checkpoint_4_frames: Path) -> None:
    """A nested list left unquoted on the command line is one line naming that item (it was a YAML traceback)."""
    proc = _run(Case(AB, POINT, ["overrides=[a=[1],b]"], []), tmp_path, checkpoint_4_frames)
    shown = f"exit {proc.returncode}\n--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, shown
    assert proc.stderr.strip().splitlines() == ["error: command line: overrides=[a=[1],b]: while parsing a flow "
                                                "sequence"], shown
    assert not (tmp_path / "ray").exists() and not (tmp_path / "tune").exists()


def test_the_cases_cover_both_jobs_and_the_seed_sweeps_pass_the_same_checks(tmp_path: Path) -> None:
    """The table holds >= 10 cases over both jobs, and the shipped sweep files pass every check (a check that
    refused everything would pass the table above)."""
    from sofnet.tune.runner import preflight
    from sofnet.tune.sweep import load_sweep

    assert len(CASES) >= 10 and {c.job for c in CASES.values()} == {AB, EE}
    for name in ("alpha_beta", "early_exit"):
        path = REPO / "jobs/configs/tune" / f"{name}.yaml"
        for smoke in (False, True):
            sweep = load_sweep(path, [f"storage_path={tmp_path}"], smoke=smoke)
            assert preflight(sweep, src=str(path), smoke=smoke).model.num_segments >= 1
