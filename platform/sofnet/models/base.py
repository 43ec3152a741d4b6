"""What TSN, TSM and SoF-Net share: a trunk, a classifier, the model config and the cost table.

Models keep their config as a plain namespace (no OmegaConf, Ray or MLflow in model code), so a model can be
rebuilt from ``model.hparams()`` anywhere, for example by the MLflow pyfunc that serves it.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from sofnet.models.backbone import CostTable, ResNetTrunk
from sofnet.schema import ModelConfig
from sofnet.models.costs import measure_cost_table

MODEL_KEYS = ("arch", "backbone", "num_classes", "num_segments", "input_size", "pretrained", "dropout",
              "gate_hidden", "gate_init", "tau0", "tau_decay", "shift", "shift_div", "partial_bn", "et_chunk",
              "video_score")


def as_namespace(cfg: Any) -> SimpleNamespace:
    """A model config (dataclass, OmegaConf node, dict or namespace) as a plain namespace of its keys."""
    if isinstance(cfg, SimpleNamespace):
        d = vars(cfg)
    elif dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    elif hasattr(cfg, "items"):
        d = dict(cfg.items())
    else:
        d = {k: getattr(cfg, k) for k in MODEL_KEYS if hasattr(cfg, k)}
    # lists as plain lists (an OmegaConf ListConfig is not JSON: model.json and MLflow params need plain values)
    d = {k: list(v) if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)) and not hasattr(v, "items") else v
         for k, v in d.items()}
    full = dataclasses.asdict(ModelConfig())
    unknown = set(d) - set(full)
    if unknown:
        raise ValueError(f"unknown model config keys: {sorted(unknown)}")
    full.update(d)
    return SimpleNamespace(**full)


def resolved_shift(cfg: Any) -> Optional[str]:
    """The temporal shift a model config means: None (no TSM), 'bidirectional' or 'causal'."""
    if cfg.arch in ("tsn", "sofnet"):
        return None
    if cfg.shift != "auto":
        return cfg.shift
    return "causal" if cfg.arch == "sofnet_tsm" else "bidirectional"


def init_linear(layer: nn.Linear) -> nn.Linear:
    """The official initialisation of every new linear layer: N(0, 0.001) weights, zero bias."""
    nn.init.normal_(layer.weight, 0.0, 0.001)
    nn.init.zeros_(layer.bias)
    return layer


class VideoModel(nn.Module):
    """Base class: ``trunk`` (five blocks), ``dropout``, ``fc``; subclasses add gates and the forward."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = as_namespace(cfg)
        c = self.cfg
        self.shift = resolved_shift(c)
        self.trunk = ResNetTrunk(c.backbone, c.pretrained, self.shift, c.num_segments, c.shift_div, c.partial_bn)
        self.dropout = nn.Dropout(c.dropout)
        self.fc = init_linear(nn.Linear(self.trunk.feat_dim, c.num_classes))
        self.tau = c.tau0
        self._costs: Dict[Tuple[int, int], CostTable] = {}

    def hparams(self) -> Dict[str, Any]:
        """The model config as a plain dict: enough to rebuild this network with ``build_model``."""
        return dict(vars(self.cfg))

    def set_epoch(self, epoch: int) -> float:
        """Set the Gumbel temperature tau0 * exp(-decay * epoch) for this epoch; returns it."""
        self.tau = float(self.cfg.tau0 * torch.exp(torch.tensor(-self.cfg.tau_decay * epoch)))
        return self.tau

    def cost_table(self, height: int, width: int) -> CostTable:
        """Per-frame GMACs of each block/gate/classifier at this resolution (counted once, then cached)."""
        key = (height, width)
        if key not in self._costs:
            meta_cfg = SimpleNamespace(**{**vars(self.cfg), "pretrained": "none"})
            with torch.device("meta"):
                twin = type(self)(meta_cfg)
            gates = list(getattr(twin, "gates", []))
            self._costs[key] = measure_cost_table(twin.trunk, gates, twin.fc, height, width,
                                                  self.cfg.num_segments)
        return self._costs[key]

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_costs"] = {}
        return state
