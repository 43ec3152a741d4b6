"""Small helpers shared by the model tests: tiny real networks with gates that really stop frames."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from sofnet.config import model_config
from sofnet.gate_control import calibrate_gates
from sofnet.models import build_model


def tiny_model(arch: str = "sofnet", *, classes: int = 6, segments: int = 8, size: int = 64,
               backbone: str = "resnet18", dtype: torch.dtype = torch.float64, init_seed: int = 0,
               **kw: Any) -> torch.nn.Module:
    torch.manual_seed(init_seed)  # weight init draws from the global RNG: make every test's network fixed
    cfg = model_config(arch=arch, backbone=backbone, num_classes=classes, num_segments=segments, input_size=size,
                       **kw)
    return build_model(cfg).to(dtype).eval()


def clips(batch: int, segments: int, size: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 1, 3, size, size, generator=g)
    # Frames of one video are related (a shared base) but differ, as in real video.
    x = base + 0.8 * torch.randn(batch, segments, 3, size, size, generator=g)
    return x.to(dtype)


def gated(arch: str, x: torch.Tensor, survival: Sequence[float] = (0.85, 0.7, 0.55, 0.4, 0.3), seed: int = 0,
          fc_scale: float = 2.0, **kw: Any) -> torch.nn.Module:
    """A tiny SoF-Net whose gates stop frames at every block on ``x`` and whose classifier is confident."""
    model = tiny_model(arch, segments=x.shape[1], size=x.shape[-1], dtype=x.dtype, **kw)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=g).to(x.dtype) * fc_scale)
        for gate in model.gates:
            gate.aux.weight.copy_(torch.randn(gate.aux.weight.shape, generator=g).to(x.dtype) * 0.2)
    calibrate_gates(model, x, survival, seed=seed)
    return model
