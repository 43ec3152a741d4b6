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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

ARCHS = ("tsn", "tsm", "sofnet", "sofnet_tsm")
BACKBONES = ("resnet18", "resnet34", "resnet50")
SHIFTS = ("auto", "bidirectional", "causal")
ET_MODES = ("reached", "official")
NUM_BLOCKS = 5  # stem, layer1..layer4: the five places SoF-Net may stop a frame


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key and the file."""


@dataclass
class ModelConfig:
    arch: str = "sofnet"  # tsn | tsm | sofnet | sofnet_tsm
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50
    num_classes: int = 200
    num_segments: int = 16
    input_size: int = 224
    pretrained: str = "none"  # none | imagenet | path to a torchvision ResNet state dict
    dropout: float = 0.5
    gate_hidden: int = 512
    tau0: float = 5.0  # Gumbel temperature tau(epoch) = tau0 * exp(-tau_decay * epoch)
    tau_decay: float = 0.045
    shift: str = "auto"  # TSM shift: auto = bidirectional for tsm, causal for sofnet_tsm
    shift_div: int = 8  # 1/shift_div of the channels move per direction
    partial_bn: bool = True  # TSN convention: freeze every BatchNorm but the first while training
    et_chunk: int = 4  # time steps per chunk of the skipping path when early exit is on


@dataclass
class LossConfig:
    alpha: float = 0.95  # L = alpha * L_acc + (1 - alpha) * L_eff + L_pg
    beta: Optional[float] = 0.05  # L_pg = beta * L_gate + (1 - beta) * L_aux; null turns L_pg off


@dataclass
class EarlyExitConfig:
    enabled: bool = False
    rho: float = 0.999
    t_min: int = 4
    mode: str = "reached"  # reached: t_min counts frames that reached the classifier; official: time steps


@dataclass
class DataConfig:
    dataset: str = "activitynet"  # activitynet | sports1m
    train_shards: str = ""  # brace pattern or directory of WebDataset shards
    val_shards: str = ""
    batch_size: int = 24  # per worker
    num_workers: int = 4  # dataloader workers per training worker
    shuffle_buffer: int = 500
    scales: List[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    flip: bool = True
    resize: int = 256  # eval: resize short side, then centre crop input_size


@dataclass
class OptimConfig:
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: List[int] = field(default_factory=list)  # epochs at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    clip_grad: float = 20.0
    linear_lr_mult: float = 5.0  # the new linear layers learn faster (official: 5x weights, 10x biases)


@dataclass
class StageConfig:
    enabled: bool = True
    epochs: int = 15
    optim: OptimConfig = field(default_factory=OptimConfig)
    init_from: str = ""  # "", a checkpoint directory, or models:/<name>@<alias>


@dataclass
class TrainConfig:
    seed: int = 1007
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(
        default_factory=lambda: StageConfig(epochs=60, optim=OptimConfig(lr_steps=[30]))
    )
    log_every: int = 20  # steps between progress lines
    zero_stage: int = 0
    precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp32) | fp32 | bf16
    output_dir: str = "runs"
    keep_checkpoints: int = 2
    max_failures: int = 2
    val_every: int = 1
    decision_map_videos: int = 4


@dataclass
class ScalingConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    gpus_per_worker: float = 1.0


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "sofnet"
    registered_model: str = ""  # e.g. sofnet-anet; "" = do not register
    alias: str = "best"


@dataclass
class Config:
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    early_exit: EarlyExitConfig = field(default_factory=EarlyExitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def _choice(value: str, choices: Sequence[str], key: str, src: str) -> None:
    if value not in choices:
        raise ConfigError(f"{src}: {key}={value!r} is not one of {', '.join(choices)}")


def validate(cfg: Any, src: str = "<config>") -> None:
    """Check the values a type cannot: choices and ranges. Raises :class:`ConfigError`."""
    m, loss, et = cfg.model, cfg.loss, cfg.early_exit
    _choice(m.arch, ARCHS, "model.arch", src)
    _choice(m.backbone, BACKBONES, "model.backbone", src)
    _choice(m.shift, SHIFTS, "model.shift", src)
    _choice(et.mode, ET_MODES, "early_exit.mode", src)
    checks = [
        (m.num_classes >= 1, "model.num_classes", "must be >= 1"),
        (m.num_segments >= 1, "model.num_segments", "must be >= 1"),
        (m.input_size >= 32 and m.input_size % 32 == 0, "model.input_size", "must be a multiple of 32, >= 32"),
        (0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)"),
        (m.gate_hidden >= 1, "model.gate_hidden", "must be >= 1"),
        (m.tau0 > 0 and m.tau_decay >= 0, "model.tau0", "tau0 must be > 0 and tau_decay >= 0"),
        (m.shift_div >= 2, "model.shift_div", "must be >= 2"),
        (m.et_chunk >= 1, "model.et_chunk", "must be >= 1"),
        (not (m.arch == "sofnet_tsm" and m.shift == "bidirectional"), "model.shift",
         "sofnet_tsm needs the causal shift: a bidirectional shift reads frames that skipping never computes"),
        (0.0 <= loss.alpha <= 1.0, "loss.alpha", "must be in [0, 1]"),
        (loss.beta is None or 0.0 <= loss.beta <= 1.0, "loss.beta", "must be null or in [0, 1]"),
        (0.0 < et.rho <= 1.0, "early_exit.rho", "must be in (0, 1]"),
        (et.t_min >= 1, "early_exit.t_min", "must be >= 1"),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"{src}: {key} {why}")


def _schema() -> DictConfig:
    return OmegaConf.structured(Config)


def _merge(base: DictConfig, other: Any, src: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{src}: bad key {key}: {msg}") from None


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
        cfg = _merge(cfg, loaded, str(path))
    if dotlist:
        for item in dotlist:
            if "=" not in item:
                raise ConfigError(f"command line: override {item!r} is not key=value")
        try:
            cli = OmegaConf.from_dotlist(list(dotlist))
        except OmegaConfBaseException as e:
            raise ConfigError(f"command line: {str(e).splitlines()[0]}") from None
        cfg = _merge(cfg, cli, "command line")
    validate(cfg, str(yaml_path or "<defaults>") + (" + command line" if dotlist else ""))
    return cfg


def model_config(**overrides: Any) -> DictConfig:
    """A validated typed model section, for code and tests that build a model directly."""
    cfg = _merge(OmegaConf.structured(ModelConfig), overrides, "model_config()")
    validate(OmegaConf.create({"model": cfg, "loss": dataclasses.asdict(LossConfig()),
                               "early_exit": dataclasses.asdict(EarlyExitConfig())}), "model_config()")
    return cfg


def resolved_shift(cfg: Any) -> Optional[str]:
    """The temporal shift a model config means: None (no TSM), 'bidirectional' or 'causal'."""
    if cfg.arch in ("tsn", "sofnet"):
        return None
    if cfg.shift != "auto":
        return cfg.shift
    return "causal" if cfg.arch == "sofnet_tsm" else "bidirectional"


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
