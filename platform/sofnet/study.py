"""A multi-seed study: TSN, SoF-Net and AR-Net trained for N seeds, every row from the one evaluator, mean ± std.

Usage (what ``jobs/study.py`` does)::

    from sofnet.study import load_study, run_study
    study = load_study("jobs/configs/study.yaml", ["seeds=[1,2,3]"])
    outcome = run_study(study)                # trains what is missing, evaluates, logs to MLflow
    table = outcome["table"]                  # Table A/B rows as mean ± std, the TSN + ET grid, the criteria

``methods`` picks the rows: ``tsn`` (always: every GFLOPs ratio is against the same seed's TSN), ``sofnet``,
``arnet`` (Table B's row beside them). Per seed ``s`` the base training config runs once as a two-stage job named
``<name>-seed<s>`` (stage 1 = TSN, shared by that seed's SoF-Net; stage 2 = SoF-Net from it, only if ``sofnet`` is
listed) on Ray Train + DeepSpeed, into ``<output_dir>/<name>/``; with ``arnet``, ``arnet_config`` runs as its own
three-stage job ``<name>-<arnet_name>-seed<s>`` (same seed, same validation shards, checked) and its final stage is
the AR-Net row; another ``arnet_name`` trains another AR-Net recipe beside the same base runs. Each run's best epochs
go through :func:`sofnet.train.report.evaluate_run` (with and without early exit, the config's rho and T_min) and,
for the Table C grid, through the early-exit cache of :mod:`sofnet.tune.et_cache` (a replayed point equals a full
evaluation, as its tests prove), for TSN and SoF-Net alike. A seed whose evaluation is on disk is not
retrained nor re-evaluated (resumable; a method added later trains and evaluates only that method); a seed whose
training stopped part-way resumes from its last checkpoint. Another early exit (``early_exit.*`` of the base config or
the overrides) under a finished study's name scores its runs again at that setting: no weights depend on it
(:data:`sofnet.study_recipe.EARLY_EXIT`), so nothing retrains.

``stage1_from: <study>`` compares stage-2 recipes without retraining stage 1: each seed's stage 2 starts from that
study's stage-1 best epoch of the same seed (same output folder), and the TSN rows and grid are that study's
evaluation of it (same evaluator, same videos: checked), so only the stage-2 settings differ between the two tables.

``runs_from: <study>`` trains nothing: it scores that study's trained runs (every method, every seed; the same
recipe, checked, but for the keys of scoring: ``data.val_shards``, ``early_exit.*``) on this study's validation shards
or early exit, e.g. a held-out set larger than the one the runs were trained beside; with ``stage1_from`` (the same as
the rescored study's) each seed's stage 1 is scored here too, from the run it lives in.

MLflow (:mod:`sofnet.study_mlflow`): one parent run ``study <name>`` (the table as ``study_table.md``, every number
as ``study.json``) and one child run per (method, seed) with that row's metrics and the training run's id as a tag.

Below the criteria, :mod:`sofnet.study_start` splits the criterion "early exit alone vs the gates" by where each
video's action starts (replayed from the caches; also in ``study.json`` as ``summary.by_action_start``), and each
criterion shows its 90 % interval over ``draws`` draws of the validation videos (:mod:`sofnet.study_interval`: how
much of the verdict is the videos drawn).

The jobs of every seed train side by side, as many at once as the Ray cluster's CPUs hold
(:func:`sofnet.train.ray_job.run_trainings`; ``max_concurrent`` caps it): the benchmark's two-worker jobs one after
another on 2 cores, three seeds (six jobs with AR-Net) at once on a node with 6 (12) CPUs, each with the same recipe
(per-worker batch, threads) it has alone; then every seed is evaluated here, one after another.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from sofnet.config import ConfigError, check_name, merge_config, parse_dotlist
from sofnet.study_recipe import (
    DIGESTS, SCORED_BY, check_recipe, check_source, et_text, recipe_of, scored_with, scoring_of, shard_digests,
    study_dir,
)
from sofnet.machine import fingerprint, kernel_level
from sofnet.study_layout import (  # seed_config, arnet_config: also this module's API (jobs/study.py, the tests)
    arnet_config, arnet_per_video, et_cache_dir, grid_of, points, scored_stages, seed_config, seed_eval, stage1_record,
    stage1_run, trained_run,
)
from sofnet.study_mlflow import log_study, trained_on
from sofnet.study_table import METHODS, Targets, machines_line, study_table, summarize

logger = logging.getLogger(__name__)


@dataclass
class EtGrid:
    rho: List[float] = field(default_factory=lambda: [0.9, 0.95, 0.99, 0.999])
    t_min: List[int] = field(default_factory=lambda: [1, 2, 3, 4])


@dataclass
class StudyMlflow:
    experiment: str = "sofnet-study"  # of the study's parent and child runs (the training runs keep the base's)
    tracking_uri: str = ""  # "" = the base config's store


@dataclass
class StudyConfig:
    name: str = "study"
    kind: str = "study"  # what MLflow's parent run is tagged with (sweep_kind), beside the sweeps' kinds
    base_config: str = "jobs/configs/bench.yaml"  # the two-stage training config every seed runs
    overrides: List[str] = field(default_factory=list)  # dotlist applied to the base (the recipe under study)
    methods: List[str] = field(default_factory=lambda: ["tsn", "sofnet"])  # of METHODS; tsn always
    arnet_config: str = "jobs/configs/bench_arnet.yaml"  # AR-Net's three-stage job, when methods has arnet
    arnet_overrides: List[str] = field(default_factory=list)
    arnet_name: str = "arnet"  # AR-Net's job is <name>-<arnet_name>-seed<s>; another name, another AR-Net recipe
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    stage1_from: str = ""  # another study's name (same output_dir): its seeds' stage 1 is this study's (see above)
    runs_from: str = ""  # another study's name (same output_dir): its trained runs, scored here; nothing trains
    output_dir: str = "runs/study"  # <output_dir>/<name>/: the seeds' runs, evaluations and the table
    draws: int = 200  # draws of the validation videos behind each criterion's 90 % interval (study_interval); 0: none
    max_concurrent: int = 0  # training jobs at once; 0 = as many as the Ray cluster's CPUs hold (the docstring)
    mlflow: StudyMlflow = field(default_factory=StudyMlflow)
    et_grid: EtGrid = field(default_factory=EtGrid)
    targets: Targets = field(default_factory=Targets)


def load_study(path: str | Path, dotlist: Sequence[str] = (), seed_count: int = 0) -> DictConfig:
    """Defaults -> the study YAML -> ``dotlist``, typed; the base config is loaded too, so a bad key fails here.

    ``seed_count`` (``jobs/study.py --seeds N``): the file's first N seeds, continued past its last by consecutive
    integers (``[1, 2, 3]`` and 5: ``[1, 2, 3, 4, 5]``; the demo's ``[1007]`` and 3: ``[1007, 1008, 1009]``), so that a
    longer study reuses every seed the shorter one trained.

    Raises:
        ConfigError: one line naming the file and the key.
    """
    cli = parse_dotlist(dotlist)  # its errors name the command line, not the file
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such study config") from None
    except Exception as e:  # not YAML
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    study = merge_config(merge_config(OmegaConf.structured(StudyConfig), loaded, str(path)), cli, "command line")
    if not study.seeds or len(set(study.seeds)) != len(study.seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct integers")
    if seed_count:
        if any(item.split("=", 1)[0].strip() == "seeds" for item in dotlist):
            raise ConfigError(f"--seeds {seed_count} and seeds= on the command line: give one of them")
        study.seeds = list(study.seeds)[:seed_count] + [max(study.seeds) + i + 1
                                                        for i in range(seed_count - len(study.seeds))]
    if study.draws < 0:
        raise ConfigError(f"{path}: draws must be >= 0 (0: no intervals), not {study.draws}")
    if not study.et_grid.rho or not study.et_grid.t_min:
        raise ConfigError(f"{path}: et_grid needs rho and t_min values")
    if any(not 0 < r < 1 for r in study.et_grid.rho) or any(t < 1 for t in study.et_grid.t_min):
        raise ConfigError(f"{path}: et_grid.rho must be in (0, 1) and et_grid.t_min >= 1")
    bad = [m for m in study.methods if m not in METHODS]
    if bad or "tsn" not in study.methods or len(set(study.methods)) != len(study.methods):
        raise ConfigError(f"{path}: methods must be distinct values of {list(METHODS)} and include tsn (every GFLOPs "
                          f"ratio is against the seed's TSN); got {list(study.methods)}")
    check_name(study.name, "name", str(path))
    for key in ("stage1_from", "runs_from"):
        check_name(study[key], key, str(path), optional=True)
    base = seed_config(study, study.seeds[0])  # the base config and the overrides, checked before anything runs
    if study.runs_from and study.runs_from in (study.name, study.stage1_from):
        raise ConfigError(f"{path}: runs_from={study.runs_from} must name another study than this one and stage1_from")
    if study.stage1_from and not study.runs_from:  # rescored: stage 1 is scored here, however the source scored it
        _check_stage1_source(study, path, base)
    if "arnet" in study.methods:
        check_name(study.arnet_name, "arnet_name", str(path))
        arnet = arnet_config(study, study.seeds[0])
        if arnet.model.arch != "arnet":
            raise ConfigError(f"{study.arnet_config}: arnet_config must train model.arch=arnet, not {arnet.model.arch}")
        for key in ("val_shards", "dataset"):
            if arnet.data[key] != base.data[key]:
                raise ConfigError(f"{study.arnet_config}: data.{key}={arnet.data[key]} differs from the base config's "
                                  f"{base.data[key]}: every row must be scored on the same videos")
        if arnet.model.num_classes != base.model.num_classes:
            raise ConfigError(f"{study.arnet_config}: model.num_classes={arnet.model.num_classes} differs from the "
                              f"base config's {base.model.num_classes}")
    return study


def _check_stage1_source(study: Any, path: str | Path, base: Any) -> None:
    """``stage1_from``: SoF-Net is studied, the source is another study that evaluated every seed's stage 1 on the
    same validation shards, with the same early-exit settings and grid."""
    if "sofnet" not in study.methods or study.stage1_from == study.name:
        raise ConfigError(f"{path}: stage1_from={study.stage1_from} needs methods with sofnet and another study's name")
    ours = recipe_of(base)
    grid = grid_of(study)
    for seed in study.seeds:
        source = stage1_record(study, seed)
        record = json.loads(source.read_text()) if source.is_file() else {}
        if "stage1" not in record.get("reports", {}):
            raise ConfigError(f"{path}: stage1_from={study.stage1_from}: {source} has no evaluated stage 1 of seed "
                              f"{seed}; run that study for this seed first")
        recipe = Path(study.output_dir) / study.stage1_from / f"{study.stage1_from}-seed{seed}.recipe.yaml"
        theirs = dict(OmegaConf.to_container(OmegaConf.load(recipe))) if recipe.is_file() else {}
        theirs.update(scored_with(record, source.parent, ["stage1"]) or {})  # its early exit: last scored with
        differ = [f"{k}={theirs.get(k)}, not {ours.get(k)}" for k in SCORED_BY if theirs.get(k) != ours.get(k)]
        if points(record["grids"].get("stage1", [])) != grid:
            differ.append("another et_grid")
        if differ:
            raise ConfigError(f"{path}: stage1_from={study.stage1_from}: its seed {seed} was scored with "
                              f"{'; '.join(differ)}: every row must be scored the same way")


def _scored_before(study: Any, seed: int, record: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The early-exit settings the seed's rows were scored with (:func:`sofnet.study_recipe.scored_with`), read from
    the stages this study evaluates itself (not a stage 1 copied from ``stage1_from``'s record)."""
    copied = study.stage1_from and not study.runs_from  # stage 1's rows are the source study's
    own = [s for s, _ in scored_stages(study, seed) if not (s == "stage1" and copied)]
    return scored_with(record, seed_eval(study, seed).parent, own)


def _missing(study: Any, seed: int, record: Optional[Mapping[str, Any]]) -> List[str]:
    """What the seed still lacks: the evaluation of a job, ``base`` (TSN, SoF-Net) or ``arnet``; ``rescore``, the
    base job's evaluation again when the rows were scored with another early exit than the config's now; ``grids``,
    the early-exit grids replayed again from the caches when ``et_grid`` changed; TSN's ``action_frames`` diagnostic
    (scored from stage 1's early-exit cache: records from before it get it on resume)."""
    have = (record or {}).get("reports", {})
    stages = [stage for stage, _ in scored_stages(study, seed)]
    out = [] if all(s in have for s in stages) else ["base"]
    if not out and _scored_before(study, seed, record) != scoring_of(seed_config(study, seed)):
        out.append("rescore")
    grids = (record or {}).get("grids", {})
    if not out and any(s in grids and points(grids[s]) != grid_of(study) for s in stages):
        out.append("grids")
    if "action_frames" not in have and (out or "stage1" in grids):
        out.append("action_frames")
    if "arnet" not in study.methods:
        return out
    # the record's AR-Net row is another AR-Net job's (an earlier arnet_name): this one's is still to be evaluated;
    # one evaluated before its per-video outputs were kept is scored again (one stage) for Table B's intervals
    ours = str(trained_run(study, arnet_config(study, seed)))
    stale = "arnet" not in have or record.get("arnet_run") != ours or "stage" not in have["arnet"]
    return out + (["arnet"] if stale or not arnet_per_video(study, seed, have["arnet"]["stage"]).is_file() else [])


def evaluate_seed(study: Any, seed: int, record: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Evaluate what ``record`` lacks of one seed (the base run's stages with/without ET and their ET grids; the
    AR-Net run's final stage); written to seed.json."""
    from sofnet.train.report import evaluate_run
    from sofnet.train.worker import enabled_stages
    from sofnet.tune.et_cache import ETBundle, action_frames_metrics, replay_metrics

    record = json.loads(json.dumps(record)) if record else {"seed": seed, "reports": {}, "grids": {}}
    out = seed_eval(study, seed).parent
    missing = _missing(study, seed, record)
    if "base" in missing or "rescore" in missing:
        cfg = seed_config(study, seed)
        record["scored_with"] = scoring_of(cfg)
        record["run"] = str(trained_run(study, cfg))
        if study.stage1_from:
            record["stage1_run"] = str(stage1_run(study, seed))
        if study.stage1_from and not study.runs_from:  # the source study's evaluation of the stage 1 it started from
            source = json.loads(stage1_record(study, seed).read_text())
            record["reports"]["stage1"] = source["reports"]["stage1"]
            record["grids"]["stage1"] = source["grids"]["stage1"]
        for stage, run in scored_stages(study, seed):
            (_, r), = evaluate_run(cfg, run, out, stages=[stage], et_cache=True)  # the cache from the same pass
            record["reports"][stage] = {"metrics": r["metrics"], "runs": r["runs"], "stage": stage}
    if {"base", "rescore", "grids"} & set(missing):  # a changed et_grid is replayed from the caches, nothing re-run
        for stage, _ in scored_stages(study, seed):
            bundle = ETBundle.load(out / stage / "et_cache")
            record["grids"][stage] = [{"rho": rho, "t_min": t, **replay_metrics(bundle, rho, t)}
                                      for rho, t in grid_of(study)]
    if "action_frames" in missing and "stage1" in record["grids"]:  # TSN's cache: a causal stage 1 was cached
        shared = study.stage1_from and not study.runs_from  # stage 1 scored by its own study, not here
        source = shared and json.loads(stage1_record(study, seed).read_text())["reports"]
        if source and "action_frames" in source:
            record["reports"]["action_frames"] = source["action_frames"]
        else:
            tsn = ETBundle.load(et_cache_dir(study, seed, "stage1"))
            record["reports"]["action_frames"] = {"metrics": action_frames_metrics(tsn),
                                                  "runs": record["reports"]["stage1"]["runs"], "stage": "stage1"}
    if "arnet" in missing:
        acfg = arnet_config(study, seed)
        final = enabled_stages(acfg)[-1]
        (_, r), = evaluate_run(acfg, trained_run(study, acfg), out / study.arnet_name, stages=[final])
        record["reports"]["arnet"] = {"metrics": r["metrics"], "runs": r["runs"], "stage": final}
        record["arnet_run"] = str(trained_run(study, acfg))
    machines = record.setdefault("machines", {})
    machines["trained"] = trained_on(seed_config(study, seed), record)
    if {"base", "rescore", "arnet"} & set(missing):  # scored here and now (a grid is replayed from what was scored)
        machines["scored"] = sorted(set(machines.get("scored", [])) | {kernel_level(fingerprint())})
    tmp = seed_eval(study, seed).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(seed_eval(study, seed))
    return record


def _replayed_sections(study: Any, summary: Dict[str, Any], et: Any) -> None:
    """What is replayed from every seed's caches of both stages into ``summary``: the criterion of early exit alone
    vs the gates per action-start bucket (``by_action_start``, :mod:`sofnet.study_start`; ``[]`` where a cache lacks
    the annotations), each criterion's interval over draws of the videos (:mod:`sofnet.study_interval`) and, with
    AR-Net, Table B's comparisons (``arnet_comparisons``, from its evaluation's per-video outputs). None without
    SoF-Net or where an evaluation folder was removed by hand (the rows stand without them)."""
    from sofnet.study_interval import bucket_intervals, criterion_intervals, seed_outputs
    from sofnet.study_start import ALL, by_action_start, start_summary
    from sofnet.study_table import EARLY_EXIT_ALONE
    from sofnet.train.worker import enabled_stages
    from sofnet.tune.et_cache import ETBundle

    summary["by_action_start"] = []
    if "sofnet" not in study.methods:
        return
    try:
        caches = [(ETBundle.load(et_cache_dir(study, s, "stage1")), ETBundle.load(et_cache_dir(study, s, "stage2")))
                  for s in study.seeds]
    except FileNotFoundError:
        return
    per_seed = [by_action_start(tsn, sof, grid_of(study), et.rho, et.t_min, et.mode) for tsn, sof in caches]
    summary["by_action_start"] = start_summary(per_seed, study.targets.map_drop)
    outputs = [seed_outputs(tsn, sof, grid_of(study), et.rho, et.t_min, et.mode) for tsn, sof in caches]
    intervals = criterion_intervals(outputs, study.targets, study.draws)
    for c in summary["criteria"]:
        c.update(intervals.get(c["name"], {}))
    by_bucket = bucket_intervals(outputs, study.targets, study.draws)
    for row in summary["by_action_start"]:  # "all videos" is the table's own criterion
        row.update(by_bucket.get(row["bucket"], intervals.get(EARLY_EXIT_ALONE, {}) if row["bucket"] == ALL else {}))
    if "arnet" in study.methods:  # Table B: AR-Net per video from its evaluation, on the same videos as the caches
        from sofnet.study_interval import arnet_comparisons, arnet_scored

        for s, o in zip(study.seeds, outputs):
            if o is not None:
                stage = enabled_stages(arnet_config(study, s))[-1]
                o["arnet"] = arnet_scored(arnet_per_video(study, s, stage), o["ids"])
        summary["arnet_comparisons"] = arnet_comparisons(outputs, study.draws)


def run_study(study: Any, *, train: Optional[Any] = None) -> Dict[str, Any]:
    """Train what is missing, evaluate what is missing, summarise, log to MLflow; returns the outcome.

    Args:
        study: From :func:`load_study`.
        train: ``train(cfgs)`` trains the unfinished jobs of every seed and returns each one's error or ``None``
            (default: :func:`sofnet.train.ray_job.run_trainings`, Ray Train + DeepSpeed, as many jobs at once as
            the cluster holds, at most ``max_concurrent``).
    """
    from sofnet import checkpoint
    from sofnet.tune.alpha_beta import finished_training

    if train is None:
        from sofnet.train.ray_job import run_trainings

        def train(cfgs: List[Any]) -> List[Optional[str]]:
            return run_trainings(cfgs, max_concurrent=study.max_concurrent)
    records: Dict[int, Any] = {}
    started = time.time()
    study_dir(study).mkdir(parents=True, exist_ok=True)
    for seed in study.seeds:  # every seed's runs, before anything trains
        jobs = [seed_config(study, seed)] + ([arnet_config(study, seed)] if "arnet" in study.methods else [])
        for cfg in jobs:
            if study.runs_from:  # first: a refused source leaves no recipe of this study behind
                check_source(study, cfg, trained_run(study, cfg))
            check_recipe(study, cfg)
        if study.runs_from:  # rescoring: every stage's best epoch is there, stage 1's too
            bests = (run / checkpoint.BEST / stage for stage, run in scored_stages(study, seed))
            absent = [best for best in bests if not best.is_dir()]
            if absent:
                raise ConfigError(f"{study_dir(study)}: runs_from={study.runs_from}: no {absent[0]} to score")
    to_train: List[Any] = []  # every seed's unfinished jobs, trained side by side where the cluster has room
    for seed in study.seeds:
        done = seed_eval(study, seed)
        records[seed] = json.loads(done.read_text()) if done.is_file() else None
        missing = _missing(study, seed, records[seed])
        if not missing:
            logger.info("seed %d: evaluated before (%s), not %s", seed, done,
                        "scored again" if study.runs_from else "retrained")
            continue
        for job in (j for j in missing if j in ("base", "arnet")):  # the jobs that may need training
            cfg = seed_config(study, seed) if job == "base" else arnet_config(study, seed)
            if finished_training(trained_run(study, cfg), cfg) is None:  # with runs_from: finished (checked)
                logger.info("seed %d: training %s", seed, trained_run(study, cfg))
                to_train.append(cfg)
    failed = [f"{cfg.name}: {error}" for cfg, error in zip(to_train, train(to_train) if to_train else []) if error]
    if failed:
        raise RuntimeError(f"training failed ({len(failed)} of {len(to_train)}; a rerun resumes them): "
                           + "; ".join(failed))
    for seed, record in list(records.items()):
        missing = _missing(study, seed, record)
        if not missing:
            if "machines" not in record:  # evaluated before the record kept them: what trained it is in MLflow
                records[seed] = {**record, "machines": {"trained": trained_on(seed_config(study, seed), record)}}
            continue
        if "rescore" in missing:
            now, before = scoring_of(seed_config(study, seed)), _scored_before(study, seed, record) or {}
            logger.info("seed %d: scoring its trained runs again (nothing retrained): early exit %s, not %s", seed,
                        et_text(now), et_text(before))
        logger.info("seed %d: evaluating the best epochs (%s)", seed, ", ".join(missing))
        records[seed] = evaluate_seed(study, seed, record)
    records = [records[seed] for seed in study.seeds]
    summary = summarize(records, study.targets, study.methods)
    cfg0 = seed_config(study, study.seeds[0])
    arnet = (f", AR-Net ({study.arnet_name}) {study.arnet_config} {' '.join(study.arnet_overrides)}"
             if "arnet" in study.methods else "")
    shared = f", stage 1 from study {study.stage1_from}" if study.stage1_from else ""
    shared += f", the trained runs of study {study.runs_from} (nothing trained here)" if study.runs_from else ""
    videos = int(records[0]["reports"]["stage1"]["metrics"]["val/videos"])
    seeds = f"{len(records)} seed{'s' if len(records) > 1 else ''} {list(study.seeds)}"
    digest = shard_digests(cfg0)[DIGESTS[1]][:12]  # every run's, checked by check_recipe
    header = (f"study {study.name}: {seeds}, base {study.base_config} {' '.join(study.overrides)}{shared}{arnet}; "
              f"{videos} validation videos of {cfg0.data.val_shards}{f' (digest {digest})' if digest else ''}; "
              f"ET in rows: rho={cfg0.early_exit.rho} t_min={cfg0.early_exit.t_min}; {machines_line(records)}")
    from sofnet.study_start import start_table  # torch: not before a bad study file is refused (jobs/study.py)

    _replayed_sections(study, summary, cfg0.early_exit)
    start = start_table(summary["by_action_start"], study.targets.map_drop, study.targets.gates_over_et,
                        cfg0.early_exit.rho, cfg0.early_exit.t_min)
    table = study_table(summary, header) + (f"\n\n{start}" if start else "")
    (study_dir(study) / "study_table.md").write_text(table + "\n")
    (study_dir(study) / "study.json").write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    run_id = log_study(study, cfg0, summary, records, table)
    return {"table": table, "summary": summary, "run_id": run_id, "seconds": time.time() - started}
