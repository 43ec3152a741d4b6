"""The sweep YAML: which training config, which parameters, how to search them, what to optimise.

A sweep file (``jobs/configs/tune/*.yaml``)::

    name: alpha_beta
    kind: alpha_beta                       # alpha_beta (train per trial) | early_exit (replay a cache per trial)
    base_config: jobs/configs/demo.yaml    # the training config every trial starts from (relative to the cwd)
    overrides: [train.stage2.epochs=3]     # dotlist applied to it first
    search:
      algorithm: grid                      # grid | random (Tune's variant generator) | optuna | hyperopt
      points:                              # explicit points, each a mapping of dotted config keys
        - {loss.alpha: 1.0, loss.beta: null}     # null = L_pg off
      space:                               # more parameters: a sampler each (crossed with the points)
        early_exit.rho: {sampler: grid, values: [0.95, 0.99]}
        loss.alpha: {sampler: uniform, low: 0.8, high: 1.0}       # random/optuna/hyperopt only
      num_samples: 1                       # repeats of the grid, or samples of a random/Bayesian search
    scheduler: {type: asha, max_t: 10, grace_period: 1, reduction_factor: 2}   # or fifo
    metric: val/mAP
    mode: max
    max_concurrent_trials: 1
    smoke: {search: {points: [...]}}       # merged over the sweep by --smoke-test

Usage::

    sweep = load_sweep("jobs/configs/tune/alpha_beta.yaml", ["storage_path=/tmp/tune"], smoke=True)
    check_trials(sweep, base_cfg, "alpha_beta.yaml")   # before Ray: every point and both ends of every range
    space = param_space(sweep.search)                  # Tune's param_space
    cfg = trial_config(base_cfg, trial_params(config)) # inside a trial: the training config of that trial

What is checked where: :func:`load_sweep` the sweep's own keys (choices, sampler ranges, scheduler, that an optional
search package is installed); :func:`check_trials` every trial's training config through ``sofnet.config.validate``
(the one owner of the training rules), so a bad value is refused before any stage trains.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sofnet.config import ConfigError, check_name, merge_config, parse_dotlist, validate

logger = logging.getLogger(__name__)

KINDS = ("alpha_beta", "early_exit")
SCHEDULERS = ("fifo", "asha")
# Searchers that need a package of their own (not pinned in pyproject: install it to use them).
SEARCHERS = {"optuna": ("optuna", "ray.tune.search.optuna", "OptunaSearch"),
             "hyperopt": ("hyperopt", "ray.tune.search.hyperopt", "HyperOptSearch")}
ALGORITHMS = ("grid", "random", *SEARCHERS)
SAMPLERS = ("grid", "choice", "uniform", "loguniform", "quniform", "randint")
POINT_KEY = "point"  # the Tune config key that holds an explicit point (a dict of dotted keys)
ET_KEYS = ("early_exit.rho", "early_exit.t_min", "early_exit.mode")  # what a Table C replay can vary
RANGES = ("uniform", "loguniform", "quniform", "randint")
# Every combination of points and sampler values/ends is a trial config to check (~30 ms each); past this many only
# each value alone is (the config's only rule that ties two keys is model.arch vs model.shift).
MAX_COMBINATIONS = 256


@dataclass
class SearchConfig:
    algorithm: str = "grid"
    points: List[Any] = field(default_factory=list)
    space: Dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    seed: int = 0


@dataclass
class SchedulerConfig:
    type: str = "fifo"
    max_t: int = 100  # in reported results (epochs of the trained stage)
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class SweepMlflowConfig:
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "sofnet-sweeps"
    registered_model: str = ""  # register the best trial's model under this name ("" = do not)
    alias: str = "best"


@dataclass
class SweepConfig:
    name: str = "sweep"
    kind: str = "alpha_beta"
    base_config: str = ""
    overrides: List[str] = field(default_factory=list)
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    metric: str = "val/mAP"
    mode: str = "max"
    max_concurrent_trials: int = 1
    trial_cpus: float = 0.0  # CPUs of a trial's own process (its Ray Train workers reserve theirs from scaling.*)
    storage_path: str = "runs/tune"
    shared_stage1: bool = True  # alpha_beta: train stage 1 once (it does not depend on alpha/beta), trials run stage 2
    stage1_checkpoint: str = ""  # alpha_beta: start every trial's stage 2 from this (run or checkpoint dir) instead
    checkpoint: str = ""  # early_exit: the trained model (run dir, checkpoint dir or models:/ URI) to cache
    cache: str = ""  # early_exit: the cache directory (default <storage_path>/<name>/et_cache)
    mlflow: SweepMlflowConfig = field(default_factory=SweepMlflowConfig)


def _check(ok: bool, src: str, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{src}: {key} {why}")


def validate_sweep(sweep: Any, src: str = "<sweep>") -> None:
    """Check choices, samplers and that the search algorithm fits the space. Raises :class:`ConfigError`."""
    s = sweep.search
    check_name(sweep.name, "name", src)
    _check(sweep.kind in KINDS, src, "kind", f"must be one of {', '.join(KINDS)}")
    _check(bool(sweep.base_config), src, "base_config", "must name the training config")
    _check(s.algorithm in ALGORITHMS, src, "search.algorithm", f"must be one of {', '.join(ALGORITHMS)}")
    _check(sweep.scheduler.type in SCHEDULERS, src, "scheduler.type", f"must be one of {', '.join(SCHEDULERS)}")
    _check(sweep.mode in ("min", "max"), src, "mode", "must be min or max")
    _check(sweep.max_concurrent_trials >= 1 and s.num_samples >= 1, src, "max_concurrent_trials/num_samples",
           "must be >= 1")
    _check(bool(s.points) or bool(s.space), src, "search", "needs points or a space")
    for i, point in enumerate(s.points):
        _check(isinstance(point, (dict, DictConfig)) and len(point) > 0, src, f"search.points[{i}]",
               "must be a non-empty mapping of config keys")
    for key, spec in s.space.items():
        _check(isinstance(spec, (dict, DictConfig)) and spec.get("sampler") in SAMPLERS, src, f"search.space.{key}",
               f"needs sampler: one of {', '.join(SAMPLERS)}")
        if spec["sampler"] in ("grid", "choice"):
            _check(bool(spec.get("values")), src, f"search.space.{key}", "needs values")
        else:
            _check_range(spec, src, f"search.space.{key}")
        if s.algorithm == "grid":
            _check(spec["sampler"] == "grid", src, f"search.space.{key}", "must use sampler: grid with algorithm grid")
        if s.algorithm in SEARCHERS:
            _check(spec["sampler"] != "grid", src, f"search.space.{key}", f"cannot be a grid with {s.algorithm}")
    if s.algorithm in SEARCHERS:
        _check(not s.points, src, "search.points", f"cannot be used with {s.algorithm} (use a space)")
        package = SEARCHERS[s.algorithm][0]
        _check(importlib.util.find_spec(package) is not None, src, "search.algorithm",
               f"{s.algorithm} needs the {package} package, not installed here; install it or use grid/random")
    _check_scheduler(sweep.scheduler, src)
    swept = {k for p in s.points for k in p} | set(s.space)
    if sweep.kind == "early_exit":
        for key in sorted(swept - set(ET_KEYS)):  # a replay ignores any other key: its column would repeat one point
            _check(False, src, f"search: {key}", f"cannot vary in an early_exit sweep (only {', '.join(ET_KEYS)})")
    elif sweep.shared_stage1 or sweep.stage1_checkpoint:
        for key in sorted(k for k in swept if k.startswith("train.stage1.")):  # stage 1 is trained once for all
            _check(False, src, f"search: {key}", "has no effect with a shared stage 1 (set shared_stage1: false)")


def _check_range(spec: Any, src: str, key: str) -> None:
    """A range sampler's bounds: numbers, low < high (randint: integers), loguniform above 0, q > 0."""
    low, high = spec.get("low"), spec.get("high")
    _check(_number(low) and _number(high), src, key, "needs numeric low and high")
    _check(low < high, src, key, f"low ({low}) must be below high ({high})")
    if spec["sampler"] == "randint":
        _check(isinstance(low, int) and isinstance(high, int), src, key, "randint needs integer low and high")
    if spec["sampler"] == "loguniform":
        _check(low > 0, src, key, "loguniform needs low > 0")
    if spec["sampler"] == "quniform":
        _check(_number(spec.get("q", 0.05)) and spec.get("q", 0.05) > 0, src, key, "quniform needs q > 0")


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_scheduler(s: Any, src: str) -> None:
    """ASHA's own assertions, as one line naming the key (Ray asserts only when the Tuner is built)."""
    if s.type != "asha":
        return
    _check(s.max_t >= 1, src, "scheduler.max_t", "must be >= 1")
    _check(1 <= s.grace_period <= s.max_t, src, "scheduler.grace_period", "must be >= 1 and <= scheduler.max_t")
    _check(s.reduction_factor >= 2, src, "scheduler.reduction_factor", "must be >= 2")


def load_sweep(path: str | Path, dotlist: Sequence[str] = (), smoke: bool = False) -> DictConfig:
    """Defaults -> the sweep YAML -> (``smoke`` section with ``smoke``) -> ``dotlist``, validated.

    Raises:
        ConfigError: a missing file, an unknown key, a wrong type or value, in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # a YAML parser error: name the file, not a traceback
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    smoke_section = raw.pop("smoke", None)
    layers = [(raw, str(path))]
    if smoke and smoke_section is not None:
        layers.append((smoke_section, f"{path} (smoke)"))
    if dotlist:
        layers.append((parse_dotlist(dotlist), "command line"))
    sweep = OmegaConf.structured(SweepConfig)
    for layer, src in layers:  # points replace, not merge element-wise: a smoke grid is a different grid
        sweep = merge_config(sweep, layer, src)
    validate_sweep(sweep, str(path))
    return sweep


def _sampler(spec: Dict[str, Any]) -> Any:
    from ray import tune

    kind = spec["sampler"]
    if kind == "grid":
        return tune.grid_search(list(spec["values"]))
    if kind == "choice":
        return tune.choice(list(spec["values"]))
    if kind == "uniform":
        return tune.uniform(spec["low"], spec["high"])
    if kind == "loguniform":
        return tune.loguniform(spec["low"], spec["high"])
    if kind == "quniform":
        return tune.quniform(spec["low"], spec["high"], spec.get("q", 0.05))
    return tune.randint(spec["low"], spec["high"])


def param_space(search: Any) -> Dict[str, Any]:
    """Tune's ``param_space``: explicit points as one grid dimension, crossed with the space's samplers."""
    container = OmegaConf.to_container(search, resolve=True) if isinstance(search, DictConfig) else search
    space: Dict[str, Any] = {}
    if container["points"]:
        from ray import tune

        space[POINT_KEY] = tune.grid_search([dict(p) for p in container["points"]])
    for key, spec in container["space"].items():
        space[key] = _sampler(spec)
    return space


def trial_params(config: Dict[str, Any]) -> Dict[str, Any]:
    """The dotted config keys of a trial's Tune config (an explicit point unpacked)."""
    params = {k: v for k, v in config.items() if k != POINT_KEY}
    params.update(config.get(POINT_KEY) or {})
    return params


def trial_config(base: Any, params: Dict[str, Any], src: str = "trial") -> DictConfig:
    """A copy of the training config ``base`` with ``params`` (``{"loss.beta": None, ...}``) set, validated."""
    # typed again (a config that travelled through Ray as a plain dict): a wrong type is an error here
    plain = OmegaConf.to_container(base, resolve=True) if isinstance(base, DictConfig) else base
    cfg = OmegaConf.merge(_schema(), OmegaConf.create(plain))
    for key, value in params.items():
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"{src}: {key} is not a config key")
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{src}: {key}={value!r}: {str(e).splitlines()[0]}") from None
    validate(cfg, src)
    return cfg


def _values(spec: Any) -> List[Any]:
    """What a sampler can give: every value of a grid/choice, both ends of a range (randint's high is exclusive)."""
    if spec["sampler"] in ("grid", "choice"):
        return list(spec["values"])
    return [spec["low"], spec["high"] - 1 if spec["sampler"] == "randint" else spec["high"]]


def trial_values(search: Any) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """``(sweep key, params)`` for every explicit point and every value or range end of every sampler, alone."""
    container = OmegaConf.to_container(search, resolve=True) if isinstance(search, DictConfig) else search
    for i, point in enumerate(container["points"]):
        yield f"search.points[{i}]", dict(point)
    for key, spec in container["space"].items():
        for value in _values(spec):
            yield f"search.space.{key}", {key: value}


def trial_combinations(search: Any) -> Tuple[int, Iterator[Tuple[str, Dict[str, Any]]]]:
    """How many, and ``(label, params)`` of, the points crossed with every value or range end of every sampler."""
    container = OmegaConf.to_container(search, resolve=True) if isinstance(search, DictConfig) else search
    points = list(enumerate(container["points"])) or [(None, {})]
    dims = [[(key, v) for v in _values(spec)] for key, spec in container["space"].items()]
    count = len(points) * math.prod(len(d) for d in dims)

    def combos() -> Iterator[Tuple[str, Dict[str, Any]]]:
        for (i, point), *values in itertools.product(points, *dims):
            label = " + ".join(([f"search.points[{i}]"] if i is not None else [])
                               + [f"search.space.{k}={v!r}" for k, v in values])
            yield label, {**point, **dict(values)}

    return count, combos()


def check_trials(sweep: Any, base: Any, src: str = "<sweep>") -> int:
    """Build the training config of every trial the search can make (every point, every grid value, both ends of
    every range) through ``sofnet.config`` validation, before anything is trained; returns how many were checked.

    Raises:
        ConfigError: ``"<src> search.points[2]: loss.alpha must be in [0, 1]"``, the first bad one.
    """
    checked = 0
    for label, params in trial_values(sweep.search):  # each value alone first: the error names its own key
        trial_config(base, params, src=f"{src} {label}")
        checked += 1
    count, combos = trial_combinations(sweep.search)
    if count > MAX_COMBINATIONS:
        logger.warning("%s: %d combinations of points and sampler values; each value was checked alone, "
                       "not every combination", src, count)
        return checked
    for label, params in combos:
        trial_config(base, params, src=f"{src} {label}")
        checked += 1
    return checked


def _schema() -> DictConfig:
    from sofnet.schema import Config

    return OmegaConf.structured(Config)


def search_algorithm(sweep: Any) -> Optional[Any]:
    """The Tune searcher of ``search.algorithm``: None for grid/random (Tune's variant generator)."""
    algo = sweep.search.algorithm
    if algo not in SEARCHERS:
        return None
    _, module, name = SEARCHERS[algo]  # the package is installed: validate_sweep checked it
    cls = getattr(importlib.import_module(module), name)
    return cls(metric=sweep.metric, mode=sweep.mode, seed=sweep.search.seed)


def scheduler(sweep: Any) -> Optional[Any]:
    """ASHA (early stopping of weak trials at rungs of reported epochs), or None for FIFO."""
    s = sweep.scheduler
    if s.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=s.max_t, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


def sweep_dir(sweep: Any) -> Path:
    """``<storage_path>/<name>``, absolute (Tune trials run in other working directories)."""
    return (Path(sweep.storage_path) / sweep.name).resolve()
