"""Models: TSN, TSM, SoF-Net, SoF-Net^TSM and AR-Net, built by name from a model config.

    from sofnet.config import model_config
    from sofnet.models import build_model
    model = build_model(model_config(arch="sofnet_tsm", backbone="resnet18", num_classes=10))

Model code imports only torch and torchvision.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Union

import torch
from torch import nn

from sofnet.models.arnet import ARNet
from sofnet.models.backbone import CostTable, ResNetTrunk, TemporalShift
from sofnet.models.base import VideoModel, as_namespace, resolved_shift
from sofnet.models.output import NOT_PROCESSED, PASSED, SoFOutput, aggregate, first_exit
from sofnet.models.sofnet import Gate, SoFNet
from sofnet.models.tsn import TSN

__all__ = ["build_model", "load_backbone_state", "TSN", "SoFNet", "ARNet", "Gate", "SoFOutput", "CostTable",
           "ResNetTrunk", "TemporalShift", "VideoModel", "aggregate", "first_exit", "as_namespace",
           "resolved_shift", "PASSED", "NOT_PROCESSED"]


def build_model(cfg: Any) -> Union[VideoModel, ARNet]:
    """Build the network a model config names (``cfg.arch``: tsn | tsm | sofnet | sofnet_tsm | arnet)."""
    ns = as_namespace(cfg)
    if ns.arch == "arnet":
        return ARNet.from_config(ns)
    if ns.arch in ("tsn", "tsm"):
        return TSN(ns)
    if ns.arch in ("sofnet", "sofnet_tsm"):
        return SoFNet(ns)
    raise ValueError(f"unknown model.arch {ns.arch!r}; choose from tsn, tsm, sofnet, sofnet_tsm, arnet")


def load_backbone_state(model: nn.Module, state: Union[Mapping[str, torch.Tensor], Dict[str, Any]],
                        source: str = "<state dict>") -> None:
    """Load a stage-1 TSN/TSM state dict into a model of stage 2: everything but the new gates must match.

    Raises:
        ValueError: naming ``source``, when keys other than the gates are missing or unexpected.
    """
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in missing if not k.startswith("gates.")]
    if missing or unexpected:
        raise ValueError(f"{source}: does not match {type(model).__name__} "
                         f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
