"""Structured configuration: defaults, then an experiment YAML, then CLI dotlist overrides.

Every section is an OmegaConf structured dataclass, so a typo or a wrong type is an error, not a silently
ignored key. Errors surface as one :class:`ConfigError` line naming the key and the file:

    >>> from sofnet.config import load_config
    >>> cfg = load_config("jobs/configs/anet_sofnet.yaml", ["loss.alpha=0.9", "early_exit.rho=0.99"])
    >>> cfg.model.arch
    'sofnet'

``save_config(cfg, path)`` writes the resolved YAML that sits beside every run (and in MLflow).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sofnet.early_exit import EarlyExit, EarlyExitError
from sofnet.schema import (  # noqa: F401  (re-exported: the config API lives here)
    ARCHS, ARNET_EFF, ARNET_PHASES, BACKBONES, BEST_METRICS, EFF_WEIGHTS, ET_MODES, GATE_INITS, GATE_LABELS,
    GATE_MARGIN_RANGE, GATE_TARGETS, NUM_BLOCKS, PLACEMENT_STRATEGIES, SHIFTS, STAGE_NAMES, Config, DataConfig,
    EarlyExitConfig, LossConfig, MlflowConfig, ModelConfig, OptimConfig, ScalingConfig, StageConfig, TrainConfig,
    VIDEO_SCORES, gate_margin_ok,
)

class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key and the file."""


# A run's, study's or sweep's name becomes a folder under its output directory (and Ray Train's and MLflow's run
# names): one path component, so that "a/b" or "../x" cannot put a run in another run's folder or outside its own.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_name(value: str, key: str, src: str, optional: bool = False) -> None:
    """Refuse a name that is not one folder name (letters, digits, '.', '_', '-'; a letter or digit first);
    ``optional``: "" passes too (a default applies). Raises :class:`ConfigError`."""
    if not (optional and value == "") and not NAME_PATTERN.fullmatch(value):
        raise ConfigError(f"{src}: {key}={value!r} must be letters, digits, '.', '_', '-', a letter or digit first "
                          "(it names a folder of the output directory)")


def _choice(value: str, choices: Sequence[str], key: str, src: str) -> None:
    if value not in choices:
        raise ConfigError(f"{src}: {key}={value!r} is not one of {', '.join(choices)}")


def validate(cfg: Any, src: str = "<config>") -> None:
    """Check the values a type cannot: choices and ranges. Raises :class:`ConfigError`."""
    m, loss, et = cfg.model, cfg.loss, cfg.early_exit
    if "name" in cfg:  # a full config (model_config() validates a model section alone); "": <dataset>_<arch>
        check_name(cfg.name, "name", src, optional=True)
    _choice(m.arch, ARCHS, "model.arch", src)
    _choice(m.backbone, BACKBONES, "model.backbone", src)
    _choice(m.shift, SHIFTS, "model.shift", src)
    _choice(m.gate_init, GATE_INITS, "model.gate_init", src)
    _choice(et.mode, ET_MODES, "early_exit.mode", src)
    _choice(m.get("video_score", "passed_mean"), VIDEO_SCORES, "model.video_score", src)
    _choice(m.get("arnet_phase", "joint"), ARNET_PHASES, "model.arnet_phase", src)
    for name in m.get("arnet_backbones", []):
        _choice(name, BACKBONES, "model.arnet_backbones", src)
    _choice(loss.get("gate_target", "logits"), GATE_TARGETS, "loss.gate_target", src)
    _choice(loss.get("gate_label", "next"), GATE_LABELS, "loss.gate_label", src)
    _choice(loss.get("eff_weights", "marginal"), EFF_WEIGHTS, "loss.eff_weights", src)
    _choice(loss.get("arnet_eff", "official"), ARNET_EFF, "loss.arnet_eff", src)
    checks = [
        (m.arch != "arnet" or m.get("video_score", "passed_mean") == "passed_mean", "model.video_score",
         "is TSN's and SoF-Net's video score; AR-Net keeps the mean over its frames (leave it passed_mean)"),
        (m.num_classes >= 1, "model.num_classes", "must be >= 1"),
        (m.num_segments >= 1, "model.num_segments", "must be >= 1"),
        (m.input_size >= 32, "model.input_size", "must be >= 32"),
        (0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)"),
        (m.gate_hidden >= 1, "model.gate_hidden", "must be >= 1"),
        (m.tau0 > 0 and m.tau_decay >= 0, "model.tau0", "tau0 must be > 0 and tau_decay >= 0"),
        (m.shift_div >= 2, "model.shift_div", "must be >= 2"),
        (m.et_chunk >= 1, "model.et_chunk", "must be >= 1"),
        (len(m.get("arnet_backbones", [])) >= 1 and len(m.get("arnet_backbones", [])) == len(m.get("arnet_sizes", [])),
         "model.arnet_sizes", "needs one resolution per entry of model.arnet_backbones"),
        (all(s >= 32 for s in m.get("arnet_sizes", [])) and m.get("arnet_policy_size", 84) >= 32,
         "model.arnet_sizes", "resolutions (and arnet_policy_size) must be >= 32"),
        (all(s >= 1 for s in m.get("arnet_skips", [])), "model.arnet_skips", "skip lengths must be >= 1"),
        (m.get("arnet_hidden", 1) >= 1, "model.arnet_hidden", "must be >= 1"),
        (loss.get("uniform_weight", 0.0) >= 0, "loss.uniform_weight", "must be >= 0"),
        (m.arch != "arnet" or max(m.get("arnet_sizes", [0])) <= m.input_size, "model.arnet_sizes",
         f"must be <= model.input_size ({m.input_size}): each resolution is a downsampling of the input crop"),
        (m.arch != "arnet" or m.pretrained in ("none", "imagenet"), "model.pretrained",
         "must be none or imagenet for AR-Net (one path cannot hold its three ResNets and MobileNetV2)"),
        (not (m.arch == "sofnet_tsm" and m.shift == "bidirectional"), "model.shift",
         "sofnet_tsm needs the causal shift: a bidirectional shift reads frames that skipping never computes"),
        (0.0 <= loss.alpha <= 1.0, "loss.alpha", "must be in [0, 1]"),
        (loss.beta is None or 0.0 <= loss.beta <= 1.0, "loss.beta", "must be null or in [0, 1]"),
        (gate_margin_ok(loss.get("gate_margin", 0.0)), "loss.gate_margin", f"must be {GATE_MARGIN_RANGE}"),
    ]
    if "data" in cfg and "scaling" in cfg:  # a full config (model_config() validates a model section alone)
        d, s, t = cfg.data, cfg.scaling, cfg.train
        _choice(s.placement_strategy, PLACEMENT_STRATEGIES, "scaling.placement_strategy", src)
        _choice(t.best_metric, BEST_METRICS, "train.best_metric", src)
        checks += [
            (s.num_workers >= 1, "scaling.num_workers", "must be >= 1 (training workers)"),
            (s.cpus_per_worker >= 1, "scaling.cpus_per_worker", "must be >= 1"),
            (not s.use_gpu or s.gpus_per_worker > 0, "scaling.gpus_per_worker", "must be > 0 with use_gpu"),
            (s.collective_timeout_s > 0, "scaling.collective_timeout_s", "must be > 0 (seconds)"),
            (d.batch_size >= 1, "data.batch_size", "must be >= 1"),
            (d.num_workers >= 0, "data.num_workers", "must be >= 0 (dataloader processes; 0 = in the worker)"),
            (d.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0"),
            (d.resize >= m.input_size, "data.resize", f"must be >= model.input_size ({m.input_size})"),
            (all(0.0 < x <= 1.0 for x in d.scales), "data.scales", "must all be in (0, 1]"),
            (t.log_every >= 1, "train.log_every", "must be >= 1"),
            (t.val_every >= 0, "train.val_every", "must be >= 0 (0 = only each stage's last epoch)"),
            (t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1 (resume needs the last one)"),
            (t.max_failures >= -1, "train.max_failures", "must be >= -1 (-1 = retry forever)"),
            (t.decision_maps_correct >= 0 and t.decision_maps_failed >= 0, "train.decision_maps_correct/failed",
             "must be >= 0 (videos per decision-map group; 0 = none)"),
            (all(t[st].epochs >= 1 for st in STAGE_NAMES), "train.stageN.epochs", "must be >= 1"),
            (m.arch != "arnet" or not et.enabled, "early_exit.enabled",
             "AR-Net has no early exit here (its policy skips frames itself): set early_exit.enabled=false"),
        ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"{src}: {key} {why}")
    try:  # the one owner of the early-exit rules (also used by jobs/evaluate.py flags and the Table C grid)
        EarlyExit.from_config(et, num_segments=m.num_segments)
    except EarlyExitError as e:
        raise ConfigError(f"{src}: {e}") from None
    if "data" in cfg and "scaling" in cfg:
        for stage in STAGE_NAMES:
            if cfg.train[stage].optim.base_batch_size < 0:
                raise ConfigError(f"{src}: train.{stage}.optim.base_batch_size must be >= 0 (0 = no lr scaling)")
        from sofnet.train.deepspeed_config import per_worker_batch  # the one owner of the batch split

        try:
            per_worker_batch(cfg.data, cfg.scaling.num_workers)
        except ConfigError as e:
            raise ConfigError(f"{src}: {e}") from None


def _schema() -> DictConfig:
    return OmegaConf.structured(Config)


def merge_config(base: DictConfig, other: Any, src: str) -> DictConfig:
    """``OmegaConf.merge(base, other)``; an unknown key or a wrong type is one :class:`ConfigError` line naming the
    key and ``src``, where ``other`` came from (a file, "command line"). The one place that phrases these."""
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{src}: bad key {key}: {msg}") from None


def parse_dotlist(dotlist: Sequence[str]) -> DictConfig:
    """``key=value`` overrides from the command line as a config; the one parser of them (jobs, sweeps, studies).

    Raises:
        ConfigError: ``command line: ...``, one line: an item without ``=``, a value that is not valid YAML.
    """
    for item in dotlist:
        if "=" not in item:
            raise ConfigError(f"command line: override {item!r} is not key=value")
        try:  # item by item, so that the error names the one at fault
            OmegaConf.from_dotlist([item])
        except Exception as e:  # omegaconf's errors and the YAML parser's (an unclosed or unquoted nested list)
            raise ConfigError(f"command line: {item}: {str(e).splitlines()[0]}") from None
    try:
        return OmegaConf.from_dotlist(list(dotlist))
    except Exception as e:  # items that clash (a=1 a.b=2)
        raise ConfigError(f"command line: {str(e).splitlines()[0]}") from None


def load_config(yaml_path: Optional[str | Path] = None, dotlist: Sequence[str] = ()) -> DictConfig:
    """Merge defaults -> ``yaml_path`` -> ``dotlist`` (``["loss.alpha=0.9", ...]``) into a typed config.

    Raises:
        ConfigError: a missing file, an unknown key, a wrong type or an out-of-range value, in one line that
            names the key and the file it came from.
    """
    cfg = _schema()
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:  # yaml.YAMLError and friends: report the file, not a parser traceback
            raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        cfg = merge_config(cfg, loaded, str(path))
    if dotlist:
        cfg = merge_config(cfg, parse_dotlist(dotlist), "command line")
    validate(cfg, str(yaml_path or "<defaults>") + (" + command line" if dotlist else ""))
    return cfg


def model_config(**overrides: Any) -> DictConfig:
    """A validated typed model section, for code and tests that build a model directly."""
    cfg = merge_config(OmegaConf.structured(ModelConfig), overrides, "model_config()")
    validate(OmegaConf.create({"model": cfg, "loss": dataclasses.asdict(LossConfig()),
                               "early_exit": dataclasses.asdict(EarlyExitConfig())}), "model_config()")
    return cfg


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically), the file kept beside every run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(path)
    return path


def flatten(cfg: Any) -> dict[str, Any]:
    """``{"model.arch": "sofnet", ...}``: the flat params MLflow logs."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                out[key] = v

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def from_container(values: Any, src: str = "<dict>") -> DictConfig:
    """A typed, validated config from a plain dict (e.g. what crossed the Ray boundary): the schema again."""
    cfg = merge_config(_schema(), values, src)
    validate(cfg, src)
    return cfg


def load_config_or_exit(yaml_path: Optional[str | Path], dotlist: Sequence[str] = ()) -> DictConfig:
    """For entry points: :func:`load_config`, or the error as one line on stderr and exit status 2."""
    try:
        return load_config(yaml_path, dotlist)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
