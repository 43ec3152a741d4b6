"""ResNet trunks cut into SoF-Net's five blocks, with an optional temporal shift (TSM).

    trunk = ResNetTrunk("resnet50", pretrained="none", shift="causal", num_segments=16)
    feats = x.flatten(0, 1)                      # [B*T, 3, H, W], frames of a video consecutive
    for block in trunk.blocks:                   # stem, layer1, layer2, layer3, layer4
        feats = block(feats)

The trunk keeps torchvision's parameter names (``stem.0`` is ``conv1``), so a stage-1 TSN/TSM checkpoint
loads into the SoF-Net of stage 2 unchanged and ImageNet weights load before the network is cut.

The temporal shift sits in the residual branch before the first conv of every residual block. It has two
ways to find a frame's neighbours:

* reshape (``ctx is None``): the batch is ``[N*T]`` with the T frames of a video consecutive; the TSM
  baseline, bidirectional or causal, zero padded at the ends.
* gather (``ctx`` set by SoF-Net): the batch is any packed set of frames, and ``ctx.prev_idx`` names, for each
  row, the row holding the previous frame of the same video at this point of the network, or a zero row
  when that frame never reached this block. This is how the skipping path shifts exactly what the dense
  path shifts, and it costs one gather of 1/``div`` of the channels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

CHANNELS = {
    "resnet18": [64, 64, 128, 256, 512],
    "resnet34": [64, 64, 128, 256, 512],
    "resnet50": [64, 256, 512, 1024, 2048],
}


@dataclass
class ShiftContext:
    """Where each packed row's previous frame lives, for the gather-mode temporal shift.

    Attributes:
        prev_idx: [M] long; a row of ``cat([x, carry, zero_row])``: ``< M`` a row of this batch,
            ``M + b`` the carried feature of video b from the previous time chunk, ``M + n_carry`` zeros.
        prev_weight: optional [M] float multiplying the shifted-in channels; the dense training path passes
            the neighbour's straight-through "reached this block" mask so the decision gets a gradient.
        carry: per shift module, the [B, fold, H, W] features of each video's last frame of the previous
            chunk (zeros where it did not reach); None outside the time-chunked schedule.
        last_idx: [B] long, row of each video's last frame in this chunk (-1: absent); where set, the
            modules store those rows in ``carry`` for the next chunk.
    """

    prev_idx: torch.Tensor
    prev_weight: Optional[torch.Tensor] = None
    carry: Optional[Dict[nn.Module, torch.Tensor]] = None
    last_idx: Optional[torch.Tensor] = None
    num_videos: int = 0


class TemporalShift(nn.Module):
    """Shift ``1/div`` of the channels along time, then apply the wrapped conv.

    Bidirectional (TSM paper): channels [0, fold) come from the next frame, [fold, 2*fold) from the
    previous one. Causal (online TSM): channels [0, fold) come from the previous frame only, so frame t
    never reads a later frame; that is what lets SoF-Net^TSM skip frames and exit early exactly.
    """

    def __init__(self, net: nn.Module, num_segments: int, div: int = 8, mode: str = "bidirectional") -> None:
        super().__init__()
        if mode not in ("bidirectional", "causal"):
            raise ValueError(f"unknown shift mode {mode!r}")
        self.net = net
        self.num_segments = num_segments
        self.div = div
        self.mode = mode
        self.ctx: Optional[ShiftContext] = None

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, div={self.div}, mode={self.mode}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._shift_gather(x) if self.ctx is not None else self._shift_reshape(x)
        return self.net(x)

    def _shift_reshape(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        t = self.num_segments
        if nt % t:
            raise ValueError(f"TemporalShift: batch of {nt} frames is not a multiple of num_segments={t}")
        fold = c // self.div
        v = x.view(nt // t, t, c, h, w)
        zero = v.new_zeros(nt // t, 1, fold, h, w)
        from_prev = torch.cat([zero, v[:, :-1, :fold]], dim=1)
        if self.mode == "causal":
            out = torch.cat([from_prev, v[:, :, fold:]], dim=2)
        else:
            from_next = torch.cat([v[:, 1:, :fold], zero], dim=1)
            from_prev = torch.cat([zero, v[:, :-1, fold:2 * fold]], dim=1)
            out = torch.cat([from_next, from_prev, v[:, :, 2 * fold:]], dim=2)
        return out.view(nt, c, h, w)

    def _shift_gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode != "causal":
            raise RuntimeError("gather-mode shift is causal only: a bidirectional shift needs future frames")
        ctx = self.ctx
        assert ctx is not None
        m, c, h, w = x.shape
        fold = c // self.div
        head = x[:, :fold]
        carry = ctx.carry.get(self) if ctx.carry is not None else None
        if carry is None:
            carry = x.new_zeros(ctx.num_videos, fold, h, w)
        src = torch.cat([head, carry, x.new_zeros(1, fold, h, w)], dim=0)
        prev = src[ctx.prev_idx]
        if ctx.prev_weight is not None:
            prev = prev * ctx.prev_weight.view(-1, 1, 1, 1).to(prev.dtype)
        if ctx.carry is not None and ctx.last_idx is not None:
            # Remember each video's last frame here for the next time chunk; zeros where it is absent.
            keep = torch.cat([head, x.new_zeros(1, fold, h, w)], dim=0)
            ctx.carry[self] = keep[torch.where(ctx.last_idx < 0, m, ctx.last_idx)]
        return torch.cat([prev, x[:, fold:]], dim=1)


def load_pretrained(net: nn.Module, pretrained: str, name: str) -> None:
    """ImageNet (torchvision's weights) or a state-dict file into a torchvision ResNet, its ``fc`` left alone."""
    if pretrained == "none":
        return
    if pretrained == "imagenet":
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as e:  # offline machines: say what to do instead of a urllib traceback
            raise RuntimeError(
                f"could not download ImageNet weights for {name} ({e}); pass model.pretrained=<path to a "
                f"torchvision {name} state dict> instead") from None
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: pretrained weights file not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"{pretrained}: not a torchvision {name} state dict "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    log.info("loaded %s weights for %s", pretrained, name)


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier, as five blocks: stem, layer1..layer4."""

    def __init__(self, name: str = "resnet50", pretrained: str = "none", shift: Optional[str] = None,
                 num_segments: int = 16, shift_div: int = 8, partial_bn: bool = False) -> None:
        super().__init__()
        if name not in CHANNELS:
            raise ValueError(f"unknown backbone {name!r}; choose from {sorted(CHANNELS)}")
        net = getattr(torchvision.models, name)(weights=None)
        load_pretrained(net, pretrained, name)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels: List[int] = list(CHANNELS[name])
        self.feat_dim = self.channels[-1]
        self.shift_modules: List[TemporalShift] = []
        if shift is not None:
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
                for block in layer:
                    block.conv1 = TemporalShift(block.conv1, num_segments, shift_div, shift)
                    self.shift_modules.append(block.conv1)
        self.partial_bn = partial_bn
        if partial_bn:
            # TSN's partial BN: with 16 frames of one video per sample the batch statistics are poor, so
            # all but the first BN keep ImageNet statistics and affine parameters while training. Off by default:
            # the published SoF-Net commands pass --npb (every BN trains).
            for bn in self._bns()[1:]:
                bn.weight.requires_grad_(False)
                bn.bias.requires_grad_(False)

    @property
    def blocks(self) -> List[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def _bns(self) -> List[nn.BatchNorm2d]:
        return [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]

    def train(self, mode: bool = True) -> "ResNetTrunk":
        super().train(mode)
        if mode and self.partial_bn:
            for bn in self._bns()[1:]:
                bn.eval()
        return self

    def set_shift_context(self, ctx: Optional[ShiftContext]) -> None:
        for m in self.shift_modules:
            m.ctx = ctx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> pooled features [N, feat_dim]."""
        for block in self.blocks:
            x = block(x)
        return x.mean(dim=(2, 3))


@dataclass
class CostTable:
    """Multiply-accumulates (the field's "GFLOPs") of one frame through each part, in GMACs."""

    blocks: List[float]
    gates: List[float] = field(default_factory=list)
    fc: float = 0.0

    def dense(self) -> float:
        """The backbone's dense cost per frame (every block + classifier, no gates)."""
        return sum(self.blocks) + self.fc

    def by_decision(self) -> List[float]:
        """Cost of a frame per decision, indexed by decision + 1: [-1 not processed, 0..4 stopped, 5 passed]."""
        out, acc = [0.0], 0.0
        for k, b in enumerate(self.blocks):
            acc += b + (self.gates[k] if self.gates else 0.0)
            out.append(acc)
        out.append(acc + self.fc)  # decision 5: passed the last gate and ran the classifier
        return out
