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
three-stage job ``<name>-arnet-seed<s>`` (same seed, same validation shards, checked) and its final stage is the
AR-Net row. Each run's
best epochs go through :func:`sofnet.train.report.evaluate_run` (with and without early exit, the config's rho and
T_min) and, for the Table C grid, through the early-exit cache of :mod:`sofnet.tune.et_cache` (a replayed point
equals a full evaluation, as its tests prove), for TSN and SoF-Net alike. A seed whose evaluation is on disk is not
retrained nor re-evaluated (resumable; a method added later trains and evaluates only that method); a seed whose
training stopped part-way resumes from its last checkpoint.

MLflow: one parent run ``study <name>`` (the table as ``study_table.md``, every number as ``study.json``) and one
child run per (method, seed) with that row's metrics and the training run's id as a tag. Seeds train one after
another: a job's two workers take both cores of a 2-core machine (on a bigger cluster, raise ``scaling.num_workers``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sofnet.config import Config, ConfigError, load_config

logger = logging.getLogger(__name__)

METHODS = ("tsn", "sofnet", "arnet")  # what a study compares (``methods``)
# The rows of Table A/B: (row, method, report, metric prefix); a report is a stage of the base job, or "arnet" (the
# final stage of the seed's AR-Net job).
ROWS = (("TSN", "tsn", "stage1", "val/"), ("TSN + ET", "tsn", "stage1", "val/et/"),
        ("SoF-Net", "sofnet", "stage2", "val/"), ("SoF-Net + ET", "sofnet", "stage2", "val/et/"),
        ("AR-Net", "arnet", "arnet", "val/"))
COLUMNS = ("mAP", "top1", "top5", "gflops_per_video", "gflops_ratio", "frame_usage", "stop_rate/background/block2",
           "stop_rate/action/block2")


@dataclass
class EtGrid:
    rho: List[float] = field(default_factory=lambda: [0.9, 0.95, 0.99, 0.999])
    t_min: List[int] = field(default_factory=lambda: [1, 2, 3, 4])


@dataclass
class Targets:
    """What "the recipe holds" means (issue "results that hold"); checked on the means over seeds."""
    map_drop: float = 1.0  # SoF-Net's mAP at least TSN's minus this many points
    ratio_no_et: float = 0.70  # SoF-Net without early exit: at most this share of TSN's GFLOPs
    ratio_et: float = 0.50  # ... with early exit
    gates_over_et: float = 1.3  # the cheapest TSN + ET grid point within map_drop of TSN: >= this x SoF-Net + ET
    background_over_action: float = 3.0  # share of background frames stopped by layer2 / share of action frames
    std_map: float = 2.0  # seed std of mAP, points
    std_ratio: float = 5.0  # seed std of the GFLOPs ratio, points


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
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    output_dir: str = "runs/study"  # <output_dir>/<name>/: the seeds' runs, evaluations and the table
    mlflow: StudyMlflow = field(default_factory=StudyMlflow)
    et_grid: EtGrid = field(default_factory=EtGrid)
    targets: Targets = field(default_factory=Targets)


def load_study(path: str | Path, dotlist: Sequence[str] = ()) -> DictConfig:
    """Defaults -> the study YAML -> ``dotlist``, typed; the base config is loaded too, so a bad key fails here.

    Raises:
        ConfigError: one line naming the file and the key.
    """
    try:
        study = OmegaConf.merge(OmegaConf.structured(StudyConfig), OmegaConf.load(path),
                                OmegaConf.from_dotlist(list(dotlist)))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such study config") from None
    except Exception as e:  # omegaconf's errors: unknown key, wrong type
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    if not study.seeds or len(set(study.seeds)) != len(study.seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct integers")
    if not study.et_grid.rho or not study.et_grid.t_min:
        raise ConfigError(f"{path}: et_grid needs rho and t_min values")
    if any(not 0 < r < 1 for r in study.et_grid.rho) or any(t < 1 for t in study.et_grid.t_min):
        raise ConfigError(f"{path}: et_grid.rho must be in (0, 1) and et_grid.t_min >= 1")
    bad = [m for m in study.methods if m not in METHODS]
    if bad or "tsn" not in study.methods or len(set(study.methods)) != len(study.methods):
        raise ConfigError(f"{path}: methods must be distinct values of {list(METHODS)} and include tsn (every GFLOPs "
                          f"ratio is against the seed's TSN); got {list(study.methods)}")
    base = seed_config(study, study.seeds[0])  # the base config and the overrides, checked before anything runs
    if "arnet" in study.methods:
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


def seed_config(study: Any, seed: int) -> DictConfig:
    """The training config of one seed: the base, the study's overrides, its name, seed and output folder."""
    only_tsn = [] if "sofnet" in study.methods else ["train.stage2.enabled=false"]
    return load_config(study.base_config, list(study.overrides) + only_tsn + [
        f"name={study.name}-seed{seed}", f"train.seed={seed}", f"train.output_dir={study_dir(study)}"])


def arnet_config(study: Any, seed: int) -> DictConfig:
    """The AR-Net job of one seed: ``arnet_config``, ``arnet_overrides``, its name, seed and output folder."""
    return load_config(study.arnet_config, list(study.arnet_overrides) + [
        f"name={study.name}-arnet-seed{seed}", f"train.seed={seed}", f"train.output_dir={study_dir(study)}"])


def study_dir(study: Any) -> Path:
    return Path(study.output_dir) / study.name


def _seed_eval(study: Any, seed: int) -> Path:
    return study_dir(study) / f"{study.name}-seed{seed}-eval" / "seed.json"


# Settings that do not change what a run computes (where it logs, how often, how often it may fail; stage 2 on or
# off leaves stage 1 as it was: a study that adds sofnet to its methods trains stage 2 on the finished stage 1).
_NOT_RECIPE = ("mlflow.", "train.output_dir", "train.log_every", "train.max_failures", "name", "train.stage2.enabled")


def _flat(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def check_recipe(study: Any, cfg: Any) -> None:
    """A study's runs are reused by name (resume), so a run must have been trained with the settings the study now
    asks for: the first time a job is seen its resolved config is kept as ``<study dir>/<run name>.recipe.yaml``;
    a later call with other settings (a changed ``overrides`` or base file, under the same study name) is refused.

    Raises:
        ConfigError: one line naming the run and the first differing keys.
    """
    path = study_dir(study) / f"{cfg.name}.recipe.yaml"
    now = {k: v for k, v in _flat(OmegaConf.to_container(cfg, resolve=True)).items() if not k.startswith(_NOT_RECIPE)}
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(now)))
        return
    before = dict(OmegaConf.to_container(OmegaConf.load(path)))
    # A setting added since the run was trained is absent from its recipe file; new settings default to what the
    # code did before them, so an absent key counts as its default (a study from before the key stays reusable).
    defaults = _flat(OmegaConf.to_container(OmegaConf.structured(Config), resolve=True))
    keys = sorted(set(before) | set(now))
    diff = [f"{k}: {before.get(k, defaults.get(k))} -> {now.get(k)}" for k in keys
            if before.get(k, defaults.get(k)) != now.get(k)]
    if diff:
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise ConfigError(f"{path}: {cfg.name} was trained with other settings ({'; '.join(diff[:3])}{more}); its "
                          "results would be reused as if they were this recipe's: give the study another name")


def _missing(study: Any, seed: int, record: Optional[Mapping[str, Any]]) -> List[str]:
    """Which of the seed's jobs still need an evaluation: ``base`` (TSN, SoF-Net), ``arnet``."""
    from sofnet.train.worker import enabled_stages

    have = (record or {}).get("reports", {})
    out = [] if all(s in have for s in enabled_stages(seed_config(study, seed))) else ["base"]
    return out + (["arnet"] if "arnet" in study.methods and "arnet" not in have else [])


def evaluate_seed(study: Any, seed: int, record: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Evaluate what ``record`` lacks of one seed (the base run's stages with/without ET and their ET grids; the
    AR-Net run's final stage); written to seed.json."""
    from sofnet import checkpoint
    from sofnet.train.report import evaluate_run
    from sofnet.train.worker import enabled_stages, run_dir
    from sofnet.tune.et_cache import ETBundle, replay_metrics, write_cache

    record = json.loads(json.dumps(record)) if record else {"seed": seed, "reports": {}, "grids": {}}
    out = _seed_eval(study, seed).parent
    missing = _missing(study, seed, record)
    if "base" in missing:
        cfg = seed_config(study, seed)
        run, stages = run_dir(cfg), enabled_stages(cfg)
        record["run"] = str(run)
        for _, r in evaluate_run(cfg, run, out, stages=stages):
            record["reports"][r["stage"]] = {"metrics": r["metrics"], "runs": r["runs"], "stage": r["stage"]}
        for stage in stages:
            model, _ = checkpoint.load_network(run / checkpoint.BEST / stage)
            bundle = ETBundle.load(write_cache(model, cfg, out / stage / "et_cache", source=str(run)))
            record["grids"][stage] = [{"rho": float(rho), "t_min": int(t), **replay_metrics(bundle, float(rho), int(t))}
                                      for rho in study.et_grid.rho for t in study.et_grid.t_min]
    if "arnet" in missing:
        acfg = arnet_config(study, seed)
        final = enabled_stages(acfg)[-1]
        (_, r), = evaluate_run(acfg, run_dir(acfg), out / "arnet", stages=[final])
        record["reports"]["arnet"] = {"metrics": r["metrics"], "runs": r["runs"], "stage": final}
        record["arnet_run"] = str(run_dir(acfg))
    tmp = _seed_eval(study, seed).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(_seed_eval(study, seed))
    return record


def row_metrics(record: Mapping[str, Any], methods: Sequence[str] = METHODS) -> Dict[str, Dict[str, float]]:
    """One seed's Table A/B rows of ``methods``: ``{row: {column: value}}`` (GFLOPs ratio against the seed's TSN)."""
    base = record["reports"]["stage1"]["metrics"]["val/gflops_per_video"]
    rows = {}
    for name, method, report, prefix in ROWS:
        m = record["reports"].get(report, {}).get("metrics", {})
        if method not in methods or prefix + "mAP" not in m:
            continue
        row = {c: float(m[prefix + c]) for c in COLUMNS if prefix + c in m}
        row["gflops_ratio"] = row["gflops_per_video"] / base
        rows[name] = row
    return rows


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(records: Sequence[Mapping[str, Any]], targets: Any,
              methods: Sequence[str] = ("tsn", "sofnet")) -> Dict[str, Any]:
    """Mean ± std over seeds of every row and grid point of ``methods``, and the criteria checked on the means."""
    per_seed = [row_metrics(r, methods) for r in records]
    rows = {}
    for name, _, _, _ in ROWS:
        if all(name in s for s in per_seed):
            rows[name] = {c: _mean_std([s[name][c] for s in per_seed]) for c in per_seed[0][name]}
    grids = {}
    base = [r["reports"]["stage1"]["metrics"]["val/gflops_per_video"] for r in records]  # each seed's own TSN
    for stage, method, row in (("stage1", "TSN + ET", "tsn"), ("stage2", "SoF-Net + ET", "sofnet")):
        if row not in methods or not all(stage in r["grids"] for r in records):
            continue
        points = []
        for i, point in enumerate(records[0]["grids"][stage]):
            points.append({"rho": point["rho"], "t_min": point["t_min"],
                           "mAP": _mean_std([r["grids"][stage][i]["val/et/mAP"] for r in records]),
                           "gflops_ratio": _mean_std([r["grids"][stage][i]["val/et/gflops_per_video"] / b
                                                      for r, b in zip(records, base)])})
        grids[method] = points
    return {"seeds": [r["seed"] for r in records], "rows": rows, "grids": grids,
            "criteria": criteria(rows, grids["TSN + ET"], targets) if "SoF-Net" in rows else []}


def criteria(rows: Mapping[str, Any], tsn_grid: Sequence[Mapping[str, Any]], t: Any) -> List[Dict[str, Any]]:
    """The recipe's targets, each ``{name, value, target, ok}``, on the means over seeds (mAP in points)."""
    tsn, sof, sof_et = rows["TSN"], rows["SoF-Net"], rows.get("SoF-Net + ET")
    out = []

    def check(name: str, value: float, target: str, ok: bool) -> None:
        out.append({"name": name, "value": value, "target": target, "ok": bool(ok)})

    floor = 100 * tsn["mAP"][0] - t.map_drop
    for label, row, limit in (("SoF-Net", sof, t.ratio_no_et), ("SoF-Net + ET", sof_et, t.ratio_et)):
        if row is None:
            continue
        check(f"{label}: mAP - TSN mAP (points)", 100 * (row["mAP"][0] - tsn["mAP"][0]), f">= -{t.map_drop:g}",
              100 * row["mAP"][0] >= floor)
        check(f"{label}: GFLOPs vs TSN (%)", 100 * row["gflops_ratio"][0], f"<= {100 * limit:g}",
              row["gflops_ratio"][0] <= limit)
    if sof_et is not None:
        near = [p for p in tsn_grid if 100 * p["mAP"][0] >= floor]
        cheapest = min((p["gflops_ratio"][0] for p in near), default=float("nan"))
        ratio = cheapest / sof_et["gflops_ratio"][0] if near else float("nan")
        check("cheapest TSN + ET within the mAP floor / SoF-Net + ET (GFLOPs)", ratio, f">= {t.gates_over_et:g}",
              bool(near) and ratio >= t.gates_over_et)
    bg, act = sof.get("stop_rate/background/block2"), sof.get("stop_rate/action/block2")
    if bg is not None and act is not None:
        ratio = bg[0] / act[0] if act[0] > 0 else float("inf")
        check("SoF-Net: background / action frames stopped by layer2", ratio, f">= {t.background_over_action:g}",
              ratio >= t.background_over_action)
    for label, row in (("SoF-Net", sof), ("SoF-Net + ET", sof_et)):
        if row is not None:
            check(f"{label}: seed std of mAP (points)", 100 * row["mAP"][1], f"<= {t.std_map:g}",
                  100 * row["mAP"][1] <= t.std_map)
            check(f"{label}: seed std of GFLOPs vs TSN (points)", 100 * row["gflops_ratio"][1], f"<= {t.std_ratio:g}",
                  100 * row["gflops_ratio"][1] <= t.std_ratio)
    return out


def _pm(value: tuple[float, float], scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * value[0]:.{digits}f} ± {scale * value[1]:.{digits}f}"


def study_table(summary: Mapping[str, Any], header: str = "") -> str:
    """Markdown: Table A/B rows (mean ± std), the ET grids of TSN and SoF-Net (Table C), the criteria."""
    lines = [header, ""] if header else []
    lines += ["| method | mAP (%) | top-1 (%) | top-5 (%) | GFLOPs/V | GFLOPs vs TSN (%) | frame usage (%) | "
              "stopped by layer2: background / action (%) |", "|---|---|---|---|---|---|---|---|"]
    for method, r in summary["rows"].items():
        stops = "-"
        if "stop_rate/background/block2" in r:
            stops = f"{_pm(r['stop_rate/background/block2'])} / {_pm(r['stop_rate/action/block2'])}"
        top5 = _pm(r["top5"]) if "top5" in r else "-"
        lines.append(f"| {method} | {_pm(r['mAP'])} | {_pm(r['top1'])} | {top5} | {_pm(r['gflops_per_video'], 1, 3)} | "
                     f"{_pm(r['gflops_ratio'])} | {_pm(r['frame_usage'])} | {stops} |")
    for method, points in summary["grids"].items():
        lines += ["", f"{method} over the early-exit grid (mAP % / GFLOPs vs TSN %, mean ± std):", "",
                  "| rho \\ T_min | " + " | ".join(str(t) for t in sorted({p['t_min'] for p in points})) + " |",
                  "|---|" + "---|" * len({p["t_min"] for p in points})]
        for rho in sorted({p["rho"] for p in points}):
            cells = [f"{_pm(p['mAP'])} / {_pm(p['gflops_ratio'], digits=0)}" for p in points if p["rho"] == rho]
            lines.append(f"| {rho:g} | " + " | ".join(cells) + " |")
    if summary["criteria"]:
        lines += ["", "| criterion (on the means) | measured | target | |", "|---|---|---|---|"]
    for c in summary["criteria"]:
        lines.append(f"| {c['name']} | {c['value']:.2f} | {c['target']} | {'met' if c['ok'] else 'MISSED'} |")
    return "\n".join(lines)


def run_study(study: Any, *, train: Optional[Any] = None) -> Dict[str, Any]:
    """Train what is missing, evaluate what is missing, summarise, log to MLflow; returns the outcome.

    Args:
        study: From :func:`load_study`.
        train: ``train(cfg)`` of one seed's job (default: :func:`sofnet.train.ray_job.run_training`, Ray Train +
            DeepSpeed); raises or returns a result with ``error``.
    """
    from sofnet.train.worker import run_dir
    from sofnet.tune.alpha_beta import finished_training

    if train is None:
        from sofnet.train.ray_job import run_training as train
    records, started = [], time.time()
    study_dir(study).mkdir(parents=True, exist_ok=True)
    for seed in study.seeds:  # every seed's runs, before anything trains
        check_recipe(study, seed_config(study, seed))
        if "arnet" in study.methods:
            check_recipe(study, arnet_config(study, seed))
    for seed in study.seeds:
        done = _seed_eval(study, seed)
        record = json.loads(done.read_text()) if done.is_file() else None
        missing = _missing(study, seed, record)
        if not missing:
            logger.info("seed %d: evaluated before (%s), not retrained", seed, done)
            records.append(record)
            continue
        for job in missing:
            cfg = seed_config(study, seed) if job == "base" else arnet_config(study, seed)
            if finished_training(run_dir(cfg), cfg) is None:
                logger.info("seed %d: training %s (%d of %d)", seed, run_dir(cfg), study.seeds.index(seed) + 1,
                            len(study.seeds))
                result = train(cfg)
                if getattr(result, "error", None) is not None:
                    raise RuntimeError(f"seed {seed}: training {cfg.name} failed: {result.error}")
        logger.info("seed %d: evaluating the best epochs (%s)", seed, ", ".join(missing))
        records.append(evaluate_seed(study, seed, record))
    summary = summarize(records, study.targets, study.methods)
    cfg0 = seed_config(study, study.seeds[0])
    arnet = f", AR-Net {study.arnet_config} {' '.join(study.arnet_overrides)}" if "arnet" in study.methods else ""
    header = (f"study {study.name}: {len(records)} seeds {list(study.seeds)}, base {study.base_config} "
              f"{' '.join(study.overrides)}{arnet}; {int(records[0]['reports']['stage1']['metrics']['val/videos'])} "
              f"validation videos of {cfg0.data.val_shards}; ET in rows: rho={cfg0.early_exit.rho} "
              f"t_min={cfg0.early_exit.t_min}")
    table = study_table(summary, header)
    (study_dir(study) / "study_table.md").write_text(table + "\n")
    (study_dir(study) / "study.json").write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    run_id = log_study(study, cfg0, summary, records, table)
    return {"table": table, "summary": summary, "run_id": run_id, "seconds": time.time() - started}


def log_study(study: Any, cfg: Any, summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
              table: str) -> str:
    """The parent run (reopened on a resumed study) and one child per (method, seed); returns the parent's id."""
    from sofnet.train.tracking import resolve_tracking_uri
    from sofnet.tune.report import SweepRun, log_metrics

    uri = resolve_tracking_uri(study.mlflow.tracking_uri or cfg.mlflow.tracking_uri)
    parent = SweepRun.open(study, uri, study_dir(study))
    report_of = {name: report for name, _, report, _ in ROWS}
    for record in records:
        for method, row in row_metrics(record, study.methods).items():
            report = record["reports"][report_of[method]]
            stage = report.get("stage", report_of[method])
            run = record.get("arnet_run", "") if report_of[method] == "arnet" else record["run"]
            child = parent.child(f"{method}|seed{record['seed']}", f"{method} seed {record['seed']}",
                                 {"method": method, "seed": record["seed"], "run_dir": run})
            parent.client.set_tag(child, "training_run", report["runs"].get(stage, ""))
            log_metrics(parent.client, child, {f"study/{k}": v for k, v in row.items()})
            parent.client.set_terminated(child)
    means = {f"study/{method}/{c}": v[0] for method, r in summary["rows"].items() for c, v in r.items()}
    log_metrics(parent.client, parent.run_id, {k.replace(" + ", "_").replace(" ", "_"): v for k, v in means.items()})
    parent.finish({"study_table.md": table})
    parent.client.log_dict(parent.run_id, {"summary": summary}, "study.json")
    return parent.run_id
