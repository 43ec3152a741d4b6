"""What a study's run was trained from (its recipe), kept beside it so that a reused run is the run asked for.

Usage (what :mod:`sofnet.study` does before anything trains)::

    from sofnet.study_recipe import check_recipe, check_source, scoring_of
    check_recipe(study, cfg)        # first sight: <study dir>/<run>.recipe.yaml kept; later: the same or refused
    check_source(study, cfg, run)   # runs_from: the other study's finished run has this recipe but for scoring keys
    scoring_of(cfg)                 # the early-exit settings the rows are scored with (a change re-scores, not retrains)

A recipe is the resolved config but where a run logs (``_NOT_RECIPE``), plus the digests of the shards it read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from omegaconf import OmegaConf

from sofnet.config import Config, ConfigError


def study_dir(study: Any) -> Path:
    """``<output_dir>/<name>``: the study's runs, evaluations, recipes and table."""
    return Path(study.output_dir) / study.name


# The recipe's keys for what the shards hold (their paths are config keys; the same path can hold other data).
DIGESTS = ("shards_digest.training", "shards_digest.validation")
_SHARD_KEYS = ("data.train_shards", "data.val_shards")  # where the shards of each digest are
# What the source study's stage-1 rows depend on besides the weights: they must be this study's too.
# With ``runs_from`` these are the only keys that may differ from the trained runs' recipe: scoring, not training.
SCORED_BY = ("data.val_shards", "data.val_subset", DIGESTS[1], "early_exit.enabled", "early_exit.rho",
             "early_exit.t_min", "early_exit.mode")
# Of those, what no trained weights depend on: early exit acts at evaluation only (training logs val/et/ metrics but picks
# a best epoch by one without it, schema.BEST_METRICS), so a study's finished runs under another early exit are scored
# again, not retrained. Not the validation shards: with train.val_every a stage's best epoch is picked on them.
EARLY_EXIT = tuple(k for k in SCORED_BY if k.startswith("early_exit."))


# Settings that do not change what a run computes (where it logs, how often, how often it may fail; stage 2 on or
# off leaves stage 1 as it was: a study that adds sofnet to its methods trains stage 2 on the finished stage 1).
_NOT_RECIPE = ("mlflow.", "train.output_dir", "train.log_every", "train.max_failures", "name", "train.stage2.enabled")


def _flat(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def shard_digests(cfg: Any) -> Dict[str, str]:
    """The manifest's digest of the training and the validation subset the config reads: equal digests mean
    byte-identical shards (``data_prep.manifest``). "" where the shards are not a directory with a manifest (a
    brace pattern, a list): then only their paths can be compared."""
    from sofnet.shards import subset_digest

    return {key: subset_digest(shards, subset) for key, shards, subset in zip(
        DIGESTS, (cfg.data.train_shards, cfg.data.val_shards), (cfg.data.train_subset, cfg.data.val_subset))}


def recipe_of(cfg: Any) -> Dict[str, Any]:
    """What a run computes from: its resolved settings but where it logs (``_NOT_RECIPE``), and the digests of the
    shards it reads."""
    flat = _flat(OmegaConf.to_container(cfg, resolve=True))
    return {**{k: v for k, v in flat.items() if not k.startswith(_NOT_RECIPE)}, **shard_digests(cfg)}


def scoring_of(cfg: Any) -> Dict[str, Any]:
    """The early-exit settings (:data:`EARLY_EXIT`) a run's rows are scored with, as its recipe names them."""
    return {key: cfg.early_exit[key.split(".", 1)[1]] for key in EARLY_EXIT}


def scored_with(record: Optional[Mapping[str, Any]], folder: Path, stages: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The early-exit settings (:data:`EARLY_EXIT` keys) the record's rows were scored with: kept in the record, or
    for a record from before it kept them, its evaluations' ``metrics.json`` (``early_exit``) in ``folder``; None
    where neither says (scored again)."""
    if record and "scored_with" in record:
        return dict(record["scored_with"])
    for stage in stages:
        metrics = folder / stage / "metrics.json"
        if metrics.is_file():
            et = json.loads(metrics.read_text()).get("early_exit") or {}
            return {key: et.get(key.split(".", 1)[1]) for key in EARLY_EXIT}
    return None


def et_text(scoring: Mapping[str, Any]) -> str:
    """``rho=0.5 t_min=2`` (``off`` when disabled; ``mode`` when not the default) of :func:`scoring_of`'s dict."""
    if not scoring:
        return "unknown"
    if not scoring.get("early_exit.enabled"):
        return "off"
    mode = scoring.get("early_exit.mode")
    return (f"rho={scoring.get('early_exit.rho')} t_min={scoring.get('early_exit.t_min')}"
            + (f" mode={mode}" if mode != "reached" else ""))


def check_recipe(study: Any, cfg: Any) -> None:
    """A study's runs are reused by name (resume), so a run must have been trained with the settings and on the data
    the study now asks for: the first time a job is seen its recipe (:func:`recipe_of`) is kept as
    ``<study dir>/<run name>.recipe.yaml``; a later call with other settings (a changed ``overrides`` or base file,
    under the same study name) or with other shards at the same path (regenerated data) is refused. Early exit
    (:data:`EARLY_EXIT`) may differ from the kept recipe: the weights do not depend on it, the study scores them again.

    Raises:
        ConfigError: one line naming the run and the first differing keys, or the shards whose content changed.
    """
    path = study_dir(study) / f"{cfg.name}.recipe.yaml"
    now = recipe_of(cfg)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(now)))
        return
    before = dict(OmegaConf.to_container(OmegaConf.load(path)))
    # a rescoring study's runs are another study's: it only scored them
    redo, done = ("score", "scored") if study.runs_from else ("train", "trained")
    # make demo / make study cannot rename the study: removing its folder (the command's other way out) trains anew
    again = ("its results would be reused as if they were {}: give the study another name"
             + (" (or AR-Net another arnet_name)" if cfg.model.arch == "arnet" else "")
             + f", or remove {study_dir(study)} to {redo} it anew")
    for key, where in zip(DIGESTS, _SHARD_KEYS):
        subset, shards = key.split(".")[1], now[where]
        if before.get(where, shards) != shards:
            continue  # other shards at another path: a changed setting, named below
        if key not in before:  # kept before the digests were: which data the run read is unknown
            raise ConfigError(f"{path}: {cfg.name} was {done} before the study recorded its shards' digests, so "
                              f"whether it read the {subset} shards {shards} holds now ({now[key][:12] or 'no digest'})"
                              f" cannot be checked; " + again.format("this data's"))
        if before[key] != now[key]:
            raise ConfigError(f"{path}: {cfg.name} was {done} on other {subset} shards than {shards} holds now "
                              f"(digest {before[key][:12] or 'none'} -> {now[key][:12] or 'none'}: regenerated or "
                              "replaced data); " + again.format("this data's"))
    diff = _differ({k: v for k, v in before.items() if k not in EARLY_EXIT},
                   {k: v for k, v in now.items() if k not in EARLY_EXIT})
    if diff:
        raise ConfigError(f"{path}: {cfg.name} was {done} with other settings ({_first(diff)}); "
                          + again.format("this recipe's"))


def check_source(study: Any, cfg: Any, run: Path) -> None:
    """``runs_from``: ``run``, the other study's job of the same seed, finished training from the recipe ``cfg`` asks
    for but for the keys of scoring (:data:`SCORED_BY`: validation shards, early exit), so the rows scored here are
    of the weights that study trained, on other videos or with another early exit.

    Raises:
        ConfigError: one line: the run is missing or unfinished, or was trained otherwise (the first differing keys).
    """
    from sofnet.tune.alpha_beta import finished_training

    path = run.parent / f"{run.name}.recipe.yaml"
    where = f"{study_dir(study)}: runs_from={study.runs_from}"
    if not path.is_file() or finished_training(run, cfg) is None:
        raise ConfigError(f"{where}: {run} has not finished training; run study {study.runs_from} for it first "
                          "(a study with runs_from trains nothing)")
    before = dict(OmegaConf.to_container(OmegaConf.load(path)))
    diff = _differ({k: v for k, v in before.items() if k not in SCORED_BY},
                   {k: v for k, v in recipe_of(cfg).items() if k not in SCORED_BY})
    if diff:
        raise ConfigError(f"{path}: {where}: {run.name} was trained with other settings ({_first(diff)}); only "
                          f"scoring ({', '.join(k for k in SCORED_BY if k != DIGESTS[1])}) may differ from the runs "
                          "a study rescores")


def _differ(before: Dict[str, Any], now: Dict[str, Any]) -> list[str]:
    """``key: before -> now`` for every key whose value differs."""
    # A setting added since the run was trained is absent from its recipe file; new settings default to what the
    # code did before them, so an absent key counts as its default (a study from before the key stays reusable).
    defaults = _flat(OmegaConf.to_container(OmegaConf.structured(Config), resolve=True))
    return [f"{k}: {before.get(k, defaults.get(k))} -> {now.get(k)}" for k in sorted(set(before) | set(now))
            if before.get(k, defaults.get(k)) != now.get(k)]


def _first(diff: list[str]) -> str:
    return "; ".join(diff[:3]) + (f" (and {len(diff) - 3} more)" if len(diff) > 3 else "")
