"""Where a study's seeds live: each seed's training configs, run directories, evaluation records and caches.

Usage (what :mod:`sofnet.study` does per seed)::

    from sofnet.study_layout import seed_config, seed_eval, trained_run
    cfg = seed_config(study, 1)     # the base job of seed 1, <name>-seed1 in <output_dir>/<name>/, with the overrides
    trained_run(study, cfg)         # its run directory; with runs_from, the other study's job of the same seed
    seed_eval(study, 1)             # <output_dir>/<name>/<name>-seed1-eval/seed.json, the seed's rows

Paths and configs only: nothing here trains, evaluates or reads a record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Sequence

from omegaconf import DictConfig

from sofnet.config import load_config
from sofnet.study_recipe import study_dir


def seed_config(study: Any, seed: int) -> DictConfig:
    """The training config of one seed: the base, the study's overrides, its name, seed and output folder."""
    only_tsn = [] if "sofnet" in study.methods else ["train.stage2.enabled=false"]
    shared = []
    if study.stage1_from:
        shared = ["train.stage1.enabled=false", f"train.stage2.init_from={stage1_run(study, seed) / 'best/stage1'}"]
    return load_config(study.base_config, list(study.overrides) + only_tsn + shared + [
        f"name={study.name}-seed{seed}", f"train.seed={seed}", f"train.output_dir={study_dir(study)}"])


def stage1_run(study: Any, seed: int) -> Path:
    """The run directory of ``stage1_from``'s seed ``seed``."""
    return Path(study.output_dir) / study.stage1_from / f"{study.stage1_from}-seed{seed}"


def stage1_record(study: Any, seed: int) -> Path:
    """The evaluation record (``seed.json``) of ``stage1_from``'s seed ``seed``."""
    return Path(study.output_dir) / study.stage1_from / f"{study.stage1_from}-seed{seed}-eval" / "seed.json"


def grid_of(study: Any) -> List[List[float]]:
    """The study's early-exit grid as ``[[rho, t_min], ...]``, in the order the grids are replayed."""
    return [[float(r), int(t)] for r in study.et_grid.rho for t in study.et_grid.t_min]


def points(replayed: Sequence[Mapping[str, Any]]) -> List[List[float]]:
    """The ``[[rho, t_min], ...]`` of a record's replayed grid, comparable with :func:`grid_of`."""
    return [[p["rho"], p["t_min"]] for p in replayed]


def trained_run(study: Any, cfg: Any) -> Path:
    """Where a job's weights are: its own run directory, or with ``runs_from`` that study's job of the same seed."""
    from sofnet.train.worker import run_dir

    if not study.runs_from:
        return Path(run_dir(cfg))
    return Path(study.output_dir) / study.runs_from / (study.runs_from + cfg.name[len(study.name):])


def scored_stages(study: Any, seed: int) -> List[tuple[str, Path]]:
    """``(stage, run)`` of each stage this study evaluates for the base job: its enabled stages, and stage 1 from
    ``stage1_from``'s run when rescoring (``runs_from``), where the source's scores of it are of other videos."""
    from sofnet.train.worker import enabled_stages

    cfg = seed_config(study, seed)
    own = [(stage, trained_run(study, cfg)) for stage in enabled_stages(cfg)]
    return ([("stage1", stage1_run(study, seed))] if study.stage1_from and study.runs_from else []) + own


def arnet_config(study: Any, seed: int) -> DictConfig:
    """The AR-Net job of one seed: ``arnet_config``, ``arnet_overrides``, its name, seed and output folder."""
    return load_config(study.arnet_config, list(study.arnet_overrides) + [
        f"name={study.name}-{study.arnet_name}-seed{seed}", f"train.seed={seed}",
        f"train.output_dir={study_dir(study)}"])


def seed_eval(study: Any, seed: int) -> Path:
    """The evaluation record of this study's seed ``seed``: ``<study dir>/<name>-seed<s>-eval/seed.json``."""
    return study_dir(study) / f"{study.name}-seed{seed}-eval" / "seed.json"


def arnet_per_video(study: Any, seed: int, stage: str) -> Path:
    """Where the AR-Net job's evaluation of ``stage`` keeps its per-video outputs."""
    from sofnet.evaluation import PER_VIDEO

    return seed_eval(study, seed).parent / study.arnet_name / stage / PER_VIDEO


def et_cache_dir(study: Any, seed: int, stage: str) -> Path:
    """A seed's early-exit cache of ``stage``: this study's evaluation, or for a stage 1 taken from another study
    (``stage1_from`` without ``runs_from``) that study's."""
    shared = stage == "stage1" and study.stage1_from and not study.runs_from
    return (stage1_record(study, seed) if shared else seed_eval(study, seed)).parent / stage / "et_cache"
