"""Sweep files, search spaces, tables, and the early-exit cache against the full evaluation (no Ray here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tune_helpers as th
from helpers import tiny_model
from sofnet import checkpoint as checkpoints
from sofnet.config import ConfigError
from sofnet.data import make_eval_loader
from sofnet.replay import replay
from sofnet.early_exit import EarlyExit
from sofnet.evaluation import evaluate
from sofnet.tune.et_cache import ETBundle, load_model, replay_metrics, write_cache
from sofnet.tune.report import pareto_front, table_c, table_d
from sofnet.train.pyfunc import write_artifacts
from sofnet.tune.sweep import (POINT_KEY, load_sweep, param_space, scheduler, search_algorithm, trial_config,
                               trial_params)

TUNE = th.REPO / "jobs/configs/tune"
SEED_AB = [(1.0, None), (0.9, None), (1.0, 0.0), (1.0, 0.5), (1.0, 1.0), (0.9, 0.5)]


def test_sweep_files_hold_the_seed_grids():
    ab = load_sweep(TUNE / "alpha_beta.yaml")
    assert [(p["loss.alpha"], p["loss.beta"]) for p in ab.search.points] == SEED_AB
    assert ab.scheduler.type == "fifo" and ab.metric == "val/mAP" and ab.mode == "max"  # every row trains to the end
    grid = param_space(ab.search)[POINT_KEY]["grid_search"]
    assert [(p["loss.alpha"], p["loss.beta"]) for p in grid] == SEED_AB
    smoke = load_sweep(TUNE / "alpha_beta.yaml", smoke=True)
    assert 1 <= len(smoke.search.points) < 6 and smoke.name != ab.name  # a smoke grid replaces, never appends
    et = load_sweep(TUNE / "early_exit.yaml")
    space = param_space(et.search)
    assert space["early_exit.rho"]["grid_search"] == [0.95, 0.99, 0.999]
    assert space["early_exit.t_min"]["grid_search"] == [2, 3, 4, 5]
    assert space["early_exit.mode"]["grid_search"] == ["reached", "official"]  # ours beside the official counting
    assert et.kind == "early_exit" and et.metric == "val/et/mAP"
    smoke_et = param_space(load_sweep(TUNE / "early_exit.yaml", smoke=True).search)
    assert smoke_et["early_exit.t_min"]["grid_search"] == [2, 3, 4]  # the smoke model's 4 frames


def test_the_asha_sweep_is_the_seed_grid_stopped_early():
    """``alpha_beta_asha.yaml`` (what ``infra/asha_check.sh`` runs): Table D's grid under ASHA; its smoke run has a rung
    after every one of its 4 epochs and two trials at a time, so that ASHA stops some and the next ones need CPUs."""
    from ray.tune.schedulers import ASHAScheduler

    sweep = load_sweep(TUNE / "alpha_beta_asha.yaml")
    assert [(p["loss.alpha"], p["loss.beta"]) for p in sweep.search.points] == SEED_AB
    assert (sweep.scheduler.type, sweep.scheduler.grace_period) == ("asha", 2) and isinstance(scheduler(sweep),
                                                                                               ASHAScheduler)
    smoke = load_sweep(TUNE / "alpha_beta_asha.yaml", smoke=True)
    assert (smoke.scheduler.type, smoke.scheduler.grace_period, smoke.max_concurrent_trials) == ("asha", 1, 2)
    assert len(smoke.search.points) == 6 and "train.stage2.epochs=4" in smoke.overrides


def test_random_search_space_scheduler_and_errors(tmp_path):
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.sample import Categorical, Float

    f = tmp_path / "s.yaml"
    f.write_text("base_config: jobs/configs/demo.yaml\nsearch:\n  algorithm: random\n  num_samples: 4\n  space:\n"
                 "    loss.alpha: {sampler: uniform, low: 0.8, high: 1.0}\n"
                 "    loss.beta: {sampler: choice, values: [null, 0.0, 0.5]}\n")
    sweep = load_sweep(f, ["scheduler.type=asha", "scheduler.max_t=4"])
    space = param_space(sweep.search)
    assert isinstance(space["loss.alpha"], Float) and isinstance(space["loss.beta"], Categorical)
    assert search_algorithm(sweep) is None and isinstance(scheduler(sweep), ASHAScheduler)
    with pytest.raises(ConfigError, match="sampler: grid"):
        load_sweep(f, ["search.algorithm=grid"])
    with pytest.raises(ConfigError, match="search.algorithm"):
        load_sweep(f, ["search.algorithm=bayes"])
    with pytest.raises(ConfigError, match="bad key"):
        load_sweep(f, ["search.nope=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_sweep(tmp_path / "missing.yaml")
    try:  # Bayesian search needs a package that is not pinned: a clear error, or a searcher where installed
        assert search_algorithm(load_sweep(f, ["search.algorithm=optuna"])) is not None
    except ConfigError as e:
        assert "not installed" in str(e)


def test_trial_config_sets_params_and_rejects_bad_ones():
    from sofnet.config import load_config

    base = load_config(th.REPO / "jobs/configs/demo.yaml")
    before = (base.loss.alpha, base.loss.beta, base.early_exit.rho)
    assert before[1] is not None and before != (0.9, None, 0.95)
    params = trial_params({POINT_KEY: {"loss.alpha": 0.9, "loss.beta": None}, "early_exit.rho": 0.95})
    cfg = trial_config(base, params)
    assert (cfg.loss.alpha, cfg.loss.beta, cfg.early_exit.rho) == (0.9, None, 0.95)
    assert (base.loss.alpha, base.loss.beta, base.early_exit.rho) == before  # the base is not changed
    with pytest.raises(ConfigError, match="loss.alpha"):
        trial_config(base, {"loss.alpha": 2.0})
    with pytest.raises(ConfigError, match="not a config key"):
        trial_config(base, {"loss.gamma": 1.0})


def test_pareto_front_and_tables():
    pts = [(1.0, 0.5), (2.0, 0.7), (1.5, 0.4), (3.0, 0.7), (0.5, 0.1)]
    assert pareto_front(pts) == [4, 0, 1]  # (1.5, 0.4) and (3.0, 0.7) are dominated
    rows = [{"early_exit.rho": r, "early_exit.t_min": t, "early_exit.mode": "reached", "val/et/mAP": 0.5,
             "val/et/gflops_per_frame": 1.25} for r in (0.95, 0.99) for t in (2, 3)]
    rows += [{**r, "early_exit.mode": "official", "val/et/mAP": 0.25} for r in rows]
    text = table_c(rows)
    assert "| rho | counting \\ T_min | 2 | 3 |" in text
    assert text.count("50.00 / 1.2500") == 4 and text.count("25.00 / 1.2500") == 4
    lines = text.splitlines()  # at each rho, ours first and the official counting on the next line
    assert lines.index("| 0.95 | reached | 50.00 / 1.2500 | 50.00 / 1.2500 |") + 1 == \
        lines.index("| 0.95 | official | 25.00 / 1.2500 | 25.00 / 1.2500 |")
    d = table_d([{"loss.alpha": 1.0, "loss.beta": None, "val/mAP": 0.25, "val/gflops_per_video": 3.0,
                  "epochs_trained": 14, "epochs_planned": 14},
                 {"loss.alpha": 0.9, "loss.beta": 0.5, "val/mAP": 0.5, "val/gflops_per_video": 2.0,
                  "epochs_trained": 2, "epochs_planned": 14}])
    assert "| 1.00 | none | 25.00 | 3.0000 | - | - | 14/14 |" in d
    assert "| 0.90 | 0.50 | 50.00 | 2.0000 | - | - | 2/14 stopped early |" in d


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_units")
    shards = th.shards(root / "data")
    return shards, th.checkpoint(shards, root / "ckpt")


def test_cache_replay_equals_full_evaluation_per_video(trained, tmp_path):
    """Every (rho, T_min, mode) point, replayed from the cache written from a checkpoint on real shards, gives per
    video the same decisions, exit step, GFLOPs and scores as the full skipping-path evaluation, and the same
    metrics (mAP, GFLOPs, frame usage)."""
    shards, ckpt = trained
    cfg = th.eval_config(shards)
    model = load_model(str(ckpt))
    bundle = ETBundle.load(write_cache(model, cfg, tmp_path / "cache"))
    assert bundle.meta["videos"] == len(bundle.ids) >= 4 and bundle.ids == sorted(bundle.ids)
    loader = make_eval_loader(shards, num_segments=th.SEGMENTS, input_size=th.SIZE, resize=73, batch_size=4,
                              num_workers=0, num_classes=th.CLASSES, subset="validation")
    fired, gflops = 0, set()
    # Points where early exit fires at different times, both T_min countings (the job test covers the seed grid).
    for mode, rho, t_min in [("reached", 0.95, 2), ("reached", 0.999, 2), ("reached", 0.99, 3), ("reached", 0.95, 5),
                             ("official", 0.95, 2)]:
        full = evaluate(model, loader, device=torch.device("cpu"), num_classes=th.CLASSES,
                        et=EarlyExit(True, rho, t_min, mode), expected=loader.dataset.num_videos)
        assert full.ids == bundle.ids
        a, out = full.arrays, replay(bundle.cache, rho, t_min, mode)
        np.testing.assert_array_equal(out.decisions.numpy(), a["et_decisions"])
        np.testing.assert_array_equal(out.exit_step.numpy(), a["et_exit_step"])
        np.testing.assert_allclose(out.gflops.double().numpy(), a["et_gflops"], rtol=1e-12)
        np.testing.assert_allclose(out.logits.float().softmax(-1).numpy(), a["et_scores"], rtol=1e-6,
                                   atol=1e-7)
        got = replay_metrics(bundle, rho, t_min, mode)
        want = {k: v for k, v in full.metrics.items() if k.startswith("val/et/")}
        assert got.keys() == want.keys()
        for k in want:
            assert math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-12), (k, rho, t_min, mode)
        fired += int((a["et_exit_step"] < th.SEGMENTS).sum())
        gflops.add(round(got["val/et/gflops_per_frame"], 9))
    assert fired > 0 and len(gflops) >= 3  # early exit fires, and the points differ


def test_cache_errors(trained, tmp_path):
    from sofnet.tune.early_exit import ensure_cache

    with pytest.raises(FileNotFoundError, match="et-cache"):
        ETBundle.load(tmp_path / "none")
    sweep = load_sweep(TUNE / "early_exit.yaml", [f"storage_path={tmp_path}", "checkpoint=''"])
    with pytest.raises(ConfigError, match="checkpoint="):
        ensure_cache(sweep, th.eval_config(trained[0]))
    tsm = tiny_model("tsm", classes=th.CLASSES, segments=th.SEGMENTS, size=th.SIZE, dtype=torch.float32)
    with pytest.raises(ValueError, match="causal"):
        write_cache(tsm, th.eval_config(trained[0]), tmp_path / "c")


def test_evaluate_job_writes_the_cache(trained, tmp_path, capsys):
    """jobs/evaluate.py --et-cache: the cache it writes replays its own early-exit columns (metrics.json)."""
    import importlib.util
    import json

    shards, ckpt = trained
    spec = importlib.util.spec_from_file_location("evaluate_job", th.REPO / "jobs/evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--config", str(th.REPO / "jobs/configs/demo.yaml"), "--checkpoint", str(ckpt),
                     "--out", str(tmp_path / "out"), "--et-cache", str(tmp_path / "cache"), "--rho", "0.95",
                     "--t-min", "2", f"data.val_shards={shards}", f"data.train_shards={shards}", "data.resize=73",
                     "data.num_workers=0", "model.num_classes=3"]) == 0
    report = json.loads((tmp_path / "out/metrics.json").read_text())["metrics"]
    got = replay_metrics(ETBundle.load(tmp_path / "cache"), 0.95, 2, "reached")
    assert got["val/et/frames_processed"] < 1.0
    for k, v in got.items():
        assert math.isclose(report[k], v, rel_tol=1e-9, abs_tol=1e-12), k
    # A model that cannot exit early: one line naming the flag, before the evaluation (nothing written).
    tsm = tiny_model("tsm", classes=th.CLASSES, segments=th.SEGMENTS, size=th.SIZE, dtype=torch.float32)
    write_artifacts(tsm, str(tmp_path / "tsm"), {"enabled": True, "rho": 0.99, "t_min": 2, "mode": "reached"})
    checkpoints.seal(tmp_path / "tsm")
    capsys.readouterr()
    assert job.main(["--config", str(th.REPO / "jobs/configs/demo.yaml"), "--checkpoint", str(tmp_path / "tsm"),
                     "--out", str(tmp_path / "out2"), "--et-cache", str(tmp_path / "cache2"),
                     f"data.val_shards={shards}", f"data.train_shards={shards}", "data.resize=73",
                     "data.num_workers=0", "model.num_classes=3"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]  # beside INFO lines
    assert len(err) == 1 and err[0].startswith("error: --et-cache ") and "cannot exit early" in err[0], err
    assert not (tmp_path / "out2").exists() and not (tmp_path / "cache2").exists()
    # A file where a directory goes: one line naming the flag, before the evaluation.
    (tmp_path / "file").write_text("not a directory")
    for flag in ("--out", "--et-cache"):
        args = {"--out": str(tmp_path / "out3"), "--et-cache": str(tmp_path / "cache3"), flag: str(tmp_path / "file")}
        assert job.main(["--config", str(th.REPO / "jobs/configs/demo.yaml"), "--checkpoint", str(ckpt),
                         *[x for kv in args.items() for x in kv], f"data.val_shards={shards}",
                         f"data.train_shards={shards}", "data.resize=73", "data.num_workers=0",
                         "model.num_classes=3"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
        assert err == [f"error: {flag} {tmp_path / 'file'}: exists and is not a directory"], err
        assert not (tmp_path / "out3").exists() and not (tmp_path / "cache3").exists()


def test_the_evaluation_writes_the_cache_write_cache_writes(trained, tmp_path):
    """The evaluator's pass without early exit also writes the cache (``evaluate_model(..., et_cache=...)``, what the
    study and ``jobs/evaluate.py --et-cache`` use): tensor for tensor the cache of a pass of its own
    (:func:`write_cache`), and the evaluation's metrics are those it reports without writing one."""
    from sofnet.evaluation import evaluate_model

    shards, ckpt = trained
    cfg = th.eval_config(shards)
    model = load_model(str(ckpt))
    et = EarlyExit(True, 0.95, 2, "reached")
    alone = evaluate_model(model, cfg, out_dir=tmp_path / "alone", et=et, device="cpu")
    both = evaluate_model(model, cfg, out_dir=tmp_path / "both", et=et, device="cpu", et_cache=tmp_path / "merged",
                          source="ckpt")
    assert both["metrics"] == alone["metrics"] and both["metrics"]["val/et/frames_processed"] < 1.0
    own = ETBundle.load(write_cache(model, cfg, tmp_path / "own", source="ckpt"))
    merged = ETBundle.load(tmp_path / "merged")
    for name in own.cache.__dataclass_fields__:
        a, b = getattr(own.cache, name), getattr(merged.cache, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for name in ("targets", "label", "inside"):
        np.testing.assert_array_equal(getattr(own, name), getattr(merged, name))
    assert merged.ids == own.ids == sorted(own.ids) and len(own.ids) >= 4
    assert {k: v for k, v in merged.meta.items() if k != "seconds"} == {k: v for k, v in own.meta.items()
                                                                       if k != "seconds"}
    got = replay_metrics(merged, 0.95, 2, "reached")
    for k, v in got.items():
        assert math.isclose(both["metrics"][k], v, rel_tol=1e-9, abs_tol=1e-12), k
    # each video's outputs beside metrics.json, in the same order as the cache; their means are the metrics
    from sofnet.metrics import activitynet_map

    with np.load(tmp_path / "both/per_video.npz", allow_pickle=False) as f:
        a = {k: f[k] for k in f.files}
    assert list(a["ids"]) == own.ids and set(a) == {"ids", "scores", "gflops", "targets", "label", "et_scores",
                                                   "et_gflops"}
    for key, prefix in (("", "val/"), ("et_", "val/et/")):
        m = both["metrics"]
        assert activitynet_map(a[key + "scores"], a["targets"]).map == pytest.approx(m[prefix + "mAP"], abs=1e-12)
        assert a[key + "gflops"].mean() == pytest.approx(m[prefix + "gflops_per_video"], rel=1e-12)
    tsm = tiny_model("tsm", classes=th.CLASSES, segments=th.SEGMENTS, size=th.SIZE, dtype=torch.float32)
    with pytest.raises(ValueError, match="causal"):  # refused before the pass: nothing written
        evaluate_model(tsm, cfg, out_dir=tmp_path / "tsm", et=None, device="cpu", et_cache=tmp_path / "c")
    assert not (tmp_path / "tsm").exists() and not (tmp_path / "c").exists()


def test_asha_max_t_stays_above_the_reports_of_a_trial():
    """A trial stopped by Tune at its last report kills its TorchTrainer mid-shutdown (leaking its placement
    group): max_t is raised above the epochs a trial reports."""
    from sofnet.config import load_config
    from sofnet.tune.alpha_beta import _fit_asha

    base = load_config(th.REPO / "jobs/configs/demo.yaml", ["train.stage1.epochs=2", "train.stage2.epochs=3"])
    sweep = load_sweep(TUNE / "alpha_beta.yaml", ["scheduler.type=asha", "scheduler.max_t=3"])
    _fit_asha(sweep, base)
    assert sweep.scheduler.max_t == 4  # shared stage 1: only the 3 stage-2 epochs are reported by a trial
    sweep = load_sweep(TUNE / "alpha_beta.yaml", ["scheduler.type=asha", "scheduler.max_t=3", "shared_stage1=false"])
    _fit_asha(sweep, base)
    assert sweep.scheduler.max_t == 6
    sweep = load_sweep(TUNE / "alpha_beta.yaml", ["scheduler.type=asha", "scheduler.max_t=9"])
    _fit_asha(sweep, base)
    assert sweep.scheduler.max_t == 9


def test_check_trials_builds_every_point_and_both_ends_of_every_range(tmp_path):
    """Every trial the search can make is a validated training config before anything runs: points, grid values,
    both ends of a range (randint's exclusive high excluded), and the combinations where two keys meet."""
    from sofnet.config import load_config
    from sofnet.tune.sweep import check_trials, trial_combinations, trial_values

    base = load_config(th.REPO / "jobs/configs/demo.yaml")
    f = tmp_path / "s.yaml"
    f.write_text("base_config: jobs/configs/demo.yaml\nsearch:\n  algorithm: random\n  space:\n"
                 "    loss.alpha: {sampler: uniform, low: 0.8, high: 1.0}\n"
                 "    train.stage2.epochs: {sampler: randint, low: 2, high: 5}\n"
                 "    loss.beta: {sampler: choice, values: [null, 0.5]}\n")
    sweep = load_sweep(f)
    assert list(trial_values(sweep.search)) == [
        ("search.space.loss.alpha", {"loss.alpha": 0.8}), ("search.space.loss.alpha", {"loss.alpha": 1.0}),
        ("search.space.train.stage2.epochs", {"train.stage2.epochs": 2}),
        ("search.space.train.stage2.epochs", {"train.stage2.epochs": 4}),
        ("search.space.loss.beta", {"loss.beta": None}), ("search.space.loss.beta", {"loss.beta": 0.5})]
    count, combos = trial_combinations(sweep.search)
    assert count == 8 and len(list(combos)) == 8
    assert check_trials(sweep, base, str(f)) == 6 + 8
    with pytest.raises(ConfigError, match=r"s.yaml search.space.loss.alpha: loss.alpha must be in \[0, 1\]"):
        check_trials(load_sweep(f, ["search.space.loss\\.alpha.high=1.2"]), base, str(f))
    # a rule that ties two keys (model.arch and model.shift), met only in a combination
    f.write_text("base_config: jobs/configs/demo.yaml\nsearch:\n  points:\n    - {model.arch: sofnet_tsm}\n"
                 "    - {model.arch: sofnet}\n  space:\n"
                 "    model.shift: {sampler: grid, values: [causal, bidirectional]}\n")
    with pytest.raises(ConfigError, match=r"search.points\[0\] \+ search.space.model.shift='bidirectional'"):
        check_trials(load_sweep(f), base, str(f))


def test_epochs_trained_says_when_a_trial_stopped_early():
    from sofnet.config import load_config
    from sofnet.tune.alpha_beta import epochs_trained

    cfg = load_config(th.REPO / "jobs/configs/demo.yaml", ["train.stage2.epochs=6"])
    assert epochs_trained({"stage": 2, "epoch": 5}, cfg) == {"epochs_trained": 6, "epochs_planned": 6}
    assert epochs_trained({"stage": 2, "epoch": 1}, cfg) == {"epochs_trained": 2, "epochs_planned": 6}
    assert epochs_trained({"stage": 1, "epoch": 3}, cfg)["epochs_trained"] == 0  # stopped inside stage 1
    assert epochs_trained({}, cfg)["epochs_trained"] == 0  # failed before any report
